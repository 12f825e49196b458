"""The score bins of a site's validation release, shared by the site (client/validation_release.py)
and the coordinator (server/clinical_metrics.py). numpy only: the coordinator imports it without torch.

BINS bins, equal-width in the logit between -LOGIT_RANGE and +LOGIT_RANGE, plus one open bin at each
end. Bin i (0 <= i < BINS) holds the logits in (EDGES[i-1], EDGES[i]] (searchsorted, side "left"; the
end bins are open), so bins are ordered by increasing score. A bin's representative score is its
centre in logit: the midpoint for the interior bins, one logit beyond the range for the end bins.
"""

from __future__ import annotations

import numpy as np

BINS = 10
LOGIT_RANGE = 6.0
EDGES = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, BINS - 1)  # [BINS - 1] interior edges, in logits
CENTRES = np.concatenate([[-LOGIT_RANGE - 1.0], (EDGES[:-1] + EDGES[1:]) / 2, [LOGIT_RANGE + 1.0]])  # [BINS]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probability of each logit (any shape), 1 / (1 + exp(-x))."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def auroc_from_cells(pos: np.ndarray, neg: np.ndarray) -> float:
    """Binned AUROC: sum_i P_i (N_<i + N_i / 2) / (n_P n_N), the Mann-Whitney statistic with the
    patients of one bin tied (a tie counts one half; Hanley & McNeil 1982, Radiology 143:29).
    pos, neg: [BINS] counts per bin, ascending score; both totals must be non-zero (not checked)."""
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))
