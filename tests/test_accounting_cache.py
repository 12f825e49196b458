"""A site's AccountingCache gives Opacus' epsilon bit for bit, and re-accounts a longer history of
the same mechanisms without evaluating any RDP series again."""

from __future__ import annotations

import pytest
from opacus.accountants import create_accountant

from privacy.accountant import epsilon_spent, merge
from privacy.accounting_cache import AccountingCache
from privacy.mechanism import MechanismUse
from privacy.planning import plan_noise

TRAIN, EVAL = (1.13, 1 / 47), (5.0, 1.0)


def opacus_epsilon(history: list[MechanismUse], delta: float, accountant: str) -> float:
    """From scratch, as Opacus' own accountant computes it (PRV with fedclinic's eps_error 0.01)."""
    acc = create_accountant(mechanism=accountant)
    acc.history = [(h.noise_multiplier, h.sample_rate, h.steps) for h in merge(history)]
    if accountant == "prv":
        return float(acc.get_epsilon(delta=delta, eps_error=0.01))
    return float(acc.get_epsilon(delta=delta))


def run_history(rounds: int) -> list[MechanismUse]:
    """A run after `rounds` rounds: 47 DP-SGD steps and one DP evaluation per round."""
    return [MechanismUse(*TRAIN, 47 * rounds), MechanismUse(*EVAL, rounds)]


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_each_rounds_epsilon_equals_opacus_from_scratch(accountant: str) -> None:
    cache = AccountingCache()
    for rounds in (1, 2, 3, 5):
        history = run_history(rounds)
        assert epsilon_spent(history, 1e-5, accountant, cache=cache) == opacus_epsilon(history, 1e-5, accountant)
        assert epsilon_spent(history, 1e-5, accountant, cache=cache) == epsilon_spent(history, 1e-5, accountant)
    other = [MechanismUse(0.7, 0.01, 5000), MechanismUse(2.0, 1.0, 1), MechanismUse(1.1, 256 / 60000, 14100)]
    for history in (other[:1], other[1:2], other):
        assert epsilon_spent(history, 1e-6, accountant, cache=cache) == opacus_epsilon(history, 1e-6, accountant)


def test_more_rounds_of_the_same_mechanisms_evaluate_no_new_rdp_curve() -> None:
    cache = AccountingCache()
    epsilon_spent(run_history(1), 1e-5, "prv", cache=cache)
    assert cache.mechanisms == 2  # one per-step curve per (sigma, q)
    for rounds in (2, 3, 4):
        epsilon_spent(run_history(rounds), 1e-5, "prv", cache=cache)
    assert cache.mechanisms == 2


def test_a_plan_made_with_the_cache_is_the_plan_made_without() -> None:
    args = dict(num_examples=1600, batch_size=32, local_epochs=1, rounds=3, target_epsilon=8.0, delta=1e-5,
                accountant="prv", extra=[MechanismUse(*EVAL, 3)])
    assert plan_noise(**args, cache=AccountingCache()) == plan_noise(**args)  # type: ignore[arg-type]


def test_the_cache_stays_within_its_bounds() -> None:
    cache = AccountingCache(mechanisms=2, results=2)
    for sigma in (1.0, 1.5, 2.0, 3.0):
        epsilon_spent([MechanismUse(sigma, 0.02, 10)], 1e-5, "rdp", cache=cache)
    assert cache.mechanisms == 2 and cache.results == 2
