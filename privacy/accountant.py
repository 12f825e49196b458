"""One accountant both calibrates the noise multiplier and reports epsilon.

The whole state of a site's accounting is its history: (noise_multiplier, sample_rate, steps)
entries of the Poisson-subsampled Gaussian mechanism. A DP-SGD round is `steps` entries at
sample rate q; a DP release of validation counts (sensitivity 1) is the Gaussian mechanism, i.e.
q = 1 and one step. The guarantee is sample-level (add/remove one record) (epsilon, delta)-DP.

Composition is commutative, so entries with the same (noise_multiplier, sample_rate) are merged
wherever they sit in the history: a dataset's lifetime costs one term per distinct mechanism.

Accountants (Opacus 1.6):
- "prv": privacy random variables (Gopi et al., NeurIPS 2021, arXiv:2106.02848), the tight
  numerical bound. Its result is eps_upper, an upper bound that includes the discretisation
  error `eps_error`; fedclinic asks for eps_error = max(0.01, 0.1 % of the expected epsilon), so
  large histories stay fast (the grid size grows with epsilon / eps_error) and stay bounds.
  PRV cannot compute some tiny deltas ("Floating point errors will dominate", Opacus; see
  microsoft/prv_accountant#17): those histories are reported with RDP instead, a valid, looser
  bound, and the fallback is logged.
- "rdp": Renyi DP (Mironov et al. 2019) with Opacus' orders and conversion.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from privacy.mechanism import MechanismUse

if TYPE_CHECKING:
    from privacy.accounting_cache import AccountingCache

ACCOUNTANTS = ("prv", "rdp")
MIN_EPS_ERROR = 0.01       # Opacus' default PRV eps_error
REL_EPS_ERROR = 0.001      # ... grown to 0.1 % of the expected epsilon beyond epsilon 10
_PRV_FAILURES = (ValueError, FloatingPointError, OverflowError, MemoryError)
__all__ = ["ACCOUNTANTS", "MechanismUse", "calibrate_noise", "epsilon_spent", "fit_sigma", "merge", "smallest_sigma"]
log = logging.getLogger("fedclinic.privacy")


def merge(history: Iterable[MechanismUse]) -> list[MechanismUse]:
    """Entries with the same (noise_multiplier, sample_rate) summed into one, first-seen order;
    entries with no steps dropped. Composition is commutative, so epsilon is unchanged."""
    steps: dict[tuple[float, float], int] = {}
    for h in history:
        if h.steps > 0:
            key = (h.noise_multiplier, h.sample_rate)
            steps[key] = steps.get(key, 0) + h.steps
    return [MechanismUse(s, q, n) for (s, q), n in steps.items()]


def _epsilon(history: Sequence[MechanismUse], delta: float, accountant: str, eps_error: float,
             cache: AccountingCache | None = None) -> float:
    if cache is not None:  # the same arithmetic, the per-mechanism RDP curves kept (privacy/accounting_cache.py)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cache.epsilon(history, delta, accountant, eps_error)
    from opacus.accountants import create_accountant  # Opacus: seconds to import, only when accounting
    acc = create_accountant(mechanism=accountant)
    acc.history = [(h.noise_multiplier, h.sample_rate, h.steps) for h in history]
    with warnings.catch_warnings():  # RDP's "optimal order is the largest alpha"; PRV's log(0) at q = 1
        warnings.simplefilter("ignore")
        if accountant == "prv":
            return float(acc.get_epsilon(delta=delta, eps_error=eps_error))
        return float(acc.get_epsilon(delta=delta))


def epsilon_spent(history: Sequence[MechanismUse], delta: float, accountant: str,
                  *, magnitude: float | None = None, cache: AccountingCache | None = None) -> float:
    """Epsilon of the composed history at `delta` (0 for an empty history).

    `magnitude`: the epsilon the caller expects (a target or a cap), used to size PRV's
    discretisation error; the result is an upper bound whatever it is. `cache`: a process's
    AccountingCache, which returns the same value faster when the history's mechanisms were seen
    before. Raises ValueError for an unknown accountant or a delta outside (0, 1).
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    merged = merge(history)
    if not merged:
        return 0.0
    if accountant == "rdp":
        return _epsilon(merged, delta, "rdp", 0.0, cache)
    eps_error = max(MIN_EPS_ERROR, REL_EPS_ERROR * (magnitude or 0.0))
    try:
        value = _epsilon(merged, delta, "prv", eps_error, cache)
        if math.isfinite(value):
            return value
    except _PRV_FAILURES as exc:
        log.warning("the PRV accountant cannot compute this history at delta %g (%s); epsilon is "
                    "reported with RDP, a valid but looser bound", delta, exc)
    return _epsilon(merged, delta, "rdp", 0.0, cache)


