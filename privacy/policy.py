"""The site policy applied to the coordinator's request: tighten it, then admit or decline a round.

The coordinator asks for (target ε, δ, clipping norm); the site may only make that stricter.
Before each round the site projects the exact spend of the round (its noise multiplier, sampling
rate and number of steps are known in advance) onto its ledger and declines if the projection
would exceed the per-run ceiling or the dataset's lifetime budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from configs.schema import PrivacyConfig, PrivacyPolicy
from privacy.accountant import MechanismUse, epsilon_spent
from privacy.decline import LIFETIME_BUDGET, RUN_BUDGET, RoundDeclined

SLACK = 1e-9  # floating-point slack only; ε above the cap by more than this is refused


@dataclass(frozen=True)
class Terms:
    """The DP terms the site actually applies in this run."""

    run_epsilon: float
    delta: float
    max_grad_norm: float
    min_noise_multiplier: float
    accountant: str


def tighten(requested: PrivacyConfig, policy: PrivacyPolicy) -> Terms:
    """Never looser than the request, never looser than the policy."""
    ceiling = policy.run_epsilon if policy.run_epsilon is not None else requested.target_epsilon
    norm = requested.max_grad_norm if policy.max_grad_norm is None else min(requested.max_grad_norm,
                                                                            policy.max_grad_norm)
    return Terms(min(requested.target_epsilon, ceiling, policy.lifetime_epsilon),
                 min(requested.target_delta, policy.lifetime_delta), norm,
                 policy.min_noise_multiplier, requested.accountant)


@dataclass(frozen=True)
class Projection:
    """ε after the round, for this run and for the dataset's lifetime."""

    run_epsilon: float
    lifetime_epsilon: float


def admit(round_use: MechanismUse, *, run: Sequence[MechanismUse], lifetime: Sequence[MechanismUse],
          terms: Terms, policy: PrivacyPolicy) -> Projection:
    """The projected spend if the round fits; RoundDeclined with the reason if it does not."""
    projected = Projection(epsilon_spent([*run, round_use], terms.delta, terms.accountant),
                           epsilon_spent([*lifetime, round_use], policy.lifetime_delta, terms.accountant))
    if projected.lifetime_epsilon > policy.lifetime_epsilon + SLACK:
        raise RoundDeclined(LIFETIME_BUDGET, f"lifetime ε would reach {projected.lifetime_epsilon:.3f} "
                                             f"> {policy.lifetime_epsilon}")
    if projected.run_epsilon > terms.run_epsilon + SLACK:
        raise RoundDeclined(RUN_BUDGET, f"run ε would reach {projected.run_epsilon:.3f} > {terms.run_epsilon}")
    return projected
