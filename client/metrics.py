"""Validation metrics computed at the site (numpy only: the ClientApp imports this at start-up)."""

from __future__ import annotations

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties given the mean of the ranks they span (as
    scipy.stats.rankdata's default "average" method); all NaN if any value is NaN (as rankdata's
    nan_policy="propagate"). [N] -> [N] float64."""
    values = np.asarray(values, dtype=np.float64).ravel()
    n = len(values)
    if n and np.isnan(values).any():
        return np.full(n, np.nan)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if n else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], n]
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties averaged); None with a single class."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve as average precision, AP = sum_k (R_k - R_{k-1}) P_k
    over the distinct score thresholds (ties form one threshold), as scikit-learn's
    average_precision_score; None without a positive, NaN if a score is NaN (a diverged model).
    [N] 0/1 labels, [N] scores -> float."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(labels.sum())
    if n_pos == 0:
        return None
    if np.isnan(scores).any():
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    ordered, hits = scores[order], labels[order]
    last = np.r_[ordered[1:] != ordered[:-1], True]  # the last index of each tied threshold
    tp = np.cumsum(hits)[last]
    predicted = (np.flatnonzero(last) + 1).astype(np.float64)
    precision, recall = tp / predicted, tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared error of the predicted probabilities (Brier 1950): [N], [N] -> float in [0, 1]."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    return float(np.mean((np.asarray(probabilities, dtype=np.float64).ravel() - y) ** 2))


ECE_BINS = 15  # Guo et al. 2017, "On calibration of modern neural networks", section 2


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of a binary classifier's probability of the positive class: sum over `bins` equal-width
    probability bins of (share of patients in the bin) x |observed positive rate - mean predicted
    probability| (Naeini et al. 2015; Guo et al. 2017 with the positive-class probability).
    [N], [N] -> float in [0, 1]; NaN for no patient or a NaN probability (a diverged model).
    Raises ValueError for a probability outside [0, 1]."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if len(p) == 0 or np.isnan(p).any():
        return float("nan")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("expected_calibration_error: probabilities must lie in [0, 1]")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(which, weights=y, minlength=bins) - np.bincount(which, weights=p, minlength=bins))
    return float(gap.sum() / len(p))
