"""Clinical metrics from the sites' released score histograms, per site and pooled, with small cells
suppressed: the "M" object of summary.json (schema 2).

Input: the two histograms a site releases per evaluation (client/validation_release.py): counts of
positive and of negative patients in each of the BINS score bins of client/score_bins.py (ascending
score; DP-noised counts may be fractional or negative). Everything here is post-processing of the
released cells and costs no privacy.

Cells: each cell is clamped at 0 before anything is computed (a negative count has no meaning for a
precision or a calibration). This biases a cell that is truly empty upwards by sigma / sqrt(2 pi)
(about 0.4 sigma) on average; the site-side binned_metrics does not clamp, so for noisy cells with
negative values the AUROC here can differ slightly from the one the site reported. Counts are the
sums of the clamped cells, rounded (Python's round); patients = positives + negatives.

Metrics (P_i, N_i: clamped positives and negatives in bin i; P, N their totals; T = P + N; c_i the
probability of bin i's centre, sigmoid(CENTRES[i])):
  auroc        sum_i P_i (N_<i + N_i / 2) / (P N), ties within a bin count one half
               (Mann-Whitney; Hanley & McNeil 1982); client.score_bins.auroc_from_cells.
  auprc        average precision with step interpolation, sum_i (P_i / P) * prec_i, where
               prec_i = P_>=i / (P_>=i + N_>=i) is the precision when bins i.. are called positive;
               the definition of sklearn.metrics.average_precision_score (not the trapezoid, which
               is optimistic: Davis & Goadrich 2006, ICML, "The relationship between PR and ROC curves").
  brier        sum_i [P_i (1 - c_i)^2 + N_i c_i^2] / T (Brier 1950), each patient scored at c_i.
  ece          sum_i |P_i - c_i (P_i + N_i)| / T: binned expected calibration error over the release's
               bins, sum_i (T_i / T) |observed rate_i - confidence_i| (Naeini et al. 2015, AAAI;
               Guo et al. 2017, ICML), with confidence_i taken as c_i.
  sensitivity  P_>j / P and specificity N_<=j / N, where edge j is the configured threshold snapped
               to the nearest bin edge in logit (the snapped probability is reported as `threshold`;
               0.5 is an edge). A patient is called positive when their score is above that edge
               (a score exactly on an edge is counted in the bin below, as bin_counts does).
Brier and ECE are approximations: the release carries no per-bin mean score, so every patient is
taken at the bin centre. `centre_error_bounds` gives, for given cells, how far each can be from the
value with the true scores: for ECE the count-weighted distance from each centre to the farther end
of its bin, at most 0.18 (the two middle bins, (0.18, 0.5] and (0.5, 0.82] in probability, centres
0.32 and 0.68); for Brier at most 0.21 per patient (a positive in (0.18, 0.5], a negative in
(0.5, 0.82]), under 0.05 in the outer three bins at each end (below 0.047 or above 0.953).

Small-cell suppression (k = evaluation.min_cell), one rule per level, each adding a reason:
  - patients < k: every count and metric is null.
  - positives < k (likewise negatives < k): that count is null, and so are auroc, auprc and
    sensitivity (for negatives: auroc, auprc, specificity); the other class's count is null too,
    since patients minus it would give the small count back. brier and ece stay (over >= k patients).
  - pooled: a count is null when the same count of some site is null (the pooled count minus the
    other sites' counts would give it back). Pooled metrics are not suppressed for a small site: pooling
    is how a small site contributes.
The site itself declines to evaluate below its validation.min_patients, so no release comes from fewer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from client.score_bins import BINS, CENTRES, EDGES, auroc_from_cells, sigmoid

_COUNTS = ("patients", "positives", "negatives")
_METRICS = ("auroc", "auprc", "brier", "ece", "sensitivity", "specificity")
_NEEDS = {"positives": ("auroc", "auprc", "sensitivity"), "negatives": ("auroc", "auprc", "specificity")}


@dataclass(frozen=True)
class ClinicalMetrics:
    """One site's (or the pooled) metrics; None where suppressed or undefined (see `suppressed`)."""

    patients: int | None
    positives: int | None
    negatives: int | None
    auroc: float | None
    auprc: float | None
    brier: float | None
    ece: float | None
    sensitivity: float | None
    specificity: float | None
    threshold: float                # the configured threshold snapped to a bin edge, as a probability
    suppressed: tuple[str, ...]     # one sentence per suppression rule that applied

    def as_dict(self) -> dict[str, int | float | list[str] | None]:
        """The JSON form (summary.json's M): the fields by name, `suppressed` as a list."""
        out = asdict(self)
        out["suppressed"] = list(self.suppressed)
        return out


