"""A sample whose per-sample loss or gradient is not finite contributes exactly zero, in every
grad_sample_mode, on the real fused model.

The attack (sec-nan-update): a coordinator sends finite weights under which one patient's logit
overflows to inf. Without masking, that patient's clip factor (0 or NaN) times inf made the clipped
sum, the noised sum and the released weights NaN exactly when the patient was sampled.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from configs.schema import ExperimentConfig
from model.batch import ClinicalBatch
from model.networks import FusionModel, build_model
from privacy.accountant import MechanismUse
from privacy.dpsgd.engine import SUPPORTED_MODES, DPSettings, PrivateTraining, make_private

MODES = list(SUPPORTED_MODES)
FLOAT32_MODES = [m for m in MODES if m != "ghost"]  # ghost computes in float64: no finite float32 weights overflow it
TARGET = 2  # the patient the crafted weights single out


def _model(cfg: ExperimentConfig) -> FusionModel:
    return build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets, seed=0)


def _crafted(cfg: ExperimentConfig, *, scale: float = 3e38, everyone: bool = False) -> FusionModel:
    """The fused model with one lab path rewired: labs hidden unit 0 = relu(glucose - 50) (relu(glucose
    + 50) if `everyone`), passed on as lab feature 0, which enters the head's first hidden unit with
    weight `scale`, and that unit enters the logit with weight 1. With scale 3e38 the logit is +inf
    for a patient whose glucose is above 50 (only TARGET in `_batch`), finite for every other one."""
    model = _model(cfg)
    d = cfg.model.embed_dim
    with torch.no_grad():
        first, second = model.labs.mlp[0], model.labs.mlp[2]
        first.weight[0].zero_()
        first.weight[0, 0], first.bias[0] = 1.0, 50.0 if everyone else -50.0
        second.weight[0].zero_()
        second.weight[0, 0], second.bias[0] = 1.0, 0.0
        model.head[0].weight[0, d] = scale      # head input: image (d), labs (d), notes (d), mask (3)
        model.head[2].weight[0, 0] = 1.0
    return model


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _batch(cfg: ExperimentConfig) -> ClinicalBatch:
    """8 patients, every modality present but one image; TARGET's glucose (lab 0) is 100 sd high."""
    g = torch.Generator().manual_seed(3)
    d, f, n = cfg.data, len(cfg.data.labs), 8
    tokens = torch.randint(0, d.note_buckets, (n, d.note_max_tokens), generator=g)
    lab_mask = (torch.rand(n, f, generator=g) > 0.3).float()
    lab_mask[TARGET, 0] = 1.0
    labs = torch.randn(n, f, generator=g) * lab_mask
    labs[TARGET, 0] = 100.0
    mask = torch.ones(n, 3)
    mask[5, 0] = 0.0
    return ClinicalBatch(torch.rand(n, 1, d.image_size, d.image_size, generator=g), labs, lab_mask, tokens, mask,
                         (torch.arange(n) % 2).float())


def _rows(batch: ClinicalBatch, rows: list[int]) -> ClinicalBatch:
    return ClinicalBatch(*(t[rows] for t in batch))


def _private(model: nn.Module, data: ClinicalBatch, *, mode: str, sigma: float, clip: float = 0.5,
             criterion: nn.Module | None = None) -> PrivateTraining:
    """lr-1 plain SGD over `data` in one Poisson batch (q = 1, expected batch size len(data))."""
    return make_private(model, torch.optim.SGD(model.parameters(), lr=1.0),
                        DataLoader(TensorDataset(*data), batch_size=len(data.label)),
                        settings=DPSettings(sigma, clip, "prv", mode), prior=[], criterion=criterion)


def _update(model: nn.Module, data: ClinicalBatch, step: ClinicalBatch, *, mode: str, sigma: float = 0.0,
            criterion: nn.Module | None = None, seed: int | None = None) -> tuple[torch.Tensor, PrivateTraining]:
    """The released update (before - after) of one step on `step`, the loader being over `data`;
    `seed` fixes the noise generator (normally OS-seeded) so that two runs draw the same noise."""
    before = _flat(model)
    private = _private(model, data, mode=mode, sigma=sigma, criterion=criterion)
    if seed is not None:
        private.optimizer.generator = torch.Generator().manual_seed(seed)
    private.step(step, step.label)
    private.close()
    return before - _flat(model), private


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_the_crafted_weights_make_exactly_one_logit_non_finite(experiment: ExperimentConfig) -> None:
    batch = _batch(experiment)
    with torch.no_grad():
        logits = _crafted(experiment)(batch)
        finite_with_everyone = torch.isfinite(_crafted(experiment, everyone=True)(batch))
    assert torch.isfinite(logits).tolist() == [i != TARGET for i in range(8)]
    assert not finite_with_everyone.any()


