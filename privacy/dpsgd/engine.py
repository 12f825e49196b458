"""The one place Opacus is wrapped: DP-SGD over a model, optimizer and Poisson-sampled loader.

Four per-sample clipping modes (`DPSettings.grad_sample_mode`), all exact:
- "bk" (default): book-keeping clipping (privacy/bookkeeping.py). One backward pass gives every
  layer's output gradient; per-sample norms and the clipped sum come from those and the layer
  inputs, with no second pass and no per-sample gradient on the parameters. Opacus still does the
  Poisson sampling, the noise, the averaging and the accounting (DPOptimizerFastGradientClipping
  takes `p.grad` as the clipped sum).
- "hooks": Opacus materialises every per-sample gradient, clips, sums, noises.
- "ghost": fast gradient clipping. The first backward pass computes per-sample gradient norms
  (Linear and Embedding without building per-sample gradients), the second back-propagates the
  loss reweighted by the clip factors, so only the clipped sum is ever built.
- "ew": Opacus' expanded-weights mode (torch.nn.utils._per_sample_grad): per-sample gradients
  like "hooks", computed by torch's ExpandedWeights autograd functions instead of module hooks.
  It needs a tensor first argument for the batch size, so the model is wrapped in `_BatchSized`.
All use `PrivateTraining.step`, the same code for every mode.

FedProx (`proximal_mu` > 0): privacy/dpsgd/proximal.py adds mu (w - w_global) to the DP gradient
after clipping, noise and averaging, just before the wrapped optimizer's step, in every mode.

In every mode a sample whose per-sample loss or gradient (norm) is not finite contributes exactly
zero to the clipped sum (privacy/finite_clipping.py: crafted weights could otherwise make the
released update NaN iff one patient was sampled). bk: BookkeepingClipper; hooks, ew:
FiniteDPOptimizer; ghost: FiniteGhostCriterion (privacy/finite_ghost.py). The private pieces are
therefore built here as Opacus' PrivacyEngine.make_private builds them, with those classes.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from privacy.accountant import MechanismUse, merge
from privacy.dpsgd.bookkeeping import BookkeepingClipper
from privacy.dpsgd.clipped_sum_optimizer import ClippedSumOptimizer
from privacy.dpsgd.finite_clipping import FiniteDPOptimizer, per_sample_losses, zero_nonfinite_losses
from privacy.dpsgd.finite_ghost import FiniteGhostCriterion
from privacy.dpsgd.proximal import ProximalTerm

from privacy.dpsgd.settings import BK, EW, GHOST, HOOKS, SUPPORTED_MODES, DPSettings, os_seeded_generator

__all__ = ["BK", "EW", "GHOST", "HOOKS", "SUPPORTED_MODES", "DPSettings", "PrivateTraining", "make_private",
           "os_seeded_generator"]


class _BatchSized(nn.Module):
    """`forward(target, inputs) = module(inputs)`: Opacus' "ew" wrapper reads the batch size from
    its first argument's `.shape[0]`, which a ClinicalBatch (a NamedTuple) has not; the target has."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, target: torch.Tensor, inputs: Any) -> Any:
        return self.module(inputs)


class _BookkeptLoss:
    """The batch-mean loss under "bk" (non-finite per-sample losses count as 0; finite_losses [B]
    bool marks the others): `.backward()` writes the clipped per-sample sum to `.grad`."""

    def __init__(self, loss: torch.Tensor, clipper: BookkeepingClipper, batch_size: int,
                 finite_losses: torch.Tensor) -> None:
        self._loss, self._clipper, self._batch_size, self._finite = loss, clipper, batch_size, finite_losses

    def backward(self) -> None:
        self._clipper.clipped_backward(self._loss, self._batch_size, self._finite)

    def detach(self) -> torch.Tensor:
        return self._loss.detach()

    def item(self) -> float:
        return float(self._loss.detach())


