"""Every privacy parameter a site accepts computes, in bounded time and memory: tiny deltas fall
back to RDP instead of failing every round, composition is order-free, and the noise is planned
for the run's other releases and for what the lifetime budget still allows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from client.readiness import check_site
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
    assert epsilon_spent([*past, MechanismUse(plan.noise_multiplier / 1.01, plan.sample_rate, plan.planned_steps)],
                         1e-5, "prv") > cap
    with pytest.raises(BudgetExhausted):
        plan_noise(num_examples=1600, batch_size=128, local_epochs=2, rounds=5, target_epsilon=8.0, delta=1e-5,
                   accountant="prv", lifetime=LifetimeBudget(past, 1e-5, cap - 1.2))
