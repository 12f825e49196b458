"""Registering hospital sites with the SuperLink through Flower's own CLI (`flwr supernode ...`).

Every call goes to the loopback SuperLink of one coordinator folder (connection CONNECTION in
DIR/home/config.toml, trusting DIR/certs/ca.crt), and every registration and unregistration is
recorded in DIR/audit.jsonl. Flower 1.41 keeps no node names it reports back (`flwr supernode
list` shows node ids only), so the audit log's registrations are where names come from.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from launcher.coordinator.folder import CONNECTION, CoordinatorFolder
from launcher.child_processes import tool
from server.audit_events import registered_names as registered_in
from storage.audit_log import append_event

SITE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # as `fedclinic site init` allows
FLWR_TIMEOUT_S = 120


class SiteCommandError(RuntimeError):
    """A site registration command failed (the message says why, and what to check)."""


@dataclass(frozen=True)
class SiteKey:
    """A site's public key: the OpenSSH line, its fingerprint (as `ssh-keygen -lf` prints it) and
    `public_key_sha256`, the hex SHA-256 of the line's base64 field, as the site's own audit log
    records it (`site-initialized`)."""

    line: str
    fingerprint: str
    public_key_sha256: str


@dataclass(frozen=True)
class SiteRow:
    """One line of `coordinator list-sites`."""

    name: str
    node_id: int
    status: str  # Flower's: registered (never connected), online, offline, unregistered


def check_site_name(name: str) -> str:
    """Raises ValueError unless `name` is 1-63 letters, digits and '-' (not at either end), as site init allows."""
    if not SITE_NAME.fullmatch(name):
        raise ValueError(f"site name {name!r}: use 1-63 letters, digits and '-' (not at the start or end), "
                         "the name the site chose at `fedclinic site init`")
    return name


def read_site_key(path: Path) -> SiteKey:
    """The OpenSSH ECDSA public key in `path` (one line, e.g. from `fedclinic site init`).

    Raises ValueError naming the file if it is missing, not one line, or not an ecdsa-sha2-nistp* key."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the public key ({exc})") from exc
    if "\n" in text or "PRIVATE KEY" in text:
        raise ValueError(f"{path}: expected one OpenSSH public key line (the site's KEY.pub, never the private key)")
    try:
        key = load_ssh_public_key(text.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an OpenSSH public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not text.startswith("ecdsa-sha2-nistp"):
        raise ValueError(f"{path}: Flower needs an ECDSA key (ecdsa-sha2-nistp384, as `fedclinic site init` makes); "
                         f"got {text.split(' ', 1)[0]!r}")
    field = text.split()[1]
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(field)).digest()).decode().rstrip("=")
    return SiteKey(text, f"SHA256:{digest}", hashlib.sha256(field.encode()).hexdigest())


def flwr_json(folder: CoordinatorFolder, *args: str) -> dict[str, object]:
    """Run `flwr ARGS CONNECTION --format json` against the folder's SuperLink; its JSON answer.

    Raises SiteCommandError with Flower's message when the call fails."""
    folder.write_flwr_connection(folder.settings())
    command = [tool("flwr"), *args, CONNECTION, "--format", "json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=folder.flower_env(), cwd=folder.root,
                              timeout=FLWR_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise SiteCommandError(f"`flwr {' '.join(args[:2])}` did not answer within {FLWR_TIMEOUT_S} s") from exc
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not answer.get("success"):
        message = answer.get("error-message") if isinstance(answer, dict) else (done.stderr or done.stdout).strip()
        raise SiteCommandError(f"`flwr {' '.join(args[:2])}` failed: {message}\n(is the coordinator running? "
                               f"fedclinic coordinator start {folder.root})")
    return answer


def registered_names(folder: CoordinatorFolder) -> dict[int, str]:
    """{node id: site name} of the registrations recorded in the audit log, minus unregistrations."""
    return registered_in(folder.audit_log)


def register_site(folder: CoordinatorFolder, name: str, key_file: Path) -> int:
    """Register a site's public key under `name`; its Flower node id. Raises ValueError for a bad
    name, a bad key or a name registered already; SiteCommandError if Flower refuses."""
    check_site_name(name)
    key = read_site_key(key_file)
    if name in registered_names(folder).values():
        raise ValueError(f"site {name!r} is registered already (fedclinic coordinator list-sites); "
                         f"unregister it first to register a new key")
    answer = flwr_json(folder, "supernode", "register", str(key_file.resolve()), "--name", name)
    node_id = int(str(answer["node-id"]))
    append_event(folder.audit_log, "site-registered", {"name": name, "node_id": node_id,
                                                       "key_fingerprint": key.fingerprint,
                                                       "public_key_sha256": key.public_key_sha256})
    return node_id


def unregister_site(folder: CoordinatorFolder, site: str) -> int:
    """Unregister a site by name (as registered with fedclinic) or node id; the node id.

    Raises ValueError for an unknown name, SiteCommandError if Flower refuses."""
    by_name = {n: i for i, n in registered_names(folder).items()}
    if site in by_name:
        node_id = by_name[site]
    elif site.isdigit():
        node_id = int(site)
    else:
        raise ValueError(f"site {site!r}: no such registered site (fedclinic coordinator list-sites)")
    flwr_json(folder, "supernode", "unregister", str(node_id))
    name = next((n for n, i in by_name.items() if i == node_id), "")
    append_event(folder.audit_log, "site-unregistered", {"name": name, "node_id": node_id})
    return node_id


def list_sites(folder: CoordinatorFolder) -> list[SiteRow]:
    """Every node the SuperLink knows, with its site name and Flower's status."""
    names = registered_names(folder)
    answer = flwr_json(folder, "supernode", "list")
    nodes = answer.get("nodes")
    rows = [SiteRow(names.get(int(str(n["node-id"])), "(not registered with fedclinic)"), int(str(n["node-id"])),
                    str(n.get("status", "?"))) for n in nodes if isinstance(n, dict)] if isinstance(nodes, list) else []
    return sorted(rows, key=lambda r: (r.name, r.node_id))
