"""runs/<id>/events/: TensorBoard event files of a run, rebuilt from its summary (tensorboardX).

Idempotent: every call writes a complete, fresh event file into a new folder beside events/ and
then swaps it in (old events/ renamed aside, new one renamed into place, old one removed), so a
rebuild after each round or by `fedclinic report` never duplicates a point. A reader may, for an
instant, find no events/ folder; never a half-written or doubled one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from server.report.run_data import EVENTS, as_dict, number

POOLED = ("auroc", "auprc", "brier", "ece", "sensitivity", "specificity")
COUNTS = ("sites_trained", "sites_declined", "site_failures")


def scalars(summary: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(tag, value, round) of every point the run's events hold; missing or null values are left out.

    Tags: pooled/auroc, pooled/auroc_std, pooled/loss, pooled/<M key> (clinical metrics of the pooled
    validation set), epsilon/<site> (run ε the site reported), sites/<count>, time/wall_s.
    """
    out = []
    for r in summary.get("rounds") or []:
        step = as_dict(r).get("round")
        if not isinstance(step, int):
            continue
        pooled = as_dict(as_dict(r.get("metrics")).get("pooled"))
        values = {"pooled/auroc": r.get("auroc"), "pooled/auroc_std": r.get("auroc_std"), "pooled/loss": r.get("loss"),
                  **{f"pooled/{k}": pooled.get(k) for k in POOLED if k != "auroc"},
                  **{f"epsilon/{site}": eps for site, eps in as_dict(r.get("epsilon")).items()},
                  **{f"sites/{k}": r.get(k) for k in COUNTS}, "time/wall_s": r.get("wall_s")}
        out += [(tag, v, step) for tag, v in ((t, number(x)) for t, x in values.items()) if v is not None]
    return out


def write_events(run_dir: Path, summary: dict[str, Any]) -> Path:
    """Replace run_dir/events/ with one event file holding `scalars(summary)`; returns the folder.

    `summary`: the summary.json dict (any schema). Raises OSError if run_dir cannot be written.
    """
    from tensorboardX import SummaryWriter
    run_dir = Path(run_dir)
    target = run_dir / EVENTS
    fresh = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{EVENTS}.new."))
    try:
        os.chmod(fresh, 0o755)
        writer = SummaryWriter(logdir=str(fresh))
        try:
            for tag, value, step in scalars(summary):
                writer.add_scalar(tag, value, global_step=step)
        finally:
            writer.close()
        for f in fresh.iterdir():
            f.chmod(0o644)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{EVENTS}.old."))
            os.replace(target, old / EVENTS)
        os.replace(fresh, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if fresh.exists():
            shutil.rmtree(fresh, ignore_errors=True)
    return target
