"""What the SuperNode's log says about why a site could not join (for `fedclinic site start`).

Patterns are Flower 1.41's own messages (verified against a real SuperLink, tests/test_site_gate.py):
an unregistered key ends with `[code: 2004] Failed to activate SuperNode` (so does a registered key
whose node the coordinator still holds online: flwr LinkState.activate_node); a coordinator whose
certificate the site's ca.crt does not sign gives `CERTIFICATE_VERIFY_FAILED`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from client.node.settings import NodeSettings

ONLINE = "SuperNode ID:"
RETRYING = "Connection attempt failed, retrying"
# the runner's per-task lines (client/node/flower_runner.py `record`), echoed on the site's console
CONSOLE_MARKS = ("runner: REFUSED run ", "runner: task done: ")


@dataclass(frozen=True)
class Diagnosis:
    """`reason` is a short class for the audit log; `message` tells site IT what to do."""

    reason: str
    message: str


def node_id(log_text: str) -> str:
    """The node id in Flower's `SuperNode ID: N` line ('?' if absent)."""
    found = re.search(r"SuperNode ID: (\d+)", log_text)
    return found.group(1) if found else "?"


def diagnose_supernode(log_text: str, settings: NodeSettings) -> Diagnosis | None:
    """The reason the SuperNode could not connect, from its log; None if the log does not say."""
    pub = settings.key.with_name(f"{settings.key.name}.pub")
    if "Failed to activate SuperNode" in log_text or "[code: 2004]" in log_text:
        return Diagnosis("activation-refused",
                         f"this site's key is not registered at the coordinator: send {settings.name} and the "
                         f"public key in {pub} to the central team (they run `fedclinic coordinator register-site`), "
                         "then start the site again. (The coordinator says the same (Flower code 2004) when a node "
                         "with this key is still online there: another `site start` with this key, or one that "
                         "did not stop cleanly less than a minute ago.)")
    if "CERTIFICATE_VERIFY_FAILED" in log_text:
        return Diagnosis("tls-verify-failed",
                         f"the coordinator's certificate is not signed by {settings.ca}, or does not name "
                         f"{settings.coordinator.rpartition(':')[0]}: ask the central team for their current ca.crt "
                         "and check [coordinator] address")
    if "address already in use" in log_text.lower() or "Errno 98" in log_text:
        return Diagnosis("runtime-port-in-use",
                         f"port {settings.runtime_port} on 127.0.0.1 is taken by another program: set another "
                         f"[node] runtime-port in {settings.file}")
    return None
