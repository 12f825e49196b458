"""`fedclinic privacy plan`: the noise a run needs, and the ε it will have spent after each round."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from privacy.accountant import MechanismUse, epsilon_spent
from privacy.planning import plan_noise, poisson_schedule


@dataclass(frozen=True)
class PlannedRound:
    """ε after `round` rounds of the plan."""

    round: int
    steps: int
    epsilon: float


@dataclass(frozen=True)
class PrivacyPlan:
    """A whole run's DP-SGD plan for one site."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    delta: float
    accountant: str
    target_epsilon: float | None
    rounds: tuple[PlannedRound, ...]


def make_plan(*, dataset_size: int, batch_size: int, local_epochs: int, rounds: int, delta: float,
              accountant: str, target_epsilon: float | None = None, sigma: float | None = None) -> PrivacyPlan:
    """Calibrate σ to `target_epsilon` (or take `sigma`) and list ε after every round."""
    if (target_epsilon is None) == (sigma is None):
        raise ValueError("give exactly one of a target epsilon or a noise multiplier (sigma)")
    schedule = poisson_schedule(dataset_size, batch_size)
    per_round = schedule.steps * local_epochs
    if sigma is None:
        sigma = plan_noise(num_examples=dataset_size, batch_size=batch_size, local_epochs=local_epochs,
                           rounds=rounds, target_epsilon=float(target_epsilon), delta=delta,
                           accountant=accountant).noise_multiplier
    q = schedule.sample_rate
    rows = tuple(PlannedRound(r, r * per_round, epsilon_spent([MechanismUse(sigma, q, r * per_round)], delta, accountant))
                 for r in range(1, rounds + 1))
    return PrivacyPlan(sigma, q, per_round, delta, accountant, target_epsilon, rows)


def plan_json(plan: PrivacyPlan) -> dict[str, Any]:
    """The plan as plain JSON-ready data."""
    return asdict(plan)