def snap_threshold(threshold: float) -> tuple[int, float]:
    """(j, probability) of the bin edge EDGES[j] nearest to `threshold` in logit (ties: the lower
    edge). Raises ValueError unless 0 < threshold < 1."""
    if not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
        raise ValueError(f"evaluation.threshold must be a probability in (0, 1), got {threshold!r}")
    logit = np.log(threshold) - np.log1p(-threshold)
    j = int(np.argmin(np.abs(EDGES - logit)))
    return j, float(sigmoid(EDGES[j]))


def _cells(values: Sequence[float], name: str) -> np.ndarray:
    """[BINS] float64 cells, finite (ValueError naming `name` otherwise); not clamped."""
    cells = np.asarray(values, dtype=np.float64)
    if cells.shape != (BINS,):
        raise ValueError(f"{name}: expected {BINS} cells, got shape {cells.shape}")
    if not np.isfinite(cells).all():
        raise ValueError(f"{name}: cells must be finite numbers")
    return cells


def centre_error_bounds(positives: Sequence[float], negatives: Sequence[float]) -> tuple[float, float]:
    """(brier, ece): how far the centre-scored Brier score and ECE of these cells can be from the
    values computed with the patients' true scores (for ECE: true per-bin mean scores), whatever
    those scores are within their bins. Per patient in bin [lo_i, hi_i] with label y, |(y - s)^2 -
    (y - c_i)^2| is largest at an end of the bin; |mean_i - c_i| <= max(c_i - lo_i, hi_i - c_i)."""
    pos = np.maximum(_cells(positives, "histogram-positive"), 0.0)
    neg = np.maximum(_cells(negatives, "histogram-negative"), 0.0)
    total = pos.sum() + neg.sum()
    if total <= 0:
        return 0.0, 0.0
    lo, hi, c = np.concatenate([[0.0], sigmoid(EDGES)]), np.concatenate([sigmoid(EDGES), [1.0]]), sigmoid(CENTRES)
    brier_pos = np.maximum(np.abs((1 - lo) ** 2 - (1 - c) ** 2), np.abs((1 - hi) ** 2 - (1 - c) ** 2))
    brier_neg = np.maximum(np.abs(lo ** 2 - c ** 2), np.abs(hi ** 2 - c ** 2))
    reach = np.maximum(c - lo, hi - c)
    return (float((pos * brier_pos + neg * brier_neg).sum() / total),
            float(((pos + neg) * reach).sum() / total))


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """sum_i (P_i / P) P_>=i / (P_>=i + N_>=i) (see the module docstring); P > 0."""
    tp = pos[::-1].cumsum()[::-1]
    called = tp + neg[::-1].cumsum()[::-1]
    precision = np.divide(tp, called, out=np.zeros(BINS), where=called > 0)
    return float((pos * precision).sum() / pos.sum())


