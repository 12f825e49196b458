"""What a site releases about its held-out patients: a score histogram per outcome class.

The release is two histograms of predicted scores over BINS bins, one for positive and one for
negative patients. The bins are equal-width in the logit between -LOGIT_RANGE and +LOGIT_RANGE,
plus one open bin at each end: DP-trained models give polarised probabilities, and equal-width
probability bins would put most patients into the two end bins (on the demo federation binned
AUROC 0.727 against an exact 0.795; with these logit bins 0.789). Each patient falls in exactly one of the 2 x BINS
cells, so adding or removing one patient changes one cell by one: the L2 sensitivity is 1. A DP
release adds independent N(0, sigma^2) noise to every cell (the Gaussian mechanism; accounted as
the subsampled Gaussian with sample rate 1 and one step, noise multiplier sigma) and is recorded
in the ledger before it leaves. Everything reported (AUROC, loss, counts) is computed from the
released cells, i.e. post-processing, and costs nothing more. A crafted model cannot single a
patient out: whatever its scores, that patient moves one noisy count by one.

Cells are not clamped at zero before the metrics (clamping biases every empty cell upwards);
the metrics are clipped to their ranges instead. A probability that is not finite (a crafted
model can make a logit NaN) is put in a middle bin, so every patient still lands in one cell.
The bins are defined in client/score_bins.py (numpy only), which the coordinator shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from client.score_bins import BINS, CENTRES, EDGES, LOGIT_RANGE, sigmoid
from client.score_bins import auroc_from_cells as _auroc

__all__ = ["BINS", "CENTRES", "EDGES", "LOGIT_RANGE", "BinnedMetrics", "ValidationRelease", "bin_counts",
           "binned_metrics", "dp_release", "exact_release", "is_defined"]


@dataclass(frozen=True)
class ValidationRelease:
    """Released cell counts (noisy for a DP release) and the noise standard deviation (0: exact)."""

    positives: tuple[float, ...]   # [BINS] counts of positive patients per probability bin
    negatives: tuple[float, ...]   # [BINS] counts of negative patients per probability bin
    noise_std: float


def bin_counts(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-bin counts [BINS] of positive and negative patients (labels 0/1, any probabilities)."""
    p = np.clip(np.where(np.isfinite(probabilities), probabilities, 0.5), 1e-300, 1.0)
    logits = np.log(p) - np.log1p(-np.minimum(p, 1.0 - 1e-16))
    cells = np.searchsorted(EDGES, logits)
    positive = np.asarray(labels) > 0.5
    return (np.bincount(cells[positive], minlength=BINS).astype(np.float64),
            np.bincount(cells[~positive], minlength=BINS).astype(np.float64))


def dp_release(labels: np.ndarray, probabilities: np.ndarray, *, noise_multiplier: float,
               generator: torch.Generator) -> ValidationRelease:
    """The Gaussian mechanism on the 2 x BINS cells: noise std `noise_multiplier` (sensitivity 1)."""
    positives, negatives = bin_counts(labels, probabilities)
    noise = torch.normal(0.0, noise_multiplier, size=(2, BINS), generator=generator, dtype=torch.float64).numpy()
    return ValidationRelease(tuple((positives + noise[0]).tolist()), tuple((negatives + noise[1]).tolist()),
                             float(noise_multiplier))


def exact_release(labels: np.ndarray, probabilities: np.ndarray) -> ValidationRelease:
    """The exact cells (only for a site whose policy trusts the coordinator with exact metrics)."""
    positives, negatives = bin_counts(labels, probabilities)
    return ValidationRelease(tuple(positives.tolist()), tuple(negatives.tolist()), 0.0)


@dataclass(frozen=True)
class BinnedMetrics:
    """Metrics computed from released cells (None where the cells cannot define them)."""

    auroc: float | None
    auroc_std: float       # standard deviation of the AUROC due to the release's noise (delta method)
    loss: float | None     # binary cross-entropy at each bin's centre probability
    patients: int          # released total, rounded, at least 0
    positives: int


def _auroc_std(pos: np.ndarray, neg: np.ndarray, auroc: float, noise_std: float) -> float:
    """First-order (delta method) standard deviation of the binned AUROC under N(0, noise_std^2)
    noise on every cell: the gradient of AUROC = sum_i P_i (N_<i + N_i / 2) / (n_P n_N)."""
    n_pos, n_neg = pos.sum(), neg.sum()
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    above = pos[::-1].cumsum()[::-1] - pos
    d_pos = (below + 0.5 * neg) / (n_pos * n_neg) - auroc / n_pos
    d_neg = (above + 0.5 * pos) / (n_pos * n_neg) - auroc / n_neg
    return float(noise_std * np.sqrt((d_pos ** 2).sum() + (d_neg ** 2).sum()))


def binned_metrics(release: ValidationRelease) -> BinnedMetrics:
    """AUROC (ties within a bin count one half) and its noise std, loss and counts from the cells."""
    pos, neg = np.asarray(release.positives), np.asarray(release.negatives)
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    auroc, std = None, 0.0
    if n_pos >= 1 and n_neg >= 1:
        raw = _auroc(pos, neg)
        auroc, std = float(np.clip(raw, 0.0, 1.0)), _auroc_std(pos, neg, raw, release.noise_std)
    probability = sigmoid(CENTRES)
    total = n_pos + n_neg
    loss = None
    if total >= 1:
        loss = max(0.0, float(-(pos * np.log(probability) + neg * np.log1p(-probability)).sum() / total))
    return BinnedMetrics(auroc, std, loss, max(0, int(round(total))), max(0, int(round(n_pos))))


def is_defined(value: float | None) -> bool:
    """True for a finite metric."""
    return value is not None and math.isfinite(value)
