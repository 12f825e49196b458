"""Noise planned once for a site's whole run: rounds x local epochs of Poisson-sampled steps, the
run's other releases (DP validation metrics), and what the dataset's lifetime budget still allows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from privacy.accountant import calibrate_noise, epsilon_spent, fit_sigma
from privacy.mechanism import MechanismUse

if TYPE_CHECKING:
    from privacy.accounting_cache import AccountingCache

MAX_NOISE_MULTIPLIER = 100.0  # beyond this a round teaches the model nothing: the budget is spent
SIGMA_GRID = 1.01             # planned noise multipliers are rounded UP to powers of this ratio


def on_grid(sigma: float) -> float:
    """`sigma` rounded up to the next power of SIGMA_GRID (at most 1 % more noise): runs planned
    alike share a (sigma, q) entry, so a dataset's lifetime composes few distinct mechanisms and
    its accounting stays fast however many runs it sees."""
    return SIGMA_GRID ** math.ceil(math.log(sigma, SIGMA_GRID) - 1e-9)


class BudgetExhausted(ArithmeticError):
    """No useful noise multiplier lets the planned run fit its budget: `lifetime` True when the
    dataset's lifetime budget is what is missing, False when the run's own target is too small."""

    def __init__(self, message: str, *, lifetime: bool) -> None:
        super().__init__(message)
        self.lifetime = lifetime


@dataclass(frozen=True)
class NoisePlan:
    """What a site commits to for one run."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_steps: int


@dataclass(frozen=True)
class LifetimeBudget:
    """The dataset's lifetime account: the spends that count, its delta and its cap."""

    history: Sequence[MechanismUse]
    delta: float
    cap: float


@dataclass(frozen=True)
class PoissonSchedule:
    """One epoch of Opacus' Poisson loader over N examples at expected batch size B."""

    batches: int        # K = ceil(N / B): the plain loader's length
    sample_rate: float  # q = 1 / K, each example's inclusion probability per step
    steps: int          # int(1 / q): the Poisson loader's length (K - 1 for some K: float division)


def poisson_schedule(num_examples: int, batch_size: int) -> PoissonSchedule:
    """Exactly what opacus.data_loader.DPDataLoader.from_data_loader does: sample rate
    1 / len(loader) and len(sampler) = int(1 / sample_rate). ValueError for N < 1 or B < 1."""
    if num_examples < 1:
        raise ValueError("cannot plan DP training on an empty training split")
    if batch_size < 1:
        raise ValueError(f"the expected batch size must be >= 1 (got {batch_size})")
    batches = math.ceil(num_examples / batch_size)
    sample_rate = 1 / batches
    return PoissonSchedule(batches, sample_rate, int(1 / sample_rate))


def plan_noise(*, num_examples: int, batch_size: int, local_epochs: int, rounds: int,
               target_epsilon: float, delta: float, accountant: str, prior: Sequence[MechanismUse] = (),
               extra: Sequence[MechanismUse] = (), lifetime: LifetimeBudget | None = None,
               min_noise_multiplier: float = 0.0, cache: AccountingCache | None = None) -> NoisePlan:
    """Calibrate sigma so that all planned rounds, with what the run already released (`prior`)
    and its planned `extra` releases, spend at most target_epsilon at `delta`, and (if given)
    keep the lifetime account (whose history includes `prior`) within its cap.

    `cache`: a process's AccountingCache (the same result, faster). Raises BudgetExhausted when
    even MAX_NOISE_MULTIPLIER would not fit (the extra releases or the
    lifetime history already use the budget), ValueError for an empty split or a bad batch size.
    """
    schedule = poisson_schedule(num_examples, batch_size)
    sample_rate = schedule.sample_rate
    per_round = schedule.steps * local_epochs
    planned = per_round * rounds
    try:
        sigma = calibrate_noise(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate,
                                steps=planned, accountant=accountant, extra=[*prior, *extra], cache=cache)
    except ArithmeticError as exc:
        raise BudgetExhausted(str(exc), lifetime=False) from exc
    if sigma > MAX_NOISE_MULTIPLIER:
        raise BudgetExhausted(f"{planned} steps within epsilon {target_epsilon} need a noise multiplier above "
                              f"{MAX_NOISE_MULTIPLIER:g}: no useful run; fewer steps or a larger epsilon",
                              lifetime=False)
    sigma = max(sigma, min_noise_multiplier)
    if lifetime is not None:
        run = MechanismUse(on_grid(sigma), sample_rate, planned)
        sigma = _fit_lifetime(run, extra, lifetime, accountant, cache)
    return NoisePlan(on_grid(sigma), sample_rate, per_round, planned)


def _fit_lifetime(run: MechanismUse, extra: Sequence[MechanismUse], budget: LifetimeBudget,
                  accountant: str, cache: AccountingCache | None = None) -> float:
    """The smallest sigma >= run's (to 0.2 %) with which the whole run fits the lifetime cap;
    BudgetExhausted when even MAX_NOISE_MULTIPLIER does not."""
    def history(sigma: float) -> list[MechanismUse]:
        return [*budget.history, MechanismUse(sigma, run.sample_rate, run.steps), *extra]

    def fits(sigma: float) -> bool:
        return epsilon_spent(history(sigma), budget.delta, accountant, magnitude=budget.cap, cache=cache) <= budget.cap

    if fits(run.noise_multiplier):
        return run.noise_multiplier
    if not fits(MAX_NOISE_MULTIPLIER):
        raise BudgetExhausted(f"the dataset's lifetime budget (epsilon {budget.cap}) leaves room only for noise "
                              f"multipliers above {MAX_NOISE_MULTIPLIER:g}: no useful run fits", lifetime=True)
    sigma = fit_sigma(history, delta=budget.delta, epsilon=budget.cap, accountant=accountant,
                      start=run.noise_multiplier, ceiling=MAX_NOISE_MULTIPLIER, cache=cache)
    return max(sigma, run.noise_multiplier)