@pytest.mark.parametrize("mode", FLOAT32_MODES)
def test_a_non_finite_sample_contributes_exactly_zero(experiment: ExperimentConfig, mode: str) -> None:
    batch = _batch(experiment)
    others = [i for i in range(8) if i != TARGET]
    with_target, _ = _update(_crafted(experiment), batch, batch, mode=mode)
    without, _ = _update(_crafted(experiment), batch, _rows(batch, others), mode=mode)
    assert bool(torch.isfinite(with_target).all()), mode
    assert float(without.norm()) > 0
    assert _relative(with_target, without) < 1e-5, (mode, _relative(with_target, without))


@pytest.mark.parametrize("mode", MODES)
def test_with_noise_the_released_update_is_finite_and_noised(experiment: ExperimentConfig, mode: str) -> None:
    batch = _batch(experiment)
    update, private = _update(_crafted(experiment), batch, batch, mode=mode, sigma=1.0)
    assert bool(torch.isfinite(update).all()), mode
    assert float(update.std()) == pytest.approx(1.0 * 0.5 / 8, rel=0.1)   # sigma C / expected batch size
    assert private.history() == [MechanismUse(1.0, 1.0, 1)]


class _InfiniteLossForLabel2(nn.Module):
    """BCE-with-logits, plus a constant +inf for a sample labelled 2 (its gradient stays BCE's,
    for label 1: finite). Honours `reduction` as nn loss modules do."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target.clamp(max=1.0), reduction="none")
        losses = bce + torch.where(target > 1, float("inf"), 0.0)
        return losses if self.reduction == "none" else losses.mean()


@pytest.mark.parametrize("mode", MODES)
def test_a_sample_with_an_infinite_loss_but_a_finite_gradient_contributes_zero(
        experiment: ExperimentConfig, mode: str) -> None:
    batch = _batch(experiment)
    label = batch.label.clone()
    label[TARGET] = 2.0
    batch = batch._replace(label=label)
    others = [i for i in range(8) if i != TARGET]
    with_target, _ = _update(_model(experiment), batch, batch, mode=mode, criterion=_InfiniteLossForLabel2())
    without, _ = _update(_model(experiment), batch, _rows(batch, others), mode=mode,
                         criterion=_InfiniteLossForLabel2())
    assert bool(torch.isfinite(with_target).all()) and float(without.norm()) > 0
    assert _relative(with_target, without) < 1e-5, (mode, _relative(with_target, without))


def test_in_ghost_mode_the_crafted_samples_stay_finite_and_are_clipped(experiment: ExperimentConfig) -> None:
    """ghost trains in float64 (privacy/dpsgd/engine.py), where float32 weights cannot overflow a
    logit: the crafted target is an ordinary sample whose contribution is clipped to C."""
    batch = _batch(experiment)
    others = [i for i in range(8) if i != TARGET]
    with_target, _ = _update(_crafted(experiment), batch, batch, mode="ghost")
    without, _ = _update(_crafted(experiment), batch, _rows(batch, others), mode="ghost")
    assert bool(torch.isfinite(with_target).all())
    assert 0 < float((with_target - without).norm()) <= 0.5 / 8 * (1 + 1e-5)  # C / expected batch
    everyone, _ = _update(_crafted(experiment, everyone=True), batch, batch, mode="ghost")
    assert bool(torch.isfinite(everyone).all()) and float(everyone.norm()) <= 0.5 * (1 + 1e-5)


@pytest.mark.parametrize("mode", FLOAT32_MODES)
def test_a_batch_of_only_non_finite_samples_is_an_empty_batch(experiment: ExperimentConfig, mode: str) -> None:
    batch = _batch(experiment)
    empty = _rows(batch, [])
    silent, _ = _update(_crafted(experiment, everyone=True), batch, batch, mode=mode)
    assert not silent.any(), mode                          # sigma 0: zero clipped sum, no step at all
    masked, private = _update(_crafted(experiment, everyone=True), batch, batch, mode=mode, sigma=1.0, seed=5)
    as_empty, _ = _update(_crafted(experiment, everyone=True), batch, empty, mode=mode, sigma=1.0, seed=5)
    assert bool(torch.isfinite(masked).all()) and float(masked.abs().max()) > 0
    assert torch.equal(masked, as_empty), mode             # the same noise draw: exactly the empty step
    assert private.history() == [MechanismUse(1.0, 1.0, 1)]


@pytest.mark.parametrize("mode", MODES)
def test_a_huge_but_finite_gradient_is_clipped_not_masked(experiment: ExperimentConfig, mode: str) -> None:
    batch = _batch(experiment)
    one = _rows(batch, [TARGET])
    model = _crafted(experiment, scale=1e12)                 # the target's gradient norm is ~1e13
    moved, _ = _update(model, one, one, mode=mode)
    assert 0.5 * (1 - 1e-4) <= float(moved.norm()) <= 0.5 * (1 + 1e-5), (mode, float(moved.norm()))