@dataclass
class PrivateTraining:
    """A model, optimizer, criterion and loader made private, plus the accountant that watches them.

    `criterion` is the criterion as given (bk, hooks, ew) or a FiniteGhostCriterion (ghost), whose
    loss `.backward()` runs both passes. Train with `step`; `loss` + `.backward()` +
    `optimizer.step()` is the same thing for a non-empty batch.
    """

    model: nn.Module
    optimizer: DPOptimizer
    loader: DataLoader
    engine: PrivacyEngine
    criterion: Any
    grad_sample_mode: str
    clipper: BookkeepingClipper | None = None
    compute_dtype: torch.dtype | None = None  # ghost: the model trains in float64 (see _make_opacus)
    restore_dtype: torch.dtype | None = None  # ... and is converted back on close()
    proximal: ProximalTerm | None = None  # FedProx's term on the DP gradient (None: mu = 0)

    def loss(self, inputs: Any, target: torch.Tensor) -> Any:
        """The criterion's batch mean on the wrapped model (inputs: B samples, target [B]), with
        each non-finite per-sample loss replaced by 0 (torch.where: its gradient is exactly zero;
        the sample is masked, privacy/finite_clipping.py). A Tensor (hooks, ew), a FiniteGhostLoss
        (ghost) or a _BookkeptLoss (bk); all support `.backward()`, `.detach()`, `.item()`. The
        batch must not be empty (an empty mean is NaN); `step` handles empty batches."""
        if self.compute_dtype is not None:
            inputs, target = _floats_to(inputs, self.compute_dtype), target.to(self.compute_dtype)
        if self.grad_sample_mode == GHOST:
            return self.criterion(inputs, target)
        output = self.model(target, inputs) if self.grad_sample_mode == EW else self.model(inputs)
        losses, finite = zero_nonfinite_losses(per_sample_losses(self.criterion, output, target))
        if self.clipper is not None:
            return _BookkeptLoss(losses.mean(), self.clipper, len(target), finite)
        return losses.mean()

    def step(self, inputs: Any, target: torch.Tensor) -> float | None:
        """One DP-SGD step on a Poisson batch: the batch's mean loss, or None for an empty batch.

        An empty batch still takes the noisy step: the clipped sum is zero, Gaussian noise
        (std sigma*C, divided by the expected batch size) is added and the accountant records the
        step. Skipping it would leak whether the differing record was sampled.
        """
        self.optimizer.zero_grad(set_to_none=True)
        if len(target) == 0:
            self._zero_clipped_sum()
            self.optimizer.step()
            return None
        loss = self.loss(inputs, target)
        with warnings.catch_warnings():  # inputs never require grad; Opacus hooks are fine
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def _zero_clipped_sum(self) -> None:
        """Give the optimizer what a 0-sample backward pass would have left, without running one.

        hooks, ew: DPOptimizer clips `p.grad_sample` ([0, *shape]: no sample -> zero sum); a real
        empty forward crashes "ew" (ExpandedWeights needs batch size > 0).
        ghost, bk: DPOptimizerFastGradientClipping takes `p.grad` as the clipped sum. A real
        forward/backward of an empty batch crashes Opacus' nn.Embedding ghost norm sampler.
        """
        for p in self.optimizer.params:
            if isinstance(self.optimizer, DPOptimizerFastGradientClipping):
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = p.new_zeros((0, *p.shape))

    def history(self) -> list[MechanismUse]:
        """The accountant's full history: the prior spend plus every step taken since."""
        return merge(MechanismUse(float(s), float(q), int(n)) for s, q, n in self.engine.accountant.history)

    def close(self) -> None:
        """Detach Opacus' (or the book-keeping clipper's) hooks and buffers from the model."""
        if self.clipper is not None:
            self.clipper.close()
        if self.proximal is not None:
            self.proximal.remove()
        close = getattr(self.model, "_close", None)
        if callable(close):
            close()
        if self.restore_dtype is not None:
            self.model.to(self.restore_dtype)