def _pld_epsilon(history: Sequence[MechanismUse], delta: float) -> float:
    """Google dp-accounting's privacy-loss-distribution epsilon (connect-the-dots, pessimistic):
    the same curve PRV bounds, 5-20x faster, so it drives the calibration search."""
    import dp_accounting
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
    acc = PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-3)
    for h in merge(history):
        gaussian = dp_accounting.GaussianDpEvent(h.noise_multiplier)
        event = gaussian if h.sample_rate >= 1 else dp_accounting.PoissonSampledDpEvent(h.sample_rate, gaussian)
        acc.compose(dp_accounting.SelfComposedDpEvent(event, h.steps))
    return float(acc.get_epsilon(delta))


def smallest_sigma(fits: Callable[[float], bool], start: float, *, tolerance: float = 1.005,
                   ceiling: float = 1e4) -> float:
    """The smallest noise multiplier (to `tolerance`, a ratio) for which the monotone test `fits`
    holds, searched outward from `start` in growing steps (1 %, 5 %, then 25 %), then by bisection
    on log(sigma). Raises ArithmeticError when not even `ceiling` fits."""
    steps = iter((1.01, 1.05))
    low = high = start
    if fits(high):
        while low > 1e-3:
            low = low / next(steps, 1.25)
            if not fits(low):
                break
            high = low
    else:
        while not fits(high):
            if high >= ceiling:
                raise ArithmeticError(f"no noise multiplier up to {ceiling:g} fits")
            low, high = high, min(high * next(steps, 1.25), ceiling)
    while high / low > tolerance:
        mid = math.sqrt(low * high)
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


def fit_sigma(history: Callable[[float], Sequence[MechanismUse]], *, delta: float, epsilon: float,
              accountant: str, start: float = 1.0, ceiling: float = 1e4,
              cache: AccountingCache | None = None) -> float:
    """The smallest sigma (to 0.2 %) with epsilon_spent(history(sigma)) <= `epsilon` under
    `accountant`. The search runs on Google dp-accounting's PLD (the same privacy curve, 5-20x
    faster), then the answer is checked, and raised until it holds, with `accountant` itself: the
    result always satisfies the accountant that reports it. Raises ArithmeticError if none fits."""
    try:
        start = smallest_sigma(lambda s: _pld_epsilon(history(s), delta) <= epsilon, start, tolerance=1.001,
                               ceiling=ceiling)
    except (ArithmeticError, ValueError, FloatingPointError):
        pass  # the site's accountant alone decides
    return smallest_sigma(lambda s: epsilon_spent(history(s), delta, accountant, magnitude=epsilon,
                                                  cache=cache) <= epsilon,
                          start, tolerance=1.002, ceiling=ceiling)


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str, extra: Sequence[MechanismUse] = (),
                    cache: AccountingCache | None = None) -> float:
    """The smallest noise multiplier (to 0.2 %) whose `steps` at `sample_rate`, composed with the
    fixed `extra` releases, spend at most `target_epsilon` at `delta` under `accountant`.

    Raises ValueError for steps < 1 or a sample rate outside (0, 1], ArithmeticError when the
    `extra` releases alone use the target.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if extra and epsilon_spent(extra, delta, accountant, magnitude=target_epsilon, cache=cache) >= target_epsilon:
        raise ArithmeticError(f"the other releases alone spend more than epsilon {target_epsilon}")
    start = _gdp_start(target_epsilon, delta, sample_rate, steps, extra)
    return fit_sigma(lambda s: [MechanismUse(s, sample_rate, steps), *extra], delta=delta,
                     epsilon=target_epsilon, accountant=accountant, start=start, cache=cache)


def _gdp_mu(epsilon: float, delta: float) -> float:
    """The mu of mu-GDP whose (epsilon, delta) curve meets `delta` at `epsilon` (Dong, Roth and Su
    2019, Corollary 2.13: delta = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)), by bisection."""
    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def gdp_delta(mu: float) -> float:
        return phi(-epsilon / mu + mu / 2) - math.exp(epsilon) * phi(-epsilon / mu - mu / 2)

    low, high = 1e-6, 1.0
    while gdp_delta(high) < delta and high < 1e4:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if gdp_delta(mid) < delta else (low, mid)
    return low


def _gdp_start(epsilon: float, delta: float, sample_rate: float, steps: int, extra: Sequence[MechanismUse]) -> float:
    """A starting sigma for the search, from the central limit theorem of Bu et al. (2020, "Deep
    learning with Gaussian differential privacy"): T steps at (sigma, q) are about mu-GDP with
    mu = q sqrt(T (e^(1/sigma^2) - 1)), and mu^2 adds up over entries. Only a start: the
    accountants decide (GDP is not an upper bound, dp-opacus notes)."""
    def mu_squared(h: MechanismUse) -> float:
        return h.sample_rate ** 2 * h.steps * math.expm1(min(1 / h.noise_multiplier ** 2, 700.0))

    room = _gdp_mu(epsilon, delta) ** 2 - sum(mu_squared(h) for h in merge(extra))
    if room <= 0:
        return 10.0
    return 1 / math.sqrt(math.log1p(room / (sample_rate ** 2 * steps)))
