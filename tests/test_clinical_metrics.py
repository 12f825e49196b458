"""Clinical metrics from released score histograms: hand-computed cases, small-cell suppression,
pooling as one site, noisy (negative) cells, and agreement with the site's binned AUROC and with
per-patient computations (sklearn's when it is installed; it is not a dependency)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from client.metrics import auroc as exact_auroc
from client.score_bins import BINS, CENTRES, EDGES, sigmoid
from client.validation_release import ValidationRelease, bin_counts, binned_metrics
from server.clinical_metrics import (ClinicalMetrics, centre_error_bounds, histogram_metrics, pooled_metrics,
                                     snap_threshold)

K = 10


def cells(**bins: float) -> list[float]:
    """[BINS] counts from keyword bins, e.g. cells(b0=3, b9=4)."""
    out = [0.0] * BINS
    for name, count in bins.items():
        out[int(name[1:])] = float(count)
    return out


def metrics(pos: list[float], neg: list[float], threshold: float = 0.5, min_cell: int = K) -> ClinicalMetrics:
    return histogram_metrics(pos, neg, threshold=threshold, min_cell=min_cell)


def test_perfect_separation_gives_auroc_auprc_sensitivity_specificity_one() -> None:
    m = metrics(cells(b9=20), cells(b0=30))
    assert (m.patients, m.positives, m.negatives) == (50, 20, 30)
    assert (m.auroc, m.auprc, m.sensitivity, m.specificity) == (1.0, 1.0, 1.0, 1.0)
    assert m.threshold == 0.5 and m.suppressed == ()


def test_everyone_in_one_bin_is_chance() -> None:
    """One bin: every pair tied (AUROC 1/2); the only threshold calls everyone: AP = prevalence."""
    m = metrics(cells(b4=15), cells(b4=25))
    assert m.auroc == 0.5 and m.auprc == pytest.approx(15 / 40)
    assert (m.sensitivity, m.specificity) == (0.0, 1.0)   # bin 4 is (-1.5, 0]: below 0.5


def test_hand_computed_auroc_auprc_and_threshold_counts() -> None:
    """Positives: 10 in bin 9, 10 in bin 5; negatives: 10 in bin 5, 20 in bin 0.
    AUROC = (10*30 + 10*(20 + 10/2)) / (20*30) = 11/12. Calling bin 9: precision 1 at recall 1/2;
    calling bins 5..9: precision 20/30 at recall 1, so AP = 1/2 * 1 + 1/2 * 2/3 = 5/6."""
    m = metrics(cells(b9=10, b5=10), cells(b5=10, b0=20))
    assert m.auroc == pytest.approx(11 / 12) and m.auprc == pytest.approx(5 / 6)
    assert (m.sensitivity, m.specificity) == (1.0, pytest.approx(20 / 30))   # bin 5 is (0, 1.5]: above 0.5


def test_sensitivity_and_specificity_at_half_counted_by_hand() -> None:
    pos = [1, 1, 2, 2, 4, 5, 5, 10, 10, 10]   # 50; bins 5..9 are above 0.5: 40
    neg = [10, 10, 10, 8, 7, 3, 1, 1, 0, 0]   # 50; bins 0..4 are at most 0.5: 45
    m = metrics(pos, neg)
    assert (m.sensitivity, m.specificity) == (pytest.approx(0.8), pytest.approx(0.9))
    higher = metrics(pos, neg, threshold=0.9)   # logit 2.20: nearest edge 1.5, bins 6..9 called
    assert higher.threshold == pytest.approx(sigmoid(1.5))
    assert (higher.sensitivity, higher.specificity) == (pytest.approx(35 / 50), pytest.approx(48 / 50))


@pytest.mark.parametrize(("threshold", "edge"), [(0.5, 0.0), (0.6, 0.0), (0.7, 1.5), (0.3, -1.5),
                                                 (0.999, 6.0), (0.001, -6.0)])
def test_threshold_snaps_to_the_nearest_edge_in_logit(threshold: float, edge: float) -> None:
    j, snapped = snap_threshold(threshold)
    assert EDGES[j] == edge and snapped == sigmoid(edge)
    assert snap_threshold(0.5)[1] == 0.5   # exactly


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, float("nan")])
def test_threshold_outside_zero_one_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="evaluation.threshold"):
        metrics(cells(b9=20), cells(b0=30), threshold=threshold)


def test_bins_whose_positive_rate_is_their_centre_have_no_calibration_error() -> None:
    """ECE 0, and the Brier score is then the mean of c (1 - c) (calibrated: refinement only)."""
    c, per_bin = sigmoid(CENTRES), np.array([100, 300, 500, 800, 1000, 1000, 800, 500, 300, 100.0])
    m = metrics((c * per_bin).tolist(), ((1 - c) * per_bin).tolist())
    assert m.ece == pytest.approx(0.0, abs=1e-12)
    assert m.brier == pytest.approx(float((per_bin * c * (1 - c)).sum() / per_bin.sum()))
    off = metrics(cells(b4=20), cells(b4=20))   # rate 1/2 at centre 0.321
    assert off.ece == pytest.approx(0.5 - sigmoid(CENTRES[4]))


def test_brier_and_ece_from_centres_are_within_their_bounds_of_the_true_values() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        scores = sigmoid(rng.normal(rng.normal(0, 2), rng.uniform(0.5, 4), size=400))
        labels = (rng.uniform(size=400) < scores ** rng.uniform(0.5, 2)).astype(float)
        pos, neg = bin_counts(labels, scores)
        m, (brier_bound, ece_bound) = metrics(pos.tolist(), neg.tolist(), min_cell=1), centre_error_bounds(pos, neg)
        cell = np.searchsorted(EDGES, np.log(scores) - np.log1p(-scores))
        true_ece = sum(abs(labels[cell == i].sum() - scores[cell == i].sum()) for i in range(BINS)) / 400
        assert abs(m.brier - np.mean((labels - scores) ** 2)) <= brier_bound + 1e-12
        assert abs(m.ece - true_ece) <= ece_bound + 1e-12
    assert max(centre_error_bounds([0, 0, 0, 0, 0, 1, 0, 0, 0, 0], [0] * 10)) < 0.22


def test_fewer_patients_than_min_cell_shows_nothing() -> None:
    m = metrics(cells(b9=4), cells(b0=5))
    assert all(v is None for k, v in m.as_dict().items() if k not in ("threshold", "suppressed"))
    assert m.suppressed == ("patients below evaluation.min_cell (10): no count or metric shown",)
    assert m.threshold == 0.5


def test_few_positives_hide_them_the_metrics_that_need_them_and_the_complementary_count() -> None:
    m = metrics(cells(b9=9), cells(b0=40, b5=10))
    assert m.patients == 59 and m.positives is None and m.negatives is None
    assert m.auroc is m.auprc is m.sensitivity is None
    assert m.specificity == pytest.approx(0.8) and m.brier is not None and m.ece is not None
    assert m.suppressed[0].startswith("positives below evaluation.min_cell (10)")
    assert "patients minus negatives" in m.suppressed[1]


def test_few_negatives_hide_specificity_and_both_small_hide_both_sides() -> None:
    few_neg = metrics(cells(b9=40), cells(b0=3))
    assert few_neg.specificity is few_neg.auroc is few_neg.auprc is few_neg.positives is None
    assert few_neg.sensitivity == 1.0 and few_neg.suppressed[0].startswith("negatives below")
    both = metrics(cells(b9=6), cells(b0=6))
    assert (both.patients, both.positives, both.negatives, both.sensitivity, both.specificity) == (12, None, None,
                                                                                                   None, None)
    assert both.brier is not None and len(both.suppressed) == 2


def test_a_count_of_exactly_min_cell_is_shown() -> None:
    m = metrics(cells(b9=10), cells(b0=10))
    assert (m.positives, m.negatives, m.auroc, m.suppressed) == (10, 10, 1.0, ())
    assert metrics(cells(b9=10), cells(b0=10), min_cell=11).positives is None


def test_pooled_is_one_site_with_the_summed_cells() -> None:
    rng = np.random.default_rng(0)
    sites = [(rng.integers(2, 30, BINS).astype(float).tolist(), rng.integers(2, 30, BINS).astype(float).tolist())
             for _ in range(3)]
    pooled = pooled_metrics(sites, threshold=0.7, min_cell=K)
    combined = metrics(np.sum([p for p, _ in sites], axis=0).tolist(), np.sum([n for _, n in sites], axis=0).tolist(),
                       threshold=0.7)
    assert pooled == combined and pooled.suppressed == ()
    assert pooled.patients == sum(metrics(p, n).patients for p, n in sites)


def test_pooled_counts_hide_what_a_suppressed_site_would_give_back_but_keep_the_metrics() -> None:
    big, small_positives = (cells(b9=30, b5=10), cells(b0=40)), (cells(b9=3), cells(b0=20))
    pooled = pooled_metrics([big, small_positives], threshold=0.5, min_cell=K)
    assert pooled.patients == 103 and pooled.positives is None and pooled.negatives is None
    assert pooled.auroc == metrics(cells(b9=33, b5=10), cells(b0=60)).auroc == 1.0
    assert "would give back a site's suppressed count" in pooled.suppressed[-1]
    tiny = pooled_metrics([big, (cells(b9=2), cells(b0=2))], threshold=0.5, min_cell=K)
    assert (tiny.patients, tiny.positives, tiny.negatives) == (None, None, None) and tiny.auroc == 1.0


def test_negative_noisy_cells_count_as_zero() -> None:
    noisy = metrics(cells(b9=20.4, b3=-1.7, b0=-0.6), cells(b0=30.2, b8=-2.5, b6=0.4))
    clean = metrics(cells(b9=20.4), cells(b0=30.2, b6=0.4))
    assert noisy == clean
    assert (noisy.positives, noisy.negatives, noisy.patients) == (20, 31, 51)   # 20.4 -> 20, 30.6 -> 31
    assert 0.0 <= noisy.auroc <= 1.0 and 0.0 <= noisy.auprc <= 1.0


def test_pooling_sums_noisy_cells_before_clamping() -> None:
    """Noise partly cancels across sites: a -1 and a +1 in the same cell pool to 0."""
    a, b = (cells(b9=20, b2=-1.0), cells(b0=20)), (cells(b9=20, b2=1.0), cells(b0=20))
    assert pooled_metrics([a, b], threshold=0.5, min_cell=K) == metrics(cells(b9=40), cells(b0=40))


def test_auroc_and_counts_agree_with_the_sites_binned_metrics() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        pos, neg = rng.integers(0, 40, BINS).astype(float), rng.integers(0, 40, BINS).astype(float)
        site = binned_metrics(ValidationRelease(tuple(pos), tuple(neg), 0.0))
        m = metrics(pos.tolist(), neg.tolist(), min_cell=1)
        assert m.auroc == pytest.approx(site.auroc, abs=1e-12)
        assert (m.patients, m.positives) == (site.patients, site.positives)


def _patients(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-patient labels and scores (each patient at its bin's centre) from exact counts."""
    counts = np.concatenate([pos, neg]).astype(int)
    scores = np.repeat(np.concatenate([CENTRES, CENTRES]), counts)
    return np.repeat(np.r_[np.ones(BINS), np.zeros(BINS)], counts), scores