def _floats_to(batch: Any, dtype: torch.dtype) -> Any:
    """A batch-first tensor, or a (Named)tuple of them, with its floating-point tensors in `dtype`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(dtype) if batch.is_floating_point() else batch
    converted = [_floats_to(t, dtype) for t in batch]
    return type(batch)(*converted) if hasattr(batch, "_fields") else type(batch)(converted)


def make_private(model: nn.Module, optimizer: Optimizer, loader: DataLoader, *,
                 settings: DPSettings, prior: Sequence[MechanismUse],
                 criterion: nn.Module | None = None, proximal_mu: float = 0.0) -> PrivateTraining:
    """Wrap for DP-SGD with Poisson sampling; the accountant resumes from `prior`.

    `proximal_mu` > 0 (FedProx): every step adds proximal_mu * (w - w_global) to the DP gradient
    (after clipping, noise and averaging; privacy/dpsgd/proximal.py), w_global being the
    parameters as they are now (the weights received this round), on their device and in the
    training dtype. 0: no term, nothing attached. Raises ValueError for a negative or non-finite mu.

    `criterion` (default BCEWithLogitsLoss) must be a loss module that decomposes per sample and
    has reduction="mean" (it is called with reduction "none" to mask non-finite per-sample
    losses): Opacus rescales by the expected batch size len(dataset)/len(loader) in every mode.
    """
    mode = settings.grad_sample_mode
    if mode not in SUPPORTED_MODES:
        raise ValueError(f"grad_sample_mode must be one of {SUPPORTED_MODES} (got {mode!r})")
    if not (math.isfinite(proximal_mu) and proximal_mu >= 0):
        raise ValueError(f"proximal_mu must be finite and >= 0 (got {proximal_mu})")
    criterion = nn.BCEWithLogitsLoss() if criterion is None else criterion
    if getattr(criterion, "reduction", None) != "mean":
        raise ValueError(f"criterion.reduction must be 'mean' (got {getattr(criterion, 'reduction', None)!r})")
    if {id(p) for group in optimizer.param_groups for p in group["params"]} - {id(p) for p in model.parameters()}:
        raise ValueError("the optimizer holds parameters that are not the model's")
    with warnings.catch_warnings():
        # Opacus warns on every engine; torchcsprng (secure_mode) does not exist for torch 2.x.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=settings.accountant)
    logging.getLogger("fedclinic.privacy").info(
        "DP noise and sampling use torch generators seeded from the OS entropy pool: Opacus "
        "secure_mode (a CSPRNG) needs torchcsprng, which has no release for torch 2.x")
    engine.accountant.history = [(h.noise_multiplier, h.sample_rate, h.steps) for h in prior]
    if mode == BK:
        private = _make_bookkept(model, optimizer, loader, settings, engine, criterion)
    else:
        private = _make_opacus(model, optimizer, loader, settings, engine, criterion)
    if proximal_mu > 0:  # after _make_opacus: "ghost" has moved the weights to float64
        private.proximal = ProximalTerm(private.optimizer.original_optimizer, proximal_mu)
    return private


def _poisson_loader(loader: DataLoader) -> DPDataLoader:
    """Opacus' Poisson-sampling loader (sample rate 1/len(loader)) drawing from an OS-seeded
    generator: torch's global RNG may have been made predictable (by the process or a
    coordinator-chosen seed)."""
    return DPDataLoader.from_data_loader(loader, generator=os_seeded_generator(torch.device("cpu")))


def _attach_accountant(private_opt: DPOptimizer, engine: PrivacyEngine, sample_rate: float) -> None:
    private_opt.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))


def _make_opacus(model: nn.Module, optimizer: Optimizer, loader: DataLoader, settings: DPSettings,
                 engine: PrivacyEngine, criterion: nn.Module) -> PrivateTraining:
    """"hooks", "ew", "ghost": PrivacyEngine.make_private's steps (model wrapping, Poisson loader,
    optimizer, accountant hook), with the finite-masking optimizer (hooks, ew) or criterion (ghost)."""
    mode = settings.grad_sample_mode
    if mode == EW:
        model = _BatchSized(model)  # shares the parameters: the caller's model is still trained
    restore = None
    if mode == GHOST:
        # Opacus' ghost norm of a Linear layer is ||a||^2 ||g||^2 in the model's precision: crafted
        # weights can make one patient's ||g||^2 underflow in float32 (activations ~1e18, output
        # gradients ~1e-19) so that it is never clipped. In float64 the same weights cannot.
        restore = next(model.parameters()).dtype
        model.to(torch.float64)  # in place: the optimizer keeps the same Parameter objects
    device = next(model.parameters()).device
    private_model = engine._prepare_model(model, batch_first=True, max_grad_norm=settings.max_grad_norm,
                                          loss_reduction="mean", grad_sample_mode=mode)
    private_model.forbid_grad_accumulation()  # Poisson sampling
    private_loader = _poisson_loader(loader)
    sample_rate = 1 / len(private_loader)
    optimizer_class = DPOptimizerFastGradientClipping if mode == GHOST else FiniteDPOptimizer
    private_opt = optimizer_class(
        optimizer, noise_multiplier=settings.noise_multiplier, max_grad_norm=settings.max_grad_norm,
        expected_batch_size=int(len(private_loader.dataset) * sample_rate), loss_reduction="mean",
        generator=os_seeded_generator(device), secure_mode=False)
    _attach_accountant(private_opt, engine, sample_rate)
    private_criterion = FiniteGhostCriterion(private_model, private_opt, criterion) if mode == GHOST else criterion
    return PrivateTraining(private_model, private_opt, private_loader, engine, private_criterion, mode,
                           compute_dtype=torch.float64 if restore is not None else None, restore_dtype=restore)


def _make_bookkept(model: nn.Module, optimizer: Optimizer, loader: DataLoader, settings: DPSettings,
                   engine: PrivacyEngine, criterion: nn.Module) -> PrivateTraining:
    """"bk": the model stays unwrapped; Opacus' Poisson loader, noise and accountant hook as in
    PrivacyEngine.make_private, with p.grad holding the clipped sum the clipper wrote."""
    clipper = BookkeepingClipper(model, settings.max_grad_norm)
    device = next(model.parameters()).device
    private_loader = _poisson_loader(loader)
    sample_rate = 1 / len(private_loader)
    private_opt = ClippedSumOptimizer(
        optimizer, noise_multiplier=settings.noise_multiplier, max_grad_norm=settings.max_grad_norm,
        expected_batch_size=int(len(private_loader.dataset) * sample_rate), loss_reduction="mean",
        generator=os_seeded_generator(device))
    _attach_accountant(private_opt, engine, sample_rate)
    return PrivateTraining(model, private_opt, private_loader, engine, criterion, BK, clipper)
