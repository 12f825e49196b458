"""One accountant both calibrates the noise multiplier and reports epsilon.

The whole state of a site's accounting is its history: (noise_multiplier, sample_rate, steps)
entries of the Poisson-subsampled Gaussian mechanism, in order. The guarantee is sample-level
(add/remove one record) (epsilon, delta)-DP for the site's training data.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

from opacus.accountants import create_accountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier

from privacy.mechanism import MechanismUse

ACCOUNTANTS = ("prv", "rdp")
__all__ = ["ACCOUNTANTS", "MechanismUse", "calibrate_noise", "epsilon_spent", "merge"]


def _accountant(name: str, history: Sequence[MechanismUse]) -> IAccountant:
    if name not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {name!r}")
    acc = create_accountant(mechanism=name)
    acc.history = [(h.noise_multiplier, h.sample_rate, h.steps) for h in history]
    return acc


def epsilon_spent(history: Sequence[MechanismUse], delta: float, accountant: str) -> float:
    """Epsilon of the composed history at `delta` (0 for an empty history)."""
    if not any(h.steps > 0 for h in history):
        return 0.0
    acc = _accountant(accountant, merge(h for h in history if h.steps > 0))  # same ε, fewer terms
    with warnings.catch_warnings():  # RDP's "optimal order is the largest alpha" is a tightness hint
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(acc.get_epsilon(delta=delta))


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str) -> float:
    """The smallest noise multiplier (to tolerance) whose epsilon after `steps` is <= target."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        sigma = float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                           sample_rate=sample_rate, steps=steps,
                                           accountant=accountant, epsilon_tolerance=0.01))
    spent = epsilon_spent([MechanismUse(sigma, sample_rate, steps)], delta, accountant)
    if spent > target_epsilon:  # never hand out a sigma the reporting accountant disputes
        raise ArithmeticError(f"calibrated sigma {sigma} gives epsilon {spent} > {target_epsilon}")
    return sigma


def merge(history: Iterable[MechanismUse]) -> list[MechanismUse]:
    """Merge consecutive entries with the same (noise_multiplier, sample_rate)."""
    out: list[MechanismUse] = []
    for h in history:
        if out and (out[-1].noise_multiplier, out[-1].sample_rate) == (h.noise_multiplier, h.sample_rate):
            out[-1] = MechanismUse(h.noise_multiplier, h.sample_rate, out[-1].steps + h.steps)
        else:
            out.append(h)
    return out
