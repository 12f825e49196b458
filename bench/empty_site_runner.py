"""(bench) A fedclinic site's topology serving the EMPTY ClientApp: the floor of fedclinic's deployment.

    python bench/empty_site_runner.py NODE_TOML

Starts what `fedclinic site start` starts, `flower-supernode --isolation process` (launcher/site/
supervisor.supernode_command: TLS, the node key, a fresh runtime secret) and the gated task
runner's loop (client/node/flower_runner.serve: the same polling, the same allow-list check), but
the runner answers with bench/empty_flower_app.py's ClientApp instead of fedclinic's. So a round
of the empty app costs what Flower's polling and the runner cost, and nothing of fedclinic's.
The empty app's bundle must be on the node's allow-list (`fedclinic site approve`). Stops the
SuperNode (its own process group) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(node_toml: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from bench.empty_flower_app import client_app
    from client.node.flower_runner import serve
    from client.node.settings import load_node_settings, render_flat_toml
    from launcher.site.supervisor import FLOWER_ENV, supernode_command
    from storage.atomic import write_atomic
    settings = load_node_settings(node_toml)
    for folder in (settings.state, settings.logs, settings.flwr_home):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret, node_config = settings.flwr_home / "runtime-secret", settings.flwr_home / "node-config.toml"
    write_atomic(secret, secrets.token_hex(32).encode(), mode=0o600)
    write_atomic(node_config, render_flat_toml(settings.node_config()).encode(), mode=0o600)
    signal.signal(signal.SIGTERM, _stop)
    with (settings.logs / "supernode.log").open("ab") as log:
        supernode = subprocess.Popen(supernode_command(settings, secret, node_config), stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, **FLOWER_ENV, "FLWR_HOME": str(settings.flwr_home)})
    try:
        print("empty site runner ready", flush=True)
        serve(settings, secret.read_bytes(), client_app)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        if supernode.poll() is None:
            os.killpg(supernode.pid, signal.SIGTERM)
        try:
            supernode.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(supernode.pid, signal.SIGKILL)
            supernode.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
