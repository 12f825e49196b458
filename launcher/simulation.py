"""Run the fedclinic Flower app in Flower's simulation engine, one virtual site per folder.

This uses the same entry point as `flwr run` in local simulation (the app directory, its
pyproject config fused with our overrides), without a detached SuperLink. flwr is imported
here, inside functions, and only after telemetry and runtime dependency installs are off.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent.parent


def prepare_environment() -> None:
    """No telemetry from a hospital tool, no runtime `uv sync`, Ray on loopback only.

    Ray binds its GCS, raylet and worker servers to every interface unless it believes the
    machine is not part of a cluster; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes it use
    127.0.0.1 for all of them (checked by tests/test_end_to_end.py).
    """
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def concurrent_sites(num_sites: int, cpus_per_site: int, cores: int) -> int:
    """Virtual sites that run at once: all of them, up to twice what the cores hold.

    Flower's Ray backend runs one site per actor and sizes its pool as Ray's CPUs divided by
    `cpus_per_site`. With only the machine's cores, 3 demo sites on 2 cores train in two waves
    (two sites, then one alone on one core, the other idle): a round takes twice a site's work.
    Oversubscribing up to 2x lets every site of a small federation train at once, timeshared, so
    a round takes about 1.5x a site's work there, and larger federations still run in waves of
    at most 2x the cores' worth of actors (each holds torch and its sites' data in memory).
    """
    fitting = max(1, cores // cpus_per_site)
    return max(1, min(num_sites, 2 * fitting))


def backend_config(num_sites: int, cpus_per_site: int, gpus_per_site: float) -> dict[str, dict[str, object]]:
    """Ray on loopback only, no dashboard, sized to the machine (concurrent_sites)."""
    cores = os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": cpus_per_site, "num_gpus": gpus_per_site},
        "init_args": {"include_dashboard": False, "_node_ip_address": "127.0.0.1",
                      "num_cpus": max(cores, cpus_per_site,
                                      cpus_per_site * concurrent_sites(num_sites, cpus_per_site, cores)),
                      "logging_level": logging.ERROR, "log_to_driver": True},
    }


def run_simulation(overrides: Sequence[str], *, num_sites: int, cpus_per_site: int,
                   gpus_per_site: float, server_app: str = "server.app:app",
                   client_app: str = "client.app:app", resume: bool = False) -> None:
    """Run server.app:app and client.app:app with `overrides` as the run's Hydra overrides
    (another app pair of this folder, e.g. bench/empty_flower_app.py's, by its module:attribute)."""
    if not (APP_DIR / "pyproject.toml").is_file():
        raise RuntimeError(f"the fedclinic app folder {APP_DIR} has no pyproject.toml; "
                           "install fedclinic from its source folder (pip install -e .)")
    prepare_environment()
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    run = Run.create_empty(run_id=secrets.randbits(63))
    run = replace(run, override_config={"overrides": shlex.join(overrides), "resume": resume}, primary_task_id=secrets.randbits(63),
                  federation_id=NOOP_FEDERATION_ID)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=get_fused_config_from_dir(APP_DIR, run.override_config))
    logging.getLogger("flwr").setLevel(logging.WARNING)
    _run_simulation(server_app_attr=server_app, client_app_attr=client_app,
                    num_supernodes=num_sites, backend_name="ray",
                    backend_config=backend_config(num_sites, cpus_per_site, gpus_per_site),
                    app_dir=str(APP_DIR), run=run, server_app_context=context, is_app=True,
                    exit_event=EventType.FLWR_SIMULATION_RUN_LEAVE)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m launcher.simulation --sites N --cpus C --gpus G -- OVERRIDES...`: the process
    `fedclinic run` supervises (launcher/run_command.py)."""
    parser = argparse.ArgumentParser(prog="python -m launcher.simulation")
    parser.add_argument("--sites", type=int, required=True)
    parser.add_argument("--cpus", type=int, required=True)
    parser.add_argument("--gpus", type=float, required=True)
    parser.add_argument("--resume", action="store_true", help="continue output.run_dir's run")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    run_simulation(args.overrides, num_sites=args.sites, cpus_per_site=args.cpus, gpus_per_site=args.gpus,
                   resume=args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
