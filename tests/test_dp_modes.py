"""DP-SGD correctness of every supported grad_sample_mode on the real fused model: clipping bound,
exact per-sample gradients (every mode), all modes take the same step, noisy steps on empty
Poisson batches, and Opacus' sample rate and noise scale with OS-seeded generators."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from client.trainer import batch_loss, train_dp
from configs.load import load_experiment
from configs.parse import ConfigError
from configs.schema import ExperimentConfig
from configs.validate import GRAD_SAMPLE_MODES
from model.batch import ClinicalBatch
from model.networks import FusionModel, build_model
from privacy.accountant import MechanismUse
from privacy.dpsgd.engine import SUPPORTED_MODES, DPSettings, PrivateTraining, make_private

MODES = list(GRAD_SAMPLE_MODES)


def _model(cfg: ExperimentConfig) -> FusionModel:
    return build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets, seed=0)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _batch(cfg: ExperimentConfig) -> ClinicalBatch:
    """8 varied patients; notes with heavy token repeats, padding and missing modalities."""
    g = torch.Generator().manual_seed(1)
    d, f, n = cfg.data, len(cfg.data.labs), 8
    length, buckets = d.note_max_tokens, d.note_buckets
    tokens = torch.randint(1, buckets, (n, length), generator=g)
    tokens[0] = 7                                            # one id repeated 64 times
    tokens[1] = torch.randint(1, 4, (length,), generator=g)  # three ids, many repeats
    tokens[2, 5:] = 0                                        # short note, then padding
    tokens[3] = 0                                            # no note tokens at all
    u = torch.rand(n - 4, length, generator=g)
    tokens[4:] = u.pow(-1 / 1.1).long().clamp(max=buckets - 1)  # Zipf-like: id 1 about half the time
    mask = torch.ones(n, 3)
    mask[3, 2] = 0.0                                         # notes missing
    mask[5, 0] = 0.0                                         # image missing
    lab_mask = (torch.rand(n, f, generator=g) > 0.3).float()
    return ClinicalBatch(torch.rand(n, 1, d.image_size, d.image_size, generator=g),
                         torch.randn(n, f, generator=g) * lab_mask, lab_mask, tokens, mask,
                         (torch.arange(n) % 2).float())


def _rows(batch: ClinicalBatch, rows: slice) -> ClinicalBatch:
    return ClinicalBatch(*(t[rows] for t in batch))


def _private(model: torch.nn.Module, data: ClinicalBatch, *, batch_size: int, mode: str, sigma: float,
             clip: float) -> PrivateTraining:
    """lr-1 plain SGD; expected batch size = len(data) / ceil(len(data) / batch_size)."""
    return make_private(model, torch.optim.SGD(model.parameters(), lr=1.0),
                        DataLoader(TensorDataset(*data), batch_size=batch_size),
                        settings=DPSettings(sigma, clip, "prv", mode), prior=[])


def _loop_gradients(cfg: ExperimentConfig, batch: ClinicalBatch) -> torch.Tensor:
    """True per-sample gradients [B, P] from a plain loop over single samples."""
    model = _model(cfg)
    rows = []
    for i in range(len(batch.label)):
        model.zero_grad()
        batch_loss(model, _rows(batch, slice(i, i + 1))).backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return torch.stack(rows)


def test_supported_modes_are_the_configurable_ones() -> None:
    assert set(GRAD_SAMPLE_MODES) == set(SUPPORTED_MODES) == {"bk", "hooks", "ghost", "ew"}
    assert load_experiment(["privacy.grad_sample_mode=ew"]).privacy.grad_sample_mode == "ew"
    assert load_experiment(["privacy.grad_sample_mode=ghost"]).privacy.grad_sample_mode == "ghost"
    with pytest.raises(ConfigError, match="privacy.grad_sample_mode"):
        load_experiment(["privacy.grad_sample_mode=functorch"])


@pytest.mark.parametrize("mode", MODES)
def test_one_sample_moves_the_model_by_at_most_C(experiment: ExperimentConfig, mode: str) -> None:
    clip = 0.05  # far below every per-sample gradient norm here: each sample is clipped
    batch = _batch(experiment)
    norms = _loop_gradients(experiment, batch).norm(dim=1)
    assert bool((norms > 10 * clip).all())
    for i in range(len(batch.label)):
        one = _rows(batch, slice(i, i + 1))
        model = _model(experiment)
        before = _flat(model)
        private = _private(model, one, batch_size=1, mode=mode, sigma=0.0, clip=clip)
        private.step(one, one.label)  # expected batch size 1: update = clipped per-sample gradient
        moved = float((_flat(model) - before).norm())
        assert moved <= clip * (1 + 1e-5), (mode, i, moved)
        assert moved >= clip * (1 - 1e-4), (mode, i, moved)  # clipped to C, not below


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", ["ghost", "bk"])
def test_per_sample_norms_are_the_true_ones(experiment: ExperimentConfig, mode: str) -> None:
    """ghost, bk: no per-sample gradient is kept; the norms the clip factors come from are exact."""
    batch = _batch(experiment)
    true = _loop_gradients(experiment, batch)
    private = _private(_model(experiment), batch, batch_size=len(batch.label), mode=mode, sigma=0.0, clip=1e6)
    private.loss(batch, batch.label).backward()
    holder = private.clipper if mode == "bk" else private.model
    norms = holder.per_sample_gradient_norms
    rel = ((norms - true.norm(dim=1)).abs() / true.norm(dim=1)).max()
    assert rel < 1e-4, (mode, float(rel))


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", [m for m in MODES if m not in ("ghost", "bk")])
def test_per_sample_gradients_are_the_true_ones(experiment: ExperimentConfig, mode: str) -> None:
    """hooks/ew: Opacus' per-sample gradients of a batch with repeated token ids == a loop."""
    batch = _batch(experiment)
    true = _loop_gradients(experiment, batch)
    model = _model(experiment)
    private = _private(model, batch, batch_size=len(batch.label), mode=mode, sigma=0.0, clip=1e6)
    private.loss(batch, batch.label).backward()
    # loss_reduction="mean": Opacus stores the batch-size-scaled gradients = the per-sample ones
    per_sample = torch.cat([p.grad_sample.reshape(len(batch.label), -1) for p in model.parameters()], dim=1)
    rel = ((per_sample - true).norm(dim=1) / true.norm(dim=1)).max()
    assert rel < 1e-4, (mode, float(rel))


