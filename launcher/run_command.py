"""`fedclinic run [resume=RUN_DIR] [overrides...]`: a simulated federation, checked, supervised, resumable.

Before Ray starts, every site folder gets the readiness check (`fedclinic site check`): a site
that cannot train stops the run with its own reason. The simulation then runs in a child process
group of its own; one Ctrl-C (SIGINT) or SIGTERM stops it within seconds (SIGKILL to the group
and its descendants, Ray's processes included), marks the run folder `interrupted` with its last completed round, and
says how to resume. The exit status follows summary.json's status (server/run_state.py EXIT_CODES).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from rich.console import Console

from configs.parse import ConfigError
from launcher.child_processes import Child

OVERRIDES_FILE = "overrides.json"  # the run's final overrides: what resume starts again with
STOP_WAIT_S = 0.0  # SIGKILL at once: every round's state is on disk already (resume.pt, the sites' ledgers,
                   # fsynced), and a graceful Ray shutdown prints pages of tracebacks and takes ~10 s
RESUME_KEY = "resume"


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signum)


def resume_overrides(run_dir: Path, extra: list[str]) -> list[str]:
    """The overrides a resumed run starts with: its own, as first started. Raises ValueError
    naming the folder when it is not a resumable run folder, or extra overrides are given."""
    if extra:
        raise ValueError(f"resume={run_dir}: a resumed run keeps its configuration; remove "
                         f"{' '.join(extra)} (start a new run to change it)")
    saved = run_dir / OVERRIDES_FILE
    if not saved.is_file():
        raise ValueError(f"resume={run_dir}: not a run folder of `fedclinic run` (no {OVERRIDES_FILE}); "
                         "give the folder printed when the run started, e.g. runs/20261130-153000-ab12")
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text(encoding="utf-8")).get("status") == "completed":
        raise ValueError(f"resume={run_dir}: this run completed; start a new run")
    return [str(o) for o in json.loads(saved.read_text(encoding="utf-8"))]


def split_resume(overrides: list[str]) -> tuple[Path | None, list[str]]:
    """(the run folder of `resume=DIR`, the other overrides)."""
    found = [o for o in overrides if o.partition("=")[0] == RESUME_KEY]
    if len(found) > 1:
        raise ValueError("resume= is given more than once")
    rest = [o for o in overrides if o.partition("=")[0] != RESUME_KEY]
    return (Path(found[0].partition("=")[2]).expanduser().resolve() if found else None), rest


def check_sites(sites: list[Path], overrides: list[str], console: Console) -> None:
    """The readiness check of every site folder (as `fedclinic site check`). Raises ConfigError
    naming the first site that cannot train, with its reason."""
    from client.site import site_settings
    from client.site_data.readiness.check import check_site
    from configs.load import load_experiment
    cfg = load_experiment(overrides)
    console.print(f"checking {len(sites)} site folder{'s' if len(sites) != 1 else ''} before starting ...",
                  highlight=False)
    for folder in sites:
        verdict = check_site(site_settings({"data-path": str(folder)}, None), cfg.data, cfg)
        if not verdict.can_train:
            raise ConfigError(f"site {folder.name} ({folder}) cannot train: {verdict.reason}. "
                              f"`fedclinic site check {folder}` lists the files and rows behind it",
                              field="data.root")


def supervise(final: list[str], num_sites: int, cpus: int, gpus: float, run_dir: Path, console: Console,
              resume: bool = False) -> int:
    """Run the simulation in a child process group; stop it on SIGINT/SIGTERM. Returns the exit status."""
    from server.run_state import EXIT_CODES, INTERRUPTED, mark_stopped
    command = [sys.executable, "-m", "launcher.simulation", "--sites", str(num_sites), "--cpus", str(cpus),
               "--gpus", str(gpus), *(["--resume"] if resume else []), "--", *final]
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    child = None
    try:
        child = Child("simulation", subprocess.Popen(command, start_new_session=True), run_dir / "summary.json")
        child.process.wait()
    except _Stop as stop:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        console.print(f"{stop}: stopping the run ...", highlight=False)
        if child is not None:
            child.stop(wait_s=STOP_WAIT_S)
        summary = mark_stopped(run_dir, INTERRUPTED, f"stopped by {stop} during round "
                               f"{_last_round(run_dir) + 1}")
        rebuild_report(run_dir, summary)
        console.print(f"interrupted after round {summary.get('last_completed_round', 0)}; continue with "
                      f"`fedclinic run resume={run_dir}`", soft_wrap=True, highlight=False, markup=False)
        return EXIT_CODES[INTERRUPTED]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return _exit_status(run_dir, child.process.returncode, console)


def _last_round(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("last_completed_round", 0))
    except (OSError, ValueError, TypeError):
        return 0


def rebuild_report(run_dir: Path, summary: dict) -> None:
    from server.report.events import write_events
    from server.report.page import write_report
    try:
        write_report(run_dir)
        write_events(run_dir, summary)
    except (OSError, ValueError, KeyError) as exc:  # the run's state is in summary.json either way
        print(f"report.html not rebuilt: {exc}", file=sys.stderr)


def _exit_status(run_dir: Path, returncode: int, console: Console) -> int:
    from server.run_state import EXIT_CODES, FAILED, RUNNING, mark_stopped
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if summary is None or summary.get("status") == RUNNING:
        summary = mark_stopped(run_dir, FAILED, f"the simulation process ended (exit code {returncode}) before "
                               "the run did; see the log above")
        console.print(f"[red]the run ended without finishing: {summary['reason']}. Run folder: {run_dir}[/red]",
                      soft_wrap=True, highlight=False)
        return EXIT_CODES[FAILED]
    status = str(summary.get("status"))
    auroc = summary.get("final_auroc")
    style = "green" if status == "completed" else "red"
    console.print(f"[{style}]{status}[/{style}]: {summary.get('reason')}; final AUROC "
                  f"{'-' if auroc is None else f'{auroc:.3f}'}", soft_wrap=True, highlight=False)
    console.print(f"run folder: {run_dir} (report: {run_dir / 'report.html'})", soft_wrap=True, highlight=False,
                  markup=False)
    return EXIT_CODES.get(status, 1)


def run(overrides: list[str], console: Console) -> int:
    """`fedclinic run`: see the module docstring."""
    from client.site import discover_sites
    from configs.load import load_experiment
    from server.run_folder import create_run_folder
    from storage.atomic import write_json
    resume_dir, overrides = split_resume(overrides)
    if resume_dir is not None:
        from server.run_state import run_is_live
        if run_is_live(resume_dir):
            raise ValueError(f"resume={resume_dir}: this run is still running (another process holds it)")
        final = resume_overrides(resume_dir, overrides)
        cfg = load_experiment(final)
        run_dir = resume_dir
    else:
        cfg = load_experiment(overrides)
    if not cfg.data.root:
        raise ValueError("data.root is not set: `fedclinic run data.root=DIR` (a folder of site folders)")
    root = Path(cfg.data.root).expanduser().resolve()
    if (root / "labels.csv").is_file():
        raise ValueError(f"data.root {root} is one site's folder (it holds labels.csv); point data.root at the "
                         f"folder that holds the site folders, e.g. data.root={root.parent}")
    sites = discover_sites(root)
    if resume_dir is None:
        check_sites(sites, [*overrides, f"data.root={root}"], console)
        run_dir = Path(cfg.output.run_dir).resolve() if cfg.output.run_dir else create_run_folder(Path(cfg.output.root))
        run_dir.mkdir(parents=True, exist_ok=True)
        final = [*overrides, f"data.root={root}", f"output.run_dir={run_dir}"]
        write_json(run_dir / OVERRIDES_FILE, final)
    console.print(f"fedclinic: {len(sites)} site{'s' if len(sites) != 1 else ''} "
                  f"({', '.join(s.name for s in sites)}), {cfg.rounds} round{'s' if cfg.rounds != 1 else ''}, "
                  f"strategy {cfg.strategy.name}, target ε {cfg.privacy.target_epsilon} at δ "
                  f"{cfg.privacy.target_delta}", soft_wrap=True, highlight=False)
    started = time.perf_counter()
    code = supervise(final, len(sites), cfg.simulation.cpus_per_site, cfg.simulation.gpus_per_site, run_dir,
                     console, resume=resume_dir is not None)
    console.print(f"wall time {time.perf_counter() - started:.0f} s", highlight=False)
    return code
