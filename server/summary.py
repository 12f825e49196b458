"""summary.json: what the central team reads after a run."""

from __future__ import annotations

from typing import Any

from configs.schema import ExperimentConfig
from privacy.decline import REASONS as DECLINE_REASONS
from privacy.guarantee import GUARANTEE
from server.recorder import RunRecorder


def build_summary(cfg: ExperimentConfig, recorder: RunRecorder, run_id: str, flower_run_id: int | str
                  ) -> dict[str, Any]:
    """Per-round weighted evaluation, final per-site privacy and AUROC, and the targets.

    `run_id` names the run folder; `flower_run_id` is Flower's id of the run, which each site's
    ledger and `fedclinic privacy report` use as the run id.
    """
    rounds, walls = [], recorder.wall_seconds()
    for r in sorted(recorder.rounds.values(), key=lambda r: r.round):
        ev = r.evaluation
        rounds.append({"round": r.round, "auroc": ev.auroc if ev else None, "auroc_std": ev.auroc_std if ev else None,
                       "loss": ev.loss if ev else None,
                       "max_epsilon": r.max_epsilon, "sites_trained": len(r.training),
                       "sites_declined": len(r.declined),
                       "site_failures": r.failures, "failed_sites": r.failed_sites,
                       "wall_s": round(walls[r.round], 3) if r.round in walls else None,
                       "slowest_compute_s": round(r.slowest_compute_s, 1)})
    evaluated = [r for r in rounds if r["auroc"] is not None]
    return {
        "run_id": run_id,
        "flower_run_id": str(flower_run_id),
        "rounds": rounds,
        "sites": _sites(recorder),
        "final_auroc": evaluated[-1]["auroc"] if evaluated else None,
        "target_epsilon": cfg.privacy.target_epsilon,
        "target_delta": cfg.privacy.target_delta,
        "accountant": "each site's own (site.yaml privacy.accountant; default prv)",
        "privacy_guarantee": GUARANTEE,
        "checkpoint": "global_model.pt",
    }


def _sites(recorder: RunRecorder) -> dict[str, dict[str, Any]]:
    """Final values per site, plus the rounds it declined and why (from its decline codes)."""
    sites = {name: dict(values) for name, values in recorder.last_site_values().items()}
    for r in sorted(recorder.rounds.values(), key=lambda r: r.round):
        for node, code in r.declined.items():
            site = sites.setdefault(recorder.site_name(node), {"epsilon": None, "delta": None, "auroc": None})
            site.setdefault("declined_rounds", []).append(r.round)
            site["decline_reason"] = DECLINE_REASONS.get(code, f"code {code}")
        for name, reason in r.rejected.items():
            site = sites.setdefault(name, {"epsilon": None, "delta": None, "auroc": None})
            site.setdefault("rejected_updates", []).append({"round": r.round, "reason": reason})
    return sites