@pytest.mark.parametrize("mode", MODES)
def test_unclipped_single_sample_update_is_the_true_gradient(experiment: ExperimentConfig, mode: str) -> None:
    batch = _batch(experiment)
    true = _loop_gradients(experiment, batch)
    for i in range(len(batch.label)):
        one = _rows(batch, slice(i, i + 1))
        model = _model(experiment)
        before = _flat(model)
        private = _private(model, one, batch_size=1, mode=mode, sigma=0.0, clip=1e6)
        private.step(one, one.label)
        update = before - _flat(model)
        rel = (update - true[i]).norm() / true[i].norm()
        assert rel < 1e-4, (mode, i, float(rel))


def test_every_mode_takes_the_same_clipped_step(experiment: ExperimentConfig) -> None:
    batch = _batch(experiment)
    norms = _loop_gradients(experiment, batch).norm(dim=1)
    clip = float(norms.median())
    assert bool((norms > clip).any() and (norms < clip).any())  # some clip, some do not
    updates = {}
    for mode in MODES:
        model = _model(experiment)
        before = _flat(model)
        private = _private(model, batch, batch_size=len(batch.label), mode=mode, sigma=0.0, clip=clip)
        private.step(batch, batch.label)
        updates[mode] = before - _flat(model)
    for mode in MODES:
        diff = (updates[mode] - updates["ghost"]).norm() / updates["ghost"].norm()
        assert diff < 1e-5, (mode, float(diff))
    # and both equal the clipped mean computed by hand (expected batch size 8)
    true = _loop_gradients(experiment, batch)
    by_hand = (true * (clip / (norms + 1e-6)).clamp(max=1.0)[:, None]).sum(0) / len(batch.label)
    assert (updates["ghost"] - by_hand).norm() / by_hand.norm() < 1e-4


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_batch_still_takes_a_noisy_accounted_step(experiment: ExperimentConfig, mode: str) -> None:
    batch = _batch(experiment)
    model = _model(experiment)
    private = _private(model, _rows(batch, slice(0, 4)), batch_size=2, mode=mode, sigma=1.0, clip=1.0)
    empty = _rows(batch, slice(0, 0))
    before = _flat(model)
    torch.manual_seed(0)
    assert private.step(empty, empty.label) is None
    moved = _flat(model) - before
    # lr 1, zero clipped sum + N(0, (sigma C)^2) per coordinate, / expected batch size 4 * 0.5 = 2
    assert float(moved.abs().max()) > 0
    assert float(moved.std()) == pytest.approx(1.0 * 1.0 / 2, rel=0.05)
    assert abs(float(moved.mean())) < 0.05
    assert private.history() == [MechanismUse(1.0, 0.5, 1)]
    # a normal step afterwards still works and is counted
    assert private.step(_rows(batch, slice(0, 2)), batch.label[:2]) is not None
    assert private.history() == [MechanismUse(1.0, 0.5, 2)]