def _average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Per patient: mean over positives of the precision among those scoring at least as high."""
    return float(np.mean([labels[scores >= s].mean() for s in scores[labels == 1]]))


def test_auroc_and_auprc_equal_the_per_patient_values_at_the_bin_centres() -> None:
    rng = np.random.default_rng(2)
    for _ in range(30):
        pos, neg = rng.integers(0, 25, BINS) * (rng.uniform(size=BINS) < 0.7), rng.integers(1, 25, BINS)
        labels, scores = _patients(pos, neg)
        m = metrics(pos.tolist(), neg.tolist(), min_cell=1)
        assert m.auroc == pytest.approx(exact_auroc(labels, scores), abs=1e-12)
        assert m.auprc == pytest.approx(_average_precision(labels, scores), abs=1e-12)
        called = scores > EDGES[4]
        assert m.sensitivity == pytest.approx(called[labels == 1].mean())
        assert m.specificity == pytest.approx((~called)[labels == 0].mean())


def test_auroc_and_auprc_equal_sklearns() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    for _ in range(30):
        pos, neg = rng.integers(0, 25, BINS), rng.integers(0, 25, BINS)
        pos[rng.integers(BINS)] += 1
        neg[rng.integers(BINS)] += 1
        labels, scores = _patients(pos, neg)
        m = metrics(pos.tolist(), neg.tolist(), min_cell=1)
        assert m.auroc == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
        assert m.auprc == pytest.approx(sklearn_metrics.average_precision_score(labels, scores), abs=1e-12)
        assert m.brier == pytest.approx(sklearn_metrics.brier_score_loss(labels, sigmoid(scores)), abs=1e-12)


def test_the_json_form_is_summary_m() -> None:
    m = metrics(cells(b9=9), cells(b0=40))
    form = json.loads(json.dumps(m.as_dict()))
    assert list(form) == ["patients", "positives", "negatives", "auroc", "auprc", "brier", "ece",
                          "sensitivity", "specificity", "threshold", "suppressed"]
    assert form["positives"] is None and isinstance(form["suppressed"], list) and form["threshold"] == 0.5


@pytest.mark.parametrize(("pos", "message"), [([1.0] * 9, "expected 10 cells"), ([float("nan")] * 10, "finite")])
def test_malformed_histograms_are_refused_by_name(pos: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=f"histogram-positive: .*{message}"):
        metrics(pos, cells(b0=30))
    with pytest.raises(ValueError, match="no site histograms"):
        pooled_metrics([], threshold=0.5, min_cell=K)
    with pytest.raises(ValueError, match="evaluation.min_cell"):
        metrics(cells(b9=20), cells(b0=30), min_cell=0)


def test_the_coordinators_module_imports_without_torch() -> None:
    code = "import sys, server.clinical_metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
