"""`fedclinic runs`: one row per run folder under a root, read from each summary.json."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from server.run_state import run_is_live
from server.report.run_data import CONFIG, SUMMARY, NotARunFolder, load_run, number, started_at


@dataclass(frozen=True)
class RunRow:
    """What `fedclinic runs` shows of one run; None where the summary does not say."""

    run_id: str
    folder: Path
    status: str | None
    rounds_completed: int | None
    rounds_planned: int | None
    final_auroc: float | None
    strategy: str | None
    started: datetime | None


def list_runs(root: Path) -> list[RunRow]:
    """The run folders directly under `root` (those holding summary.json or config.yaml), oldest first.

    A folder with config.yaml but no readable summary.json (a run that stopped before its first
    round, or a damaged summary) is listed with status "no summary" / "unreadable summary".
    Raises NotADirectoryError naming `root` when it is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: no such folder (runs are kept under output.root, default runs/)")
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (folder / SUMMARY).exists() or (folder / CONFIG).exists():
            rows.append(run_row(folder))
    return rows


def run_row(folder: Path) -> RunRow:
    """One row; never raises for a damaged or older summary (its fields are None)."""
    try:
        s = load_run(folder).summary
    except NotARunFolder:
        status = "unreadable summary" if (folder / SUMMARY).exists() else "no summary"
        return RunRow(folder.name, folder, status, None, None, None, None, started_at(folder.name))
    rounds = [r for r in s.get("rounds") or [] if isinstance(r, dict)]
    completed = s.get("last_completed_round")
    if not isinstance(completed, int):  # schema 1: the rounds recorded
        completed = max((r["round"] for r in rounds if isinstance(r.get("round"), int)), default=None)
    planned = s.get("rounds_planned")
    strategy = s.get("strategy")
    run_id = str(s.get("run_id") or folder.name)
    status = str(s["status"]) if s.get("status") else None
    if status == "running" and not run_is_live(folder):
        status = "interrupted (its coordinator died; resume it)"
    return RunRow(run_id, folder, status, completed,
                  planned if isinstance(planned, int) else None, number(s.get("final_auroc")),
                  str(strategy) if strategy else None, started_at(run_id))