@pytest.mark.parametrize("mode", MODES)
def test_train_dp_counts_every_step_including_empty_batches(experiment: ExperimentConfig, mode: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    empties = []
    original = PrivateTraining._zero_clipped_sum
    monkeypatch.setattr(PrivateTraining, "_zero_clipped_sum",
                        lambda self: (empties.append(1), original(self))[1])
    batch = _rows(_batch(experiment), slice(0, 4))
    cfg = dataclasses.replace(experiment.train, local_epochs=10, batch_size=1)  # q = 1/4, 40 steps
    # Poisson sampling is seeded from the OS (no seed can fix it): P(no empty batch in 40 steps)
    # = (1 - 0.75**4)**40 < 3e-7
    out = train_dp(_model(experiment), TensorDataset(*batch), cfg=cfg, dp=DPSettings(1.0, 1.0, "prv", mode),
                   prior=[MechanismUse(1.0, 0.25, 5)], device=torch.device("cpu"))
    assert out.steps == 40 and empties
    assert out.history == [MechanismUse(1.0, 0.25, 45)]
    assert out.loss == out.loss  # not NaN: some batch was non-empty


@pytest.mark.parametrize("mode", MODES)
def test_sampling_rate_noise_scale_and_generators_are_opacus_with_os_seeds(experiment: ExperimentConfig,
                                                                           mode: str) -> None:
    """q = 1/len(loader) and expected batch size int(N q), as PrivacyEngine.make_private sets
    them; the Poisson sampler and the noise draw from generators seeded from the OS, not from
    torch's global RNG (a coordinator-chosen seed would make both predictable)."""
    data = _rows(_batch(experiment), slice(0, 7))
    privates = []
    for _ in range(2):
        torch.manual_seed(0)
        privates.append(_private(_model(experiment), data, batch_size=3, mode=mode, sigma=1.0, clip=1.0))
    a, b = privates
    assert len(a.loader) == 3 and a.loader.sample_rate == 1 / 3
    assert a.optimizer.expected_batch_size == int(7 * (1 / 3)) == 2
    assert a.optimizer.noise_multiplier == 1.0 and a.optimizer.max_grad_norm == 1.0
    sampler, noise = a.loader.batch_sampler.generator, a.optimizer.generator
    assert sampler is not None and noise is not None and sampler is not torch.default_generator
    assert sampler.initial_seed() != b.loader.batch_sampler.generator.initial_seed()
    assert noise.initial_seed() != b.optimizer.generator.initial_seed()
    a.step(data, data.label)
    assert a.history() == [MechanismUse(1.0, 1 / 3, 1)]


def _extreme_weights(model: FusionModel) -> None:
    """Finite weights that make every sample's lab embedding 2.5e18 and head.0's output gradient
    ~1e-19: ||a||^2 ||g||^2 in float32 underflows (flushes) to 0 while g a^T is O(1) (red team)."""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.labs.mlp[0].bias.fill_(1.0)
        model.labs.mlp[2].bias.fill_(2.5e18)
        d = model.labs.mlp[2].out_features
        model.head[0].weight[:, d:2 * d] = 1e-30
        model.head[0].bias.fill_(1e-10)
        model.head[2].weight.fill_(2e-19)


@pytest.mark.parametrize("mode", MODES)
def test_extreme_finite_activations_cannot_escape_clipping(experiment: ExperimentConfig, mode: str) -> None:
    """With flush-to-zero on (as at a site), a per-sample norm assembled from factors must not
    underflow where the gradient written does not: one sample still moves the model by <= C."""
    clip = 0.01
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as at a site; flush-to-zero is per thread
    torch.set_flush_denormal(True)
    try:
        hidden = dataclasses.replace(experiment, model=dataclasses.replace(experiment.model, fusion_hidden=32))
        for i in range(3):
            one = _rows(_batch(hidden), slice(i, i + 1))
            model = _model(hidden)  # the red team's weights need the head's hidden layer
            _extreme_weights(model)
            before = _flat(model)
            _private(model, one, batch_size=1, mode=mode, sigma=0.0, clip=clip).step(one, one.label)
            moved = float((_flat(model) - before).norm())
            assert moved <= clip * (1 + 1e-5), (mode, i, moved)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
