"""Every privacy parameter a site accepts computes, in bounded time and memory: tiny deltas fall
back to RDP instead of failing every round, composition is order-free, and the noise is planned
for the run's other releases and for what the lifetime budget still allows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from client.site_data.readiness.check import check_site
from client.site import site_settings
from configs.load import load_experiment
from privacy.accountant import calibrate_noise, epsilon_spent, merge
from privacy.mechanism import MechanismUse
from privacy.planning import BudgetExhausted, LifetimeBudget, plan_noise
from messages import metrics, send

pytestmark = pytest.mark.usefixtures("task_identity")


def test_a_delta_prv_cannot_compute_is_reported_with_rdp() -> None:
    history = [MechanismUse(1.0, 0.05, 1000)]
    tiny = epsilon_spent(history, 1e-14, "prv")
    assert tiny == pytest.approx(epsilon_spent(history, 1e-14, "rdp"))  # the valid, looser bound
    assert tiny > epsilon_spent(history, 1e-12, "prv")


@pytest.mark.parametrize("where", ["site.yaml", "coordinator"])
def test_a_tiny_delta_never_means_ready_then_603_every_round(site_copy: Path, tmp_path: Path, where: str) -> None:
    """prv-tiny-delta: the site check is honest about it, and training works (sigma from RDP)."""
    overrides = "rounds=5 train.batch_size=32"
    if where == "site.yaml":
        policy = site_copy / "site.yaml"
        policy.write_text(re.sub(r"lifetime_delta: *[0-9.eE+-]+", "lifetime_delta: 1.0e-14", policy.read_text()))
    else:
        overrides += " privacy.target_delta=1e-14"
    node = {"data-path": str(site_copy), "state-dir": str(tmp_path / "state")}
    verdict = check_site(site_settings(node, None), load_experiment(overrides.split()).data)
    assert verdict.can_train
    if where == "site.yaml":
        assert any("RDP" in w for w in verdict.warnings)
    reply = metrics(send("train", site_copy, tmp_path / "state", overrides))
    assert 0 < reply["epsilon"] <= 8.0 and reply["delta"] == 1e-14


def test_composition_is_counted_once_per_distinct_mechanism_in_any_order() -> None:
    a, b = MechanismUse(1.0, 0.1, 10), MechanismUse(5.0, 1.0, 1)
    assert merge([a, b, a, b, a]) == [MechanismUse(1.0, 0.1, 30), MechanismUse(5.0, 1.0, 2)]
    assert epsilon_spent([a, b, a, b, a], 1e-5, "prv") == pytest.approx(epsilon_spent([a, a, a, b, b], 1e-5, "prv"))


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_noise_calibrated_with_other_releases_spends_at_most_the_target(accountant: str) -> None:
    evaluations = [MechanismUse(5.0, 1.0, 5)]
    sigma = calibrate_noise(target_epsilon=8.0, delta=1e-5, sample_rate=1 / 13, steps=130, accountant=accountant,
                            extra=evaluations)
    alone = calibrate_noise(target_epsilon=8.0, delta=1e-5, sample_rate=1 / 13, steps=130, accountant=accountant)
    with_evals = epsilon_spent([MechanismUse(sigma, 1 / 13, 130), *evaluations], 1e-5, accountant)
    assert with_evals <= 8.0 and sigma > alone
    assert epsilon_spent([MechanismUse(sigma / 1.01, 1 / 13, 130), *evaluations], 1e-5, accountant) > 8.0


def test_the_plan_fits_what_the_lifetime_budget_still_allows() -> None:
    past = [MechanismUse(0.9, 1 / 13, 260)]
    cap = epsilon_spent(past, 1e-5, "prv") + 1.0
    plan = plan_noise(num_examples=1600, batch_size=128, local_epochs=2, rounds=5, target_epsilon=8.0,
                      delta=1e-5, accountant="prv", lifetime=LifetimeBudget(past, 1e-5, cap))
    run = MechanismUse(plan.noise_multiplier, plan.sample_rate, plan.planned_steps)
    assert epsilon_spent([*past, run], 1e-5, "prv") <= cap
    assert epsilon_spent([*past, MechanismUse(plan.noise_multiplier / 1.03, plan.sample_rate, plan.planned_steps)],
                         1e-5, "prv") > cap  # within the 0.2 % search and the 1 % grid of the smallest
    with pytest.raises(BudgetExhausted):
        plan_noise(num_examples=1600, batch_size=128, local_epochs=2, rounds=5, target_epsilon=8.0, delta=1e-5,
                   accountant="prv", lifetime=LifetimeBudget(past, 1e-5, cap - 1.2))


@pytest.mark.parametrize("patients", [93, 99, 123, 186, 1600])
def test_the_recorded_steps_are_the_steps_opacus_takes(patients: int) -> None:
    """Opacus' Poisson loader takes int(1 / q) steps, which is ceil(N / B) - 1 for some N / B:
    the site plans and records exactly that (a site once recorded 123 steps and took 122)."""
    import torch
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader, TensorDataset
    from privacy.planning import poisson_schedule
    for batch_size in (1, 128):
        schedule = poisson_schedule(patients, batch_size)
        loader = DPDataLoader.from_data_loader(DataLoader(TensorDataset(torch.zeros(patients)), batch_size=batch_size))
        assert (schedule.steps, schedule.sample_rate) == (len(loader), loader.sample_rate)
        assert schedule.batches == -(-patients // batch_size)


def test_a_recipe_only_absurd_noise_could_make_private_is_declined_not_planned() -> None:
    """10 000 full-batch steps within epsilon 8 need sigma > 100: declined (run ceiling), quickly."""
    with pytest.raises(BudgetExhausted) as exhausted:
        plan_noise(num_examples=96, batch_size=10000, local_epochs=100, rounds=100, target_epsilon=8.0,
                   delta=1e-5, accountant="prv", extra=[MechanismUse(5.0, 1.0, 50)])
    assert exhausted.value.lifetime is False


def test_the_number_of_distinct_mechanisms_in_a_lifetime_is_bounded() -> None:
    """Each distinct (sigma, q) costs accounting time in every later round: beyond the site's
    limit, a release with a new one is declined (706); planned sigmas sit on a 1 % grid."""
    from configs.schema import PrivacyConfig, PrivacyPolicy
    from privacy.decline import ACCOUNTING_LIMIT, RoundDeclined
    from privacy.ledger import Spend
    from privacy.planning import on_grid
    from privacy.policy import Account, admit, tighten
    spends = [Spend("ds", f"r{i}", 1, on_grid(2.0 + 0.1 * i), 0.1, 10, 1e-5, 0.1, 0.1, 1e-5, 50.0, "prv", "t")
              for i in range(4)]
    acct = Account([], spends, [])
    terms = tighten(PrivacyConfig(8.0, 1e-5, 1.0, "prv", "bk"), PrivacyPolicy(lifetime_epsilon=50.0))
    admit(MechanismUse(spends[0].noise_multiplier, 0.1, 10), acct, terms=terms, policy=PrivacyPolicy(lifetime_epsilon=50.0),
          max_mechanisms=4)  # an existing one: fine
    with pytest.raises(RoundDeclined) as declined:
        admit(MechanismUse(on_grid(9.0), 0.1, 10), acct, terms=terms, policy=PrivacyPolicy(lifetime_epsilon=50.0),
              max_mechanisms=4)
    assert declined.value.code == ACCOUNTING_LIMIT
    assert on_grid(1.0) == pytest.approx(1.0) and on_grid(1.0101) == pytest.approx(1.01 ** 2)
    assert 0.8738 <= on_grid(0.8738) <= 0.8738 * 1.01
