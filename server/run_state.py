"""A run's state between rounds: how it ended (status), and where a resume continues from.

runs/<run-id>/resume.pt is rewritten (atomically) at the end of every round: the last completed
round, the global model after it, the server optimiser's state (FedAdam, FedYogi, FedAdagrad), the
recorded rounds and the best round so far. `fedclinic run resume=RUN_DIR` continues from there.

Statuses (summary.json `status`): running (written after each round), completed (every planned
round ran and a model was evaluated), failed (no round aggregated, or no evaluation was defined),
interrupted (SIGINT/SIGTERM, or the coordinator died: a resume continues it), budget_exhausted
(every site declined training for its privacy budget).
"""

from __future__ import annotations

import fcntl
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from storage.atomic import write_atomic, write_json

RESUME, BEST_CHECKPOINT, LOCK = "resume.pt", "best_model.pt", ".run.lock"
RUNNING, COMPLETED, FAILED, INTERRUPTED, BUDGET_EXHAUSTED = (
    "running", "completed", "failed", "interrupted", "budget_exhausted")
EXIT_CODES = {COMPLETED: 0, FAILED: 1, BUDGET_EXHAUSTED: 3, INTERRUPTED: 130, RUNNING: 1}
BUDGET_CODES = (701, 702, 706)  # privacy/decline.py: lifetime budget, run ceiling, accounting limit
PRIVATE = 0o600  # the resume state holds the model and the server optimiser's moments


class RunStopped(Exception):
    """The run ends before its planned rounds (raised from inside a round)."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class ResumeError(ValueError):
    """A run folder that cannot be resumed; the message names the file and what to do."""


@dataclass
class ResumePoint:
    """Everything a resumed run needs: arrays are the global model as it travels (model.exchange)."""

    round: int                                  # last completed round (training and evaluation done)
    arrays: dict[str, np.ndarray]               # the global model after that round
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)  # server optimiser moments
    rounds: list[dict[str, Any]] = field(default_factory=list)           # RoundRecord.as_json() of each round
    names: dict[int, str] = field(default_factory=dict)                  # node id -> site name
    best_round: int | None = None
    best_auroc: float | None = None
    last_aggregated: int | None = None
    flower_run_ids: list[str] = field(default_factory=list)


def save_resume_point(run_dir: Path, point: ResumePoint) -> Path:
    """Write runs/<id>/resume.pt atomically (torch.save of tensors, numbers and one JSON string)."""
    import torch  # here, not at import: `fedclinic runs` reads statuses without torch
    meta = {"round": point.round, "rounds": point.rounds, "names": {str(k): v for k, v in point.names.items()},
            "best_round": point.best_round, "best_auroc": point.best_auroc,
            "last_aggregated": point.last_aggregated, "flower_run_ids": point.flower_run_ids}
    payload = {"meta": json.dumps(meta),
               "arrays": {k: torch.from_numpy(np.array(v)) for k, v in point.arrays.items()},
               "strategy_state": {k: torch.from_numpy(np.array(v)) for k, v in point.strategy_state.items()}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = run_dir / RESUME
    write_atomic(path, buffer.getvalue(), mode=PRIVATE)
    return path


def load_resume_point(run_dir: Path) -> ResumePoint | None:
    """The resume point of a run folder; None when no round completed yet (resume starts at round 1).

    Raises ResumeError for a resume.pt that cannot be read."""
    path = run_dir / RESUME
    if not path.exists():
        return None
    import torch
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(payload["meta"])
        return ResumePoint(int(meta["round"]), {k: v.numpy() for k, v in payload["arrays"].items()},
                           {k: v.numpy() for k, v in payload["strategy_state"].items()}, list(meta["rounds"]),
                           {int(k): str(v) for k, v in meta["names"].items()}, meta["best_round"],
                           meta["best_auroc"], meta["last_aggregated"], [str(i) for i in meta["flower_run_ids"]])
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ResumeError(f"{path}: cannot be read ({exc}); this run cannot be resumed. Start a new run "
                          "(the sites' ledgers keep what this one spent)") from exc


def final_status(planned: int, last_completed: int, aggregated: Sequence[int], evaluated: Sequence[int],
                 stopped: RunStopped | None, released: Sequence[int]) -> tuple[str, str]:
    """(status, reason) of a run that returned from its rounds (or stopped early). `evaluated`:
    rounds with a defined AUROC; `released`: rounds in which at least one site released metrics."""
    if stopped is not None:
        return stopped.status, stopped.reason
    if not aggregated:
        return FAILED, "no round aggregated a model: no site trained (see each round's failed sites)"
    if not evaluated and not released:
        return FAILED, ("no site released validation metrics in any round (each declined or failed: see the "
                        "rounds' sites; strategy.fraction_evaluate must be > 0), so nothing measures the model")
    if not evaluated:
        return FAILED, ("sites released validation metrics, but in no round did the released counts define an "
                        "AUROC: each site's counts showed fewer than one patient of a class (held-out patients "
                        "too few for the site's DP noise, validation.noise_multiplier, or of one class only): "
                        "sites need more held-out patients (validation.fraction, or more data)")
    if last_completed < planned:
        return FAILED, f"only {last_completed} of {planned} rounds completed"
    if len(aggregated) == planned:
        return COMPLETED, f"all {planned} rounds ran and aggregated"
    return COMPLETED, f"all {planned} rounds ran; {len(aggregated)} of them aggregated a model"


def mark_stopped(run_dir: Path, status: str, reason: str) -> dict[str, Any]:
    """Set summary.json's status and reason (a launcher that stopped the run); keeps what was
    recorded. Writes a minimal summary when the run stopped before its first round ended."""
    path = run_dir / "summary.json"
    try:
        summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {"schema": 2, "run_id": run_dir.name, "rounds": [], "participation": {}, "sites": {},
                   "last_completed_round": 0, "last_aggregated_round": None, "final_auroc": None}
    summary.update(status=status, reason=reason)
    write_json(path, summary)
    return summary


def strategy_state_arrays(state: Mapping[str, Mapping[str, np.ndarray] | None]) -> dict[str, np.ndarray]:
    """{'m_t': {name: array}, ...} -> {'m_t/name': array} (None entries dropped)."""
    return {f"{part}/{name}": value for part, arrays in state.items() if arrays for name, value in arrays.items()}


def split_strategy_state(flat: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The inverse of strategy_state_arrays."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        part, _, name = key.partition("/")
        out.setdefault(part, {})[name] = value
    return out


class RunFolderBusy(RuntimeError):
    """Another process is running this run folder (a second resume of the same run)."""


def hold_run_lock(run_dir: Path) -> io.TextIOWrapper:
    """Hold the run folder's lock for as long as the returned file stays open (the ServerApp, for
    its whole run): `fedclinic runs` tells a live run from one whose coordinator died, and a run
    folder is never run twice at once. Raises RunFolderBusy."""
    handle = (run_dir / LOCK).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise RunFolderBusy(f"{run_dir}: another process is running this run; wait for it or stop it") from exc
    return handle


def run_is_live(run_dir: Path) -> bool:
    """True while a process holds the run folder's lock (hold_run_lock)."""
    try:
        with (run_dir / LOCK).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False
