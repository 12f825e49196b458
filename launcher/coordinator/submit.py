"""`fedclinic run --federation DIR [overrides...]`: submit the installed release to a coordinator's SuperLink.

The app folder is written by `launcher.release_app.write_release_app`, so the bundle `flwr run`
builds has the SHA-256 the sites approved. The run folder is made under DIR/runs/ here and named
to the ServerApp (`output.run_dir`), with the coordinator's audit log (`output.audit_log`) and
coordinator.toml's round timeout (`strategy.round_timeout`, unless given). The submission, and
how the run ended, go into DIR/audit.jsonl; the ServerApp adds its per-round events there.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from rich.console import Console

from configs.load import load_experiment
from launcher.coordinator.folder import CONNECTION, CoordinatorFolder
from launcher.child_processes import tool
from launcher.release_app import release_version, write_release_app
from launcher.run_command import OVERRIDES_FILE, rebuild_report, resume_overrides, split_resume
from server.run_folder import SUMMARY, create_run_folder
from server.run_state import EXIT_CODES, INTERRUPTED, mark_stopped, run_is_live
from storage.atomic import write_json
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


def _flwr_run(folder: CoordinatorFolder, final: list[str], run_dir: Path, console: Console,
              resume: bool) -> int | None:
    """Write the release app and the run config into a temp folder and `flwr run --stream` it,
    echoing its output. Returns flwr's exit code, or None when SIGINT/SIGTERM stopped the run (then
    `flwr stop` has been sent for it and the run folder is marked interrupted)."""
    with tempfile.TemporaryDirectory(prefix="fedclinic-submit-") as tmp:
        app = Path(tmp) / "fedclinic"  # a Flower app folder's name must be a valid project name
        app_sha256 = write_release_app(app)
        run_config = Path(tmp) / "run-config.toml"  # a file: flwr's -c k=v parser cannot quote '"'
        run_config.write_text(f"overrides = {json.dumps(shlex.join(final))}\nresume = {str(resume).lower()}\n",
                              encoding="utf-8")
        append_event(folder.audit_log, "run-submitted", {"run_folder": run_dir.name, "app_sha256": app_sha256,
                                                         "release": release_version(), "overrides": final})
        command = [tool("flwr"), "run", str(app), CONNECTION, "--stream", "-c", str(run_config)]
        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        flower_run: list[str] = []
        process = subprocess.Popen(command, env=folder.flower_env(), cwd=tmp, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                found = STARTED.search(line)
                if found and not flower_run:
                    flower_run.append(found.group(1))
            return process.wait()
        except _Stop as stop:
            for s in previous:
                signal.signal(s, signal.SIG_IGN)
            _stop_run(folder, flower_run, run_dir, str(stop), console)
            process.kill()
            process.wait()
            return None
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


STARTED = re.compile(r"started run (\d+)", re.IGNORECASE)


class _Stop(Exception):
    pass


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _stop_run(folder: CoordinatorFolder, flower_run: list[str], run_dir: Path, why: str, console: Console) -> None:
    """`flwr stop` the run at the SuperLink (within 30 s) and mark its folder interrupted."""
    console.print(f"{why}: stopping the run ...", highlight=False, markup=False)
    if flower_run:
        subprocess.run([tool("flwr"), "stop", flower_run[0], CONNECTION], env=folder.flower_env(), cwd=folder.root,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
    summary = mark_stopped(run_dir, INTERRUPTED, f"stopped by {why}")
    rebuild_report(run_dir, summary)
    append_event(folder.audit_log, "run-interrupted", {"run_folder": run_dir.name, "flower_run_id":
                                                       flower_run[0] if flower_run else None})
    console.print(f"interrupted after round {summary.get('last_completed_round', 0)}; continue with "
                  f"`fedclinic run --federation {folder.root} resume={run_dir}`", soft_wrap=True, highlight=False,
                  markup=False)


def _run_folder(folder: CoordinatorFolder, overrides: list[str]) -> tuple[Path, list[str]]:
    """The run folder and the final overrides: a new folder, or the one `resume=DIR` names."""
    resume_dir, overrides = split_resume(overrides)
    if resume_dir is not None:
        if resume_dir.parent != folder.runs.resolve():
            raise ValueError(f"resume={resume_dir}: not a run folder of this coordinator ({folder.runs})")
        if run_is_live(resume_dir):
            raise ValueError(f"resume={resume_dir}: this run is still running at the SuperLink")
        return resume_dir, resume_overrides(resume_dir, overrides)
    run_dir = create_run_folder(folder.runs)
    try:
        final = run_overrides(folder, overrides, run_dir)
    except ValueError:
        run_dir.rmdir()
        raise
    write_json(run_dir / OVERRIDES_FILE, final)
    return run_dir, final


def run_federation(root: Path, overrides: list[str], console: Console) -> int:
    """Submit, stream, and report; the exit status follows the summary's status
    (server/run_state.py EXIT_CODES; 1 when the run wrote no summary).

    Raises SettingsError for a bad coordinator.toml, ValueError/ConfigError for a bad override."""
    folder = CoordinatorFolder.at(root)
    settings = folder.settings()
    folder.write_flwr_connection(settings)
    run_dir, final = _run_folder(folder, overrides)
    console.print(f"fedclinic: submitting release {release_version()} to {settings.superlink} "
                  f"(run folder {run_dir})", soft_wrap=True, highlight=False, markup=False)
    started = time.perf_counter()
    code = _flwr_run(folder, final, run_dir, console, resume=any(o.partition("=")[0] == "resume" for o in overrides))
    if code is None:
        return EXIT_CODES[INTERRUPTED]
    summary_path = run_dir / SUMMARY
    if not summary_path.is_file():
        append_event(folder.audit_log, "run-failed", {"run_folder": run_dir.name, "flwr_exit_code": code})
        console.print(f"the run ended without a summary (flwr exit code {code}); see the output above and "
                      f"{folder.superlink_log} (is the coordinator running? fedclinic coordinator start "
                      f"{folder.root}). Run folder: {run_dir}", style="red", soft_wrap=True, highlight=False,
                      markup=False)
        return 1
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    auroc, status = summary.get("final_auroc"), str(summary.get("status"))
    append_event(folder.audit_log, "run-finished", {"run_folder": run_dir.name, "status": status,
                                                    "flower_run_ids": summary.get("flower_run_ids"),
                                                    "final_auroc": auroc})
    console.print(f"{status}: {summary.get('reason')}; final AUROC {'-' if auroc is None else f'{auroc:.3f}'}, "
                  f"wall time {time.perf_counter() - started:.0f} s (report: {run_dir / 'report.html'})", soft_wrap=True,
                  highlight=False, markup=False)
    return EXIT_CODES.get(status, 1)
