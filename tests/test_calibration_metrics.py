"""The test-split metrics bench/quality.py reports (AUPRC, Brier, ECE) and the site's recalibration."""

from __future__ import annotations

import numpy as np
import pytest

from client.calibration import Recalibration, fit_recalibration
from client.metrics import auroc, average_precision, brier_score, expected_calibration_error


def test_average_precision_counted_by_hand_with_a_tie() -> None:
    # scores 0.9 (+), 0.8 (-), 0.7 and 0.7 tied (+, -), 0.1 (+): thresholds at 0.9, 0.8, 0.7, 0.1
    y = np.array([1, 0, 1, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.7, 0.1])
    # recall steps 1/3 at P 1/1, 0 at P 1/2, 1/3 at P 2/4, 1/3 at P 3/5
    assert average_precision(y, s) == pytest.approx((1 + 2 / 4 + 3 / 5) / 3)
    assert average_precision(np.zeros(3), s[:3]) is None


def test_brier_and_ece_of_a_perfectly_and_a_badly_calibrated_model() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    assert expected_calibration_error(y, p) < 0.005
    assert brier_score(y, p) == pytest.approx(1 / 6, abs=0.003)  # E[p(1 - p)] for p ~ U(0, 1)
    # everyone predicted 0.9 while half are positive: ECE 0.4, Brier 0.5 * 0.01 + 0.5 * 0.81
    half = np.r_[np.ones(500), np.zeros(500)]
    assert expected_calibration_error(half, np.full(1000, 0.9)) == pytest.approx(0.4)
    assert brier_score(half, np.full(1000, 0.9)) == pytest.approx(0.41)


def test_recalibration_recovers_the_slope_and_intercept_that_generated_the_labels() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(scale=3.0, size=100_000)
    y = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-(0.4 * z - 1.0)))).astype(float)
    fitted = fit_recalibration(y, z)
    assert fitted.slope == pytest.approx(0.4, abs=0.02) and fitted.intercept == pytest.approx(-1.0, abs=0.03)
    before = expected_calibration_error(y, 1 / (1 + np.exp(-z)))
    after = expected_calibration_error(y, fitted.probabilities(z))
    assert before > 0.1 and after < 0.01
    assert auroc(y, fitted.probabilities(z)) == pytest.approx(auroc(y, z))  # a positive slope reorders nothing


@pytest.mark.parametrize("labels, logits", [(np.ones(10), np.linspace(-1, 1, 10)), (np.zeros(0), np.zeros(0)),
                                            (np.r_[0, 1, 0], np.array([0.0, np.nan, 1.0]))])
def test_nothing_to_fit_gives_the_identity(labels: np.ndarray, logits: np.ndarray) -> None:
    assert fit_recalibration(labels, logits) == Recalibration(1.0, 0.0)


def test_a_diverged_model_gives_nan_metrics_not_a_crash() -> None:
    y = np.array([0, 1, 1, 0])
    assert np.isnan(expected_calibration_error(y, np.array([0.1, np.nan, 0.8, 0.3])))
    assert np.isnan(average_precision(y, np.array([0.1, np.nan, 0.8, 0.3])))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(y, np.array([0.1, 1.5, 0.8, 0.3]))
