"""summary.json: what the central team reads after (and during) a run; its fields are listed in
README.md ("What a run writes"). Rewritten after every round with status "running"."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from configs.schema import ExperimentConfig
from privacy.decline import REASONS as DECLINE_REASONS
from privacy.guarantee import GUARANTEE
from server.recorder import RunRecorder
from server.run_folder import CHECKPOINT
from server.run_state import BEST_CHECKPOINT

SCHEMA = 2


@dataclass(frozen=True)
class RunOutcome:
    """Where a run stands: its status (server/run_state.py), the rounds that matter, Flower's ids."""

    status: str
    reason: str
    last_completed: int
    last_aggregated: int | None
    best: tuple[int, float] | None
    flower_run_ids: tuple[str, ...]


def build_summary(cfg: ExperimentConfig, recorder: RunRecorder, run_id: str, outcome: RunOutcome
                  ) -> dict[str, Any]:
    """Per-round evaluation and participation, final per-site privacy and AUROC, and the status.

    `run_id` names the run folder; it is also the key of the run in every site's ledger."""
    rounds, walls = [], recorder.wall_seconds()
    for r in sorted(recorder.rounds.values(), key=lambda r: r.round):
        ev = r.evaluation
        epsilon = {t.site: t.epsilon for t in r.training}
        for e in r.site_evals:
            if e.epsilon is not None:
                epsilon[e.site] = max(e.epsilon, epsilon.get(e.site, 0.0))
        rounds.append({"round": r.round, "aggregated": r.aggregated, "skipped": r.skipped,
                       "auroc": ev.auroc if ev else None, "auroc_std": ev.auroc_std if ev else None,
                       "loss": ev.loss if ev else None,
                       "max_epsilon": r.max_epsilon, "sites_trained": len(r.training),
                       "sites_declined": len(r.declined),
                       "site_failures": r.failures, "failed_sites": r.failed_sites,
                       "wall_s": round(walls[r.round], 3) if r.round in walls else None,
                       "slowest_compute_s": round(r.slowest_compute_s, 1),
                       "epsilon": epsilon, "metrics": r.metrics})
    evaluated = [r for r in rounds if r["auroc"] is not None]
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "flower_run_ids": list(outcome.flower_run_ids),
        "status": outcome.status,
        "reason": outcome.reason,
        "strategy": cfg.strategy.name,
        "rounds_planned": cfg.rounds,
        "last_completed_round": outcome.last_completed,
        "last_aggregated_round": outcome.last_aggregated,
        "best_round": outcome.best[0] if outcome.best else None,
        "best_auroc": outcome.best[1] if outcome.best else None,
        "final_auroc": evaluated[-1]["auroc"] if evaluated else None,
        "rounds": rounds,
        "participation": {str(r.round): {site: {phase: o.as_dict() for phase, o in phases.items()}
                                         for site, phases in sorted(r.participation.items())}
                          for r in sorted(recorder.rounds.values(), key=lambda r: r.round)},
        "sites": _sites(recorder),
        "target_epsilon": cfg.privacy.target_epsilon,
        "target_delta": cfg.privacy.target_delta,
        "accountant": "each site's own (site.yaml privacy.accountant; default prv)",
        "privacy_guarantee": GUARANTEE,
        "checkpoint": CHECKPOINT if outcome.last_aggregated is not None else None,
        "best_checkpoint": BEST_CHECKPOINT if outcome.best else None,
        "versions": versions(),
    }


def _sites(recorder: RunRecorder) -> dict[str, dict[str, Any]]:
    """Final values per site, plus the rounds it declined and why (from its decline codes)."""
    sites = {name: dict(values) for name, values in recorder.last_site_values().items()}
    for r in sorted(recorder.rounds.values(), key=lambda r: r.round):
        for t in r.training:
            if t.epsilon_cap is not None:
                sites[t.site]["epsilon_cap"] = t.epsilon_cap
        for node, code in r.declined.items():
            site = sites.setdefault(recorder.site_name(node), {"epsilon": None, "delta": None, "auroc": None})
            site.setdefault("declined_rounds", []).append(r.round)
            site["decline_reason"] = DECLINE_REASONS.get(code, f"code {code}")
        for name, reason in r.rejected.items():
            site = sites.setdefault(name, {"epsilon": None, "delta": None, "auroc": None})
            site.setdefault("rejected_updates", []).append({"round": r.round, "reason": reason})
    return sites


def versions() -> dict[str, str | None]:
    """fedclinic, flwr, torch, opacus and Python versions, and the git commit of the source tree
    when it is a git checkout (None otherwise)."""
    out: dict[str, str | None] = {}
    for package in ("fedclinic", "flwr", "torch", "opacus"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    out["python"] = sys.version.split()[0]
    out["git_commit"] = _git_commit(Path(__file__).resolve().parent.parent)
    return out


def _git_commit(folder: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), "describe", "--always", "--dirty", "--abbrev=40"], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