def _unsuppressed(pos: np.ndarray, neg: np.ndarray, edge: int, threshold: float) -> ClinicalMetrics:
    """Every count and metric of clamped cells; a metric whose class is empty is None."""
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    total = n_pos + n_neg
    c = sigmoid(CENTRES)
    both = n_pos > 0 and n_neg > 0
    positives, negatives = int(round(n_pos)), int(round(n_neg))
    return ClinicalMetrics(
        patients=positives + negatives, positives=positives, negatives=negatives,
        auroc=float(np.clip(auroc_from_cells(pos, neg), 0.0, 1.0)) if both else None,
        auprc=_average_precision(pos, neg) if n_pos > 0 else None,
        brier=float((pos * (1 - c) ** 2 + neg * c ** 2).sum() / total) if total > 0 else None,
        ece=float(np.abs(pos - c * (pos + neg)).sum() / total) if total > 0 else None,
        sensitivity=float(pos[edge + 1:].sum() / n_pos) if n_pos > 0 else None,
        specificity=float(neg[:edge + 1].sum() / n_neg) if n_neg > 0 else None,
        threshold=threshold, suppressed=())


def _suppress(m: ClinicalMetrics, k: int) -> ClinicalMetrics:
    """The small-cell rules of the module docstring for one site (or the pooled cells)."""
    limit = f"evaluation.min_cell ({k})"
    if m.patients is None or m.patients < k:
        nulls = dict.fromkeys(_COUNTS + _METRICS)
        return replace(m, **nulls, suppressed=(f"patients below {limit}: no count or metric shown",))
    small = [name for name in ("positives", "negatives") if getattr(m, name) < k]
    hidden: set[str] = set()
    reasons = []
    for name in small:
        hidden.update((name, *_NEEDS[name]))
        reasons.append(f"{name} below {limit}: {name}, {', '.join(_NEEDS[name])} not shown")
    if len(small) == 1:
        other = "negatives" if small[0] == "positives" else "positives"
        hidden.add(other)
        reasons.append(f"{other} not shown: patients minus {other} would give the {small[0]}")
    return replace(m, **dict.fromkeys(hidden), suppressed=tuple(reasons))


def _check_min_cell(min_cell: int) -> None:
    if isinstance(min_cell, bool) or not isinstance(min_cell, int) or min_cell < 1:
        raise ValueError(f"evaluation.min_cell must be an integer >= 1, got {min_cell!r}")


def histogram_metrics(positives: Sequence[float], negatives: Sequence[float], *,
                      threshold: float, min_cell: int) -> ClinicalMetrics:
    """One site's metrics from its released histograms ([BINS] counts each, ascending score, as in
    the reply's histogram-positive / histogram-negative), suppressed with k = min_cell.
    Raises ValueError for a histogram of the wrong length or with a non-finite cell, a threshold
    outside (0, 1) or a min_cell below 1."""
    _check_min_cell(min_cell)
    edge, snapped = snap_threshold(threshold)
    pos = np.maximum(_cells(positives, "histogram-positive"), 0.0)
    neg = np.maximum(_cells(negatives, "histogram-negative"), 0.0)
    return _suppress(_unsuppressed(pos, neg, edge, snapped), min_cell)


def pooled_metrics(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], *,
                   threshold: float, min_cell: int) -> ClinicalMetrics:
    """The metrics of all sites' patients as if one site: the sites' (positives, negatives)
    histograms are summed cell by cell (raw, then clamped once, so noise partly cancels), then
    computed and suppressed as histogram_metrics does; in addition a count is null where the same
    count of some site is null. Raises ValueError for no sites or as histogram_metrics does."""
    if not pairs:
        raise ValueError("no site histograms to pool")
    sites = [histogram_metrics(p, n, threshold=threshold, min_cell=min_cell) for p, n in pairs]
    pos = sum((_cells(p, "histogram-positive") for p, _ in pairs), np.zeros(BINS))
    neg = sum((_cells(n, "histogram-negative") for _, n in pairs), np.zeros(BINS))
    pooled = histogram_metrics(pos, neg, threshold=threshold, min_cell=min_cell)
    given_back = [name for name in _COUNTS
                  if getattr(pooled, name) is not None and any(getattr(s, name) is None for s in sites)]
    if not given_back:
        return pooled
    reason = (f"{', '.join(given_back)} not shown: the pooled count minus the other sites' counts would "
              "give back a site's suppressed count")
    return replace(pooled, **dict.fromkeys(given_back), suppressed=(*pooled.suppressed, reason))
