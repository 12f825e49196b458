"""The ε fedclinic reports, checked against an independent implementation (Google dp-accounting).

PRV (the default) is compared with Google's PLD accountant within max(0.02, 0.5 %); RDP with
Google's RDP accountant. Histories include the shared notes' reference cases and the exact
(σ, q, steps) history that a real site run records.
"""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from client.site_round import train_round
from configs.load import load_experiment
from privacy.accountant import MechanismUse, calibrate_noise, epsilon_spent
from privacy.ledger import LEDGER_FILE, Ledger
from test_privacy import _job

NEIGHBOURS = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def _compose(acc: dp_accounting.PrivacyAccountant, history: list[MechanismUse]) -> dp_accounting.PrivacyAccountant:
    for h in history:
        acc.compose(dp_accounting.PoissonSampledDpEvent(h.sample_rate, dp_accounting.GaussianDpEvent(h.noise_multiplier)),
                    h.steps)
    return acc


def google_pld(history: list[MechanismUse], delta: float) -> float:
    acc = pld_privacy_accountant.PLDAccountant(NEIGHBOURS, value_discretization_interval=1e-4)
    return float(_compose(acc, history).get_epsilon(delta))


def google_rdp(history: list[MechanismUse], delta: float) -> float:
    return float(_compose(rdp_privacy_accountant.RdpAccountant(neighboring_relation=NEIGHBOURS), history).get_epsilon(delta))


def close_enough(ours: float, reference: float) -> bool:
    return abs(ours - reference) <= max(0.02, 0.005 * reference)


REFERENCE_CASES = [  # (history, delta, PLD value from the shared notes)
    ([MechanismUse(4.0, 0.01, 10_000)], 1e-5, 0.947),
    ([MechanismUse(1.1, 256 / 60000, 14_100)], 1e-5, 2.385),
    ([MechanismUse(1.0, 0.05, 500)], 1e-5, 7.524),
    ([MechanismUse(0.8, 0.1, 200)], 1e-6, 17.426),
]


@pytest.mark.parametrize(("history", "delta", "noted"), REFERENCE_CASES)
def test_prv_matches_google_pld_on_reference_cases(history: list[MechanismUse], delta: float, noted: float) -> None:
    reference = google_pld(history, delta)
    assert reference == pytest.approx(noted, abs=2e-3)
    ours = epsilon_spent(history, delta, "prv")
    assert close_enough(ours, reference), (ours, reference)
    assert ours >= reference - 1e-3  # PRV reports an upper bound


@pytest.mark.parametrize(("history", "delta", "noted"), REFERENCE_CASES)
def test_rdp_matches_google_rdp(history: list[MechanismUse], delta: float, noted: float) -> None:
    assert epsilon_spent(history, delta, "rdp") == pytest.approx(google_rdp(history, delta), rel=5e-3)


def test_composed_history_across_runs_matches_pld() -> None:
    """Two runs of one site with different sigma and sampling rate, as the ledger composes them."""
    history = [MechanismUse(0.937, 0.1, 60), MechanismUse(0.937, 0.1, 40), MechanismUse(1.2, 1 / 20, 40)]
    assert close_enough(epsilon_spent(history, 1e-5, "prv"), google_pld(history, 1e-5))


def test_the_history_of_a_real_site_run_matches_pld(small_sites: Path, tmp_path: Path) -> None:
    cfg = load_experiment(["rounds=3", "train.local_epochs=1", "train.batch_size=16"])
    for server_round in (1, 2, 3):
        _, metrics = train_round(_job(small_sites, cfg, tmp_path), "run-x", server_round)
        history = Ledger(tmp_path / LEDGER_FILE).history("site-a", "run-x")
        reference = google_pld(history, cfg.privacy.target_delta)
        assert close_enough(metrics["epsilon"], reference), (server_round, metrics["epsilon"], reference)
    assert metrics["epsilon"] <= cfg.privacy.target_epsilon


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_calibrated_sigma_is_tight_and_never_over_target(target: float) -> None:
    sigma = calibrate_noise(target_epsilon=target, delta=1e-5, sample_rate=0.02, steps=1000, accountant="prv")
    history = [MechanismUse(sigma, 0.02, 1000)]
    assert epsilon_spent(history, 1e-5, "prv") <= target
    assert google_pld(history, 1e-5) <= target
    assert google_pld([MechanismUse(sigma * 0.99, 0.02, 1000)], 1e-5) > target - 0.06  # within ~1 % of tight
