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
    evaluation_noise_multiplier: float | None = None  # None: no DP evaluation planned


def make_plan(*, dataset_size: int, batch_size: int, local_epochs: int, rounds: int, delta: float,
              accountant: str, target_epsilon: float | None = None, sigma: float | None = None,
              evaluation_sigma: float | None = None) -> PrivacyPlan:
    """Calibrate σ to `target_epsilon` (or take `sigma`) and list ε after every round.

    `evaluation_sigma`: the site's validation.noise_multiplier when it answers one DP evaluation
    per round (its default release; each is a Gaussian mechanism with q = 1, one step, as
    client/site_round.py records it); None when it releases none. ε then covers both, as the site
    plans and records them.
    """
    if (target_epsilon is None) == (sigma is None):
        raise ValueError("give exactly one of a target epsilon or a noise multiplier (sigma)")
    schedule = poisson_schedule(dataset_size, batch_size)
    per_round = schedule.steps * local_epochs

    def evaluations(n: int) -> list[MechanismUse]:
        return [MechanismUse(evaluation_sigma, 1.0, n)] if evaluation_sigma is not None and n > 0 else []

    if sigma is None:
        sigma = plan_noise(num_examples=dataset_size, batch_size=batch_size, local_epochs=local_epochs,
                           rounds=rounds, target_epsilon=float(target_epsilon), delta=delta,
                           accountant=accountant, extra=evaluations(rounds)).noise_multiplier
    q = schedule.sample_rate
    rows = tuple(PlannedRound(r, r * per_round, epsilon_spent([MechanismUse(sigma, q, r * per_round),
                                                               *evaluations(r)], delta, accountant))
                 for r in range(1, rounds + 1))
    return PrivacyPlan(sigma, q, per_round, delta, accountant, target_epsilon, rows, evaluation_sigma)


def plan_json(plan: PrivacyPlan) -> dict[str, Any]:
    """The plan as plain JSON-ready data."""
    return asdict(plan)
