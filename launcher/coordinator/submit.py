"""`fedclinic run --federation DIR [overrides...]`: submit the installed release to a coordinator's SuperLink.

The app folder is written by `launcher.release_app.write_release_app`, so the bundle `flwr run`
builds has the SHA-256 the sites approved. The run folder is made under DIR/runs/ here and named
to the ServerApp (`output.run_dir`), with the coordinator's audit log (`output.audit_log`) and
coordinator.toml's round timeout (`strategy.round_timeout`, unless given). The submission, and
how the run ended, go into DIR/audit.jsonl; the ServerApp adds its per-round events there.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console

from configs.load import load_experiment
from launcher.coordinator.folder import CONNECTION, CoordinatorFolder
from launcher.child_processes import tool
from launcher.release_app import release_version, write_release_app
from server.run_folder import SUMMARY, create_run_folder
from storage.audit_log import append_event

SET_HERE = ("output.run_dir", "output.audit_log", "output.root", "data.root")


def run_overrides(folder: CoordinatorFolder, overrides: list[str], run_dir: Path) -> list[str]:
    """The overrides the run is submitted with: the round timeout of coordinator.toml (unless
    given), the user's, then the run folder and the audit log. Raises ValueError for an override
    this command sets itself, ConfigError (field named) for one the configuration refuses."""
    for item in overrides:
        key = item.partition("=")[0]
        if key in SET_HERE:
            raise ValueError(f"{key}: set by `fedclinic run --federation` (run folders go to {folder.runs}; "
                             "sites use their own data); remove this override")
    timeout = [] if any(o.startswith("strategy.round_timeout=") for o in overrides) else [
        f"strategy.round_timeout={folder.settings().round_timeout:g}"]
    final = [*timeout, *overrides, f"output.run_dir={run_dir}", f"output.audit_log={folder.audit_log}"]
    load_experiment(final)  # refuse a bad override here, before anything is submitted
    return final


def _submit(folder: CoordinatorFolder, final: list[str], run_dir: Path) -> int:
    """Write the release app and the run config into a temp folder and `flwr run` it; flwr's exit code."""
    with tempfile.TemporaryDirectory(prefix="fedclinic-submit-") as tmp:
        app = Path(tmp) / "fedclinic"  # a Flower app folder's name must be a valid project name
        app_sha256 = write_release_app(app)
        run_config = Path(tmp) / "run-config.toml"  # a file: flwr's -c k=v parser cannot quote '"'
        run_config.write_text(f"overrides = {json.dumps(shlex.join(final))}\n", encoding="utf-8")
        append_event(folder.audit_log, "run-submitted", {"run_folder": run_dir.name, "app_sha256": app_sha256,
                                                         "release": release_version(), "overrides": final})
        command = [tool("flwr"), "run", str(app), CONNECTION, "--stream", "-c", str(run_config)]
        return subprocess.run(command, env=folder.flower_env(), cwd=tmp, stdin=subprocess.DEVNULL).returncode


def run_federation(root: Path, overrides: list[str], console: Console) -> int:
    """Submit, stream, and report the final AUROC; 0 only if the run wrote its summary.

    Raises SettingsError for a bad coordinator.toml, ValueError/ConfigError for a bad override."""
    folder = CoordinatorFolder.at(root)
    settings = folder.settings()
    folder.write_flwr_connection(settings)
    run_dir = create_run_folder(folder.runs)
    try:
        final = run_overrides(folder, overrides, run_dir)
    except ValueError:
        run_dir.rmdir()
        raise
    console.print(f"fedclinic: submitting release {release_version()} to {settings.superlink} "
                  f"(run folder {run_dir})", soft_wrap=True, highlight=False, markup=False)
    started = time.perf_counter()
    try:
        code = _submit(folder, final, run_dir)
    except KeyboardInterrupt:
        append_event(folder.audit_log, "run-detached", {"run_folder": run_dir.name})
        console.print(f"interrupted: the run may go on at the SuperLink. List runs with `FLWR_HOME={folder.home} "
                      f"flwr ls {CONNECTION}`, stop one with `flwr stop RUN_ID {CONNECTION}`", soft_wrap=True,
                      highlight=False, markup=False)
        return 130
    summary_path = run_dir / SUMMARY
    if not summary_path.is_file():
        append_event(folder.audit_log, "run-failed", {"run_folder": run_dir.name, "flwr_exit_code": code})
        if not any(run_dir.iterdir()):
            run_dir.rmdir()  # the ServerApp never started
        console.print(f"the run ended without a summary (flwr exit code {code}); see the output above and "
                      f"{folder.superlink_log} (is the coordinator running? fedclinic coordinator start "
                      f"{folder.root}). Run folder: {run_dir}", style="red", soft_wrap=True, highlight=False,
                      markup=False)
        return 1
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    auroc = summary.get("final_auroc")
    append_event(folder.audit_log, "run-finished", {"run_folder": run_dir.name,
                                                    "flower_run_id": summary.get("flower_run_id"),
                                                    "final_auroc": auroc})
    console.print(f"final AUROC {'-' if auroc is None else f'{auroc:.3f}'}, wall time "
                  f"{time.perf_counter() - started:.0f} s, run folder {run_dir}", soft_wrap=True, highlight=False,
                  markup=False)
    return 0
