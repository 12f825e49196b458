"""The site policy applied to the coordinator's request: tighten it, then admit or decline a release.

The coordinator asks for (target epsilon, delta, clipping norm); the site may only make that
stricter, and the accountant is always the site's own. Before each release (a DP-SGD round or a
DP release of validation metrics) the site projects its exact spend (noise multiplier, sampling
rate and number of steps are known in advance) onto its ledger and declines if the projection
would exceed the per-run ceiling or the dataset's lifetime budget.

The lifetime account counts every spend in the ledger except those the site declared to be on
other patients (`privacy.unrelated_datasets`): a renamed site, or a changed dataset key, never
starts a fresh budget. The recorded lifetime epsilon never decreases: it is the larger of the
accountant's value for the whole history and the largest value recorded before (both are valid
upper bounds, so the larger one is too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from configs.schema import PrivacyConfig, PrivacyPolicy
from privacy.accountant import MechanismUse, epsilon_spent
from privacy.decline import ACCOUNTING_LIMIT, LIFETIME_BUDGET, RUN_BUDGET, RoundDeclined
from privacy.ledger import Spend

if TYPE_CHECKING:
    from privacy.accounting_cache import AccountingCache

SLACK = 1e-9  # floating-point slack only; epsilon above the cap by more than this is refused


@dataclass(frozen=True)
class Terms:
    """The DP terms the site actually applies in this run."""

    run_epsilon: float
    delta: float
    max_grad_norm: float
    min_noise_multiplier: float
    accountant: str


def tighten(requested: PrivacyConfig, policy: PrivacyPolicy) -> Terms:
    """Never looser than the request, never looser than the policy; the policy's accountant."""
    ceiling = policy.run_epsilon if policy.run_epsilon is not None else requested.target_epsilon
    norm = requested.max_grad_norm if policy.max_grad_norm is None else min(requested.max_grad_norm,
                                                                            policy.max_grad_norm)
    return Terms(min(requested.target_epsilon, ceiling, policy.lifetime_epsilon),
                 min(requested.target_delta, policy.lifetime_delta), norm,
                 policy.min_noise_multiplier, policy.accountant)


@dataclass(frozen=True)
class Account:
    """What the ledger says, as this dataset and run see it."""

    run: list[Spend]        # this run's spends on this dataset
    lifetime: list[Spend]   # every spend that counts toward the dataset's lifetime
    others: list[str]       # ledger keys other than this dataset's that are counted

    @property
    def recorded_lifetime(self) -> float:
        """The largest lifetime epsilon recorded so far (0 for none)."""
        return max((s.lifetime_epsilon for s in self.lifetime), default=0.0)


def account(spends: Sequence[Spend], *, dataset: str, run_id: str, policy: PrivacyPolicy) -> Account:
    """Split the ledger into this run's spends and the lifetime's (all but declared-unrelated keys)."""
    lifetime = [s for s in spends if s.dataset not in policy.unrelated_datasets or s.dataset == dataset]
    run = [s for s in lifetime if s.dataset == dataset and s.run_id == run_id]
    others = sorted({s.dataset for s in lifetime if s.dataset != dataset})
    return Account(run, lifetime, others)


@dataclass(frozen=True)
class Projection:
    """Epsilon after the release, for this run and for the dataset's lifetime."""

    run_epsilon: float
    lifetime_epsilon: float


def project(use: MechanismUse, acct: Account, *, terms: Terms, policy: PrivacyPolicy,
            cache: AccountingCache | None = None) -> Projection:
    """Run and lifetime epsilon if `use` were released now (the lifetime value never decreases).
    `cache`: a process's AccountingCache (the same values, faster)."""
    run = epsilon_spent([*(s.use for s in acct.run), use], terms.delta, terms.accountant,
                        magnitude=terms.run_epsilon, cache=cache)
    if len(acct.lifetime) == len(acct.run) and policy.lifetime_delta == terms.delta:
        life = run  # the run is the dataset's whole history: the same composition at the same delta
    else:
        life = epsilon_spent([*(s.use for s in acct.lifetime), use], policy.lifetime_delta, terms.accountant,
                             magnitude=max(acct.recorded_lifetime, run), cache=cache)
    return Projection(run, max(life, acct.recorded_lifetime))


def admit(use: MechanismUse, acct: Account, *, terms: Terms, policy: PrivacyPolicy,
          max_mechanisms: int | None = None, cache: AccountingCache | None = None) -> Projection:
    """The projected spend if the release fits; RoundDeclined with the reason if it does not.

    `max_mechanisms`: the most distinct (noise multiplier, sample rate) pairs the lifetime may
    compose (accounting time grows with them); a release that would add one more is declined."""
    distinct = {(s.noise_multiplier, s.sample_rate) for s in acct.lifetime}
    if max_mechanisms is not None and (use.noise_multiplier, use.sample_rate) not in distinct \
            and len(distinct) >= max_mechanisms:
        raise RoundDeclined(ACCOUNTING_LIMIT, f"the lifetime already composes {len(distinct)} distinct mechanisms")
    projected = project(use, acct, terms=terms, policy=policy, cache=cache)
    if projected.lifetime_epsilon > policy.lifetime_epsilon + SLACK:
        raise RoundDeclined(LIFETIME_BUDGET, f"lifetime ε would reach {projected.lifetime_epsilon:.3f} "
                                             f"> {policy.lifetime_epsilon}")
    if projected.run_epsilon > terms.run_epsilon + SLACK:
        raise RoundDeclined(RUN_BUDGET, f"run ε would reach {projected.run_epsilon:.3f} > {terms.run_epsilon}")
    return projected
