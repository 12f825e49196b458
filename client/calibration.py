"""Recalibration fitted at the site on its own validation patients: Platt scaling (Platt 1999,
"Probabilistic outputs for support vector machines"; the logistic recalibration of Cox 1958),
p = sigmoid(slope x logit + intercept), with the (slope, intercept) that minimise the binary
cross-entropy on the validation split. Temperature scaling (Guo et al. 2017, section 4.2) is the
special case intercept = 0, slope = 1/T; the intercept is needed here because sites differ in
prevalence (non-IID), which one global model cannot match at every site. A positive slope
reorders nothing, so AUROC and AUPRC are unchanged. It never sees a training patient and
releases nothing by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

SLOPE_BOUNDS = (0.01, 100.0)   # a slope outside this range means the model's scores carry no usable scale
INTERCEPT_BOUNDS = (-20.0, 20.0)


@dataclass(frozen=True)
class Recalibration:
    """p = sigmoid(slope * logit + intercept); the identity is slope 1, intercept 0."""

    slope: float = 1.0
    intercept: float = 0.0

    @property
    def temperature(self) -> float:
        """1 / slope: the temperature this slope corresponds to."""
        return 1.0 / self.slope

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """[N] logits -> [N] float64 recalibrated probabilities (NaN stays NaN)."""
        z = self.slope * np.asarray(logits, dtype=np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))


def _nll(params: np.ndarray, labels: np.ndarray, logits: np.ndarray) -> tuple[float, np.ndarray]:
    z = params[0] * logits + params[1]
    loss = np.logaddexp(0.0, z) - labels * z  # -[y log s(z) + (1 - y) log(1 - s(z))], stable
    residual = 1.0 / (1.0 + np.exp(-z)) - labels
    return float(loss.mean()), np.array([np.mean(residual * logits), np.mean(residual)])


def fit_recalibration(labels: np.ndarray, logits: np.ndarray) -> Recalibration:
    """The Recalibration minimising the mean BCE on ([N] 0/1 labels, [N] logits), by L-BFGS-B
    (scipy) within SLOPE_BOUNDS and INTERCEPT_BOUNDS. The identity when there is nothing to fit
    (no patient, a single class or a non-finite logit). Raises nothing."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    if len(z) == 0 or len(set(y.tolist())) < 2 or not np.isfinite(z).all():
        return Recalibration()
    best = minimize(_nll, np.array([1.0, 0.0]), args=(y, z), jac=True, method="L-BFGS-B",
                    bounds=[SLOPE_BOUNDS, INTERCEPT_BOUNDS])
    return Recalibration(float(best.x[0]), float(best.x[1]))
