"""DP accounting and DP-SGD with the real Opacus: calibration, composition across rounds,
per-sample gradients of the real model, clipping bound and empty Poisson batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from torch.utils.data import TensorDataset

from client.site_data.loader import load_site
from client.site_round import SiteJob, train_round
from client.site import site_settings
from client.trainer import batch_loss, split_dataset
from configs.load import load_experiment
from configs.schema import ExperimentConfig, PrivacyPolicy, SiteFileConfig, ValidationSplit
from model.batch import ClinicalBatch
from model.networks import build_model
from privacy.accountant import MechanismUse, calibrate_noise, epsilon_spent
from privacy.dpsgd.engine import DPSettings, make_private
from privacy.ledger import LEDGER_FILE, Ledger
from privacy.planning import plan_noise


@pytest.mark.parametrize(("q", "sigma", "steps", "delta", "prv", "rdp"), [
    (256 / 60000, 1.1, 14100, 1e-5, 2.395, 2.600),   # MNIST reference (shared notes)
    (0.05, 1.0, 500, 1e-5, 7.534, 8.297),
])
def test_reported_epsilon_matches_reference_values(q: float, sigma: float, steps: int, delta: float,
                                                   prv: float, rdp: float) -> None:
    history = [MechanismUse(sigma, q, steps)]
    assert epsilon_spent(history, delta, "prv") == pytest.approx(prv, abs=0.02)
    assert epsilon_spent(history, delta, "rdp") == pytest.approx(rdp, rel=1e-3)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_calibrated_sigma_spends_at_most_the_target(accountant: str, target: float) -> None:
    sigma = calibrate_noise(target_epsilon=target, delta=1e-5, sample_rate=0.02, steps=1000, accountant=accountant)
    spent = epsilon_spent([MechanismUse(sigma, 0.02, 1000)], 1e-5, accountant)
    assert target - 0.05 <= spent <= target
    assert epsilon_spent([MechanismUse(sigma * 0.97, 0.02, 1000)], 1e-5, accountant) > target - 0.05


def test_plan_covers_all_rounds_and_epochs() -> None:
    plan = plan_noise(num_examples=1000, batch_size=128, local_epochs=2, rounds=5, target_epsilon=8,
                      delta=1e-5, accountant="prv")
    assert (plan.sample_rate, plan.steps_per_round, plan.planned_steps) == (1 / 8, 16, 80)
    final = epsilon_spent([MechanismUse(plan.noise_multiplier, plan.sample_rate, 80)], 1e-5, "prv")
    assert final <= 8.0


def _job(sites: Path, cfg: ExperimentConfig, state: Path, policy: PrivacyPolicy | None = None,
         validation: ValidationSplit | None = None) -> SiteJob:
    site = site_settings({"data-path": str(sites / "site-a"), "state-dir": str(state)}, None)
    arrays, _ = load_site(site.data_dir, cfg.data, cache_dir=site.cache_dir)
    model = build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets, seed=0)
    site_file = SiteFileConfig(privacy=policy or PrivacyPolicy(lifetime_epsilon=100.0),
                               validation=validation or ValidationSplit(min_patients=10), data=cfg.data)
    return SiteJob(cfg, site, site_file, arrays, model, torch.device("cpu"))


def test_epsilon_grows_across_rounds_and_equals_a_fresh_accountant(small_sites: Path, tmp_path: Path) -> None:
    cfg = load_experiment(["rounds=2", "train.local_epochs=1", "train.batch_size=32"])
    weights, m1 = train_round(_job(small_sites, cfg, tmp_path), "run-1", 1)
    _, m2 = train_round(_job(small_sites, cfg, tmp_path), "run-1", 2)  # Flower rebuilds the client each time
    assert 0 < m1["epsilon"] < m2["epsilon"] <= cfg.privacy.target_epsilon
    assert m1["noise-multiplier"] == m2["noise-multiplier"] and m1["steps"] == m2["steps"] > 0
    spends = Ledger(tmp_path / LEDGER_FILE).spends()
    assert [(s.run_id, s.round) for s in spends] == [("run-1", 1), ("run-1", 2)]
    fresh = PRVAccountant()
    fresh.history = [(m1["noise-multiplier"], spends[0].sample_rate, m1["steps"] + m2["steps"])]
    assert m2["epsilon"] == pytest.approx(fresh.get_epsilon(delta=cfg.privacy.target_delta), rel=1e-9)
    assert spends[1].run_epsilon == m2["epsilon"]


def _text_heavy_batch(cfg: ExperimentConfig, n: int) -> ClinicalBatch:
    g = torch.Generator().manual_seed(0)
    d, f = cfg.data, len(cfg.data.labs)
    tokens = torch.randint(1, 6, (n, d.note_max_tokens), generator=g)  # few ids: many repeats
    tokens[0, 10:] = 0
    return ClinicalBatch(torch.rand(n, 1, d.image_size, d.image_size, generator=g), torch.randn(n, f, generator=g),
                         torch.ones(n, f), tokens, torch.ones(n, 3), (torch.rand(n, generator=g) > 0.5).float())


def test_per_sample_gradients_match_a_loop_with_repeated_tokens(experiment: ExperimentConfig) -> None:
    model = build_model(experiment.model, num_labs=8, note_buckets=experiment.data.note_buckets, seed=0)
    batch = _text_heavy_batch(experiment, 6)
    loop = []
    for i in range(6):
        model.zero_grad()
        batch_loss(model, ClinicalBatch(*(t[i:i + 1] for t in batch))).backward()
        loop.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    data = TensorDataset(*batch)
    private = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1),
                           torch.utils.data.DataLoader(data, batch_size=6),
                           settings=DPSettings(0.0, 1e6, "prv", "hooks"), prior=[])
    loss = batch_loss(private.model, batch) * 6  # per-sample grads of the sum = each sample's own
    loss.backward()
    per_sample = torch.cat([p.grad_sample.flatten(1) for p in private.model.parameters()], dim=1) / 6
    for i in range(6):
        rel = (per_sample[i] - loop[i]).norm() / loop[i].norm()
        assert rel < 1e-4, (i, float(rel))


def test_with_zero_noise_each_sample_moves_the_model_by_at_most_C(experiment: ExperimentConfig) -> None:
    clip = 0.05
    batch = _text_heavy_batch(experiment, 4)
    for i in range(4):
        model = build_model(experiment.model, num_labs=8, note_buckets=experiment.data.note_buckets, seed=0)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        one = TensorDataset(*(t[i:i + 1] for t in batch))
        private = make_private(model, torch.optim.SGD(model.parameters(), lr=1.0),
                               torch.utils.data.DataLoader(one, batch_size=1),
                               settings=DPSettings(0.0, clip, "prv", "hooks"), prior=[])
        private.optimizer.zero_grad()
        batch_loss(private.model, ClinicalBatch(*(t[i:i + 1] for t in batch))).backward()
        private.optimizer.step()  # expected batch size 1: update = lr * clipped per-sample gradient
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert 0 < (after - before).norm() <= clip * (1 + 1e-5)


def test_an_empty_poisson_batch_still_takes_a_noisy_step(experiment: ExperimentConfig) -> None:
    model = build_model(experiment.model, num_labs=8, note_buckets=experiment.data.note_buckets, seed=0)
    batch = _text_heavy_batch(experiment, 4)
    private = make_private(model, torch.optim.SGD(model.parameters(), lr=1.0),
                           torch.utils.data.DataLoader(TensorDataset(*batch), batch_size=2),
                           settings=DPSettings(1.0, 1.0, "prv", "hooks"), prior=[])
    empty = ClinicalBatch(*(t[:0] for t in batch))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    private.optimizer.zero_grad()
    loss = batch_loss(private.model, empty)
    loss.backward()
    private.optimizer.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float(loss) == 0.0 and (after - before).abs().max() > 0
    assert private.history() == [MechanismUse(1.0, 0.5, 1)]


def test_dp_noise_cannot_be_replayed_by_choosing_the_seed(small_sites: Path, tmp_path: Path) -> None:
    """A coordinator controls cfg.seed and the round number; the noise must not follow them."""
    cfg = load_experiment(["rounds=2", "train.local_epochs=1", "train.batch_size=32"])
    updates = []
    for run in ("run-a", "run-b"):
        torch.manual_seed(1234)  # whatever the global RNG state, the DP randomness is fresh
        weights, _ = train_round(_job(small_sites, cfg, tmp_path / run), run, 1)
        updates.append(np.concatenate([v.ravel() for v in weights.values()]))
    assert not np.allclose(updates[0], updates[1])
