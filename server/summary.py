"""summary.json: what the central team reads after a run."""

from __future__ import annotations

from typing import Any

from configs.schema import ExperimentConfig
from server.recorder import RunRecorder

GUARANTEE = ("sample-level (add/remove one patient record) (epsilon, delta)-DP per site, "
             "DP-SGD with Poisson sampling; epsilons of different sites do not add up")


def build_summary(cfg: ExperimentConfig, recorder: RunRecorder, run_id: str) -> dict[str, Any]:
    """Per-round weighted evaluation, final per-site privacy and AUROC, and the targets."""
    rounds = []
    for r in sorted(recorder.rounds.values(), key=lambda r: r.round):
        ev = r.evaluation
        rounds.append({"round": r.round, "auroc": ev.auroc if ev else None, "loss": ev.loss if ev else None,
                       "max_epsilon": r.max_epsilon, "sites_trained": len(r.training),
                       "site_failures": r.train_failures + r.eval_failures})
    evaluated = [r for r in rounds if r["auroc"] is not None]
    return {
        "run_id": run_id,
        "rounds": rounds,
        "sites": dict(recorder.last_site_values()),
        "final_auroc": evaluated[-1]["auroc"] if evaluated else None,
        "target_epsilon": cfg.privacy.target_epsilon,
        "target_delta": cfg.privacy.target_delta,
        "accountant": cfg.privacy.accountant,
        "privacy_guarantee": GUARANTEE,
        "checkpoint": "global_model.pt",
    }
