"""The "ghost" mode's loss, with non-finite samples masked (privacy/finite_clipping.py says why).

Replaces Opacus' DPLossFastGradientClipping / DPTensorFastGradientClipping. Opacus' second
backward pass re-weights the batch's per-sample losses by the clip factors and back-propagates
through the first pass's graph: a masked sample's factor 0 still meets its inf activations inside
each layer's batched weight gradient (0 * inf = NaN). Here, when any sample is masked, the second
pass runs on a fresh forward of only the kept samples (hooks disabled), so a masked sample never
enters the clipped sum; when none is kept, the clipped sum is zero, as for an empty batch.
"""

from __future__ import annotations

from typing import Any

import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizerFastGradientClipping

from privacy.dpsgd.finite_clipping import kept_samples, per_sample_losses, select_rows, zero_nonfinite_losses


class FiniteGhostCriterion:
    """`criterion(inputs, target)` -> FiniteGhostLoss: runs the wrapped model on `inputs` (a
    batch-first tensor or (Named)tuple of batch-first tensors, B samples) and takes the given
    criterion's per-sample losses [B] against `target` [B, ...]."""

    def __init__(self, module: GradSampleModuleFastGradientClipping, optimizer: DPOptimizerFastGradientClipping,
                 criterion: Any) -> None:
        self.module, self.optimizer, self.criterion = module, optimizer, criterion

    def __call__(self, inputs: Any, target: torch.Tensor) -> FiniteGhostLoss:
        return FiniteGhostLoss(self, inputs, target, per_sample_losses(self.criterion, self.module(inputs), target))


class FiniteGhostLoss:
    """The batch-mean loss under "ghost" (non-finite per-sample losses count as 0); `.backward()`
    leaves the clipped per-sample gradient sum, with non-finite samples masked, in every `.grad`."""

    def __init__(self, owner: FiniteGhostCriterion, inputs: Any, target: torch.Tensor, losses: torch.Tensor) -> None:
        self._owner, self._inputs, self._target = owner, inputs, target
        self._losses, self._finite = zero_nonfinite_losses(losses)   # [B], [B] bool
        self._mean = self._losses.mean()

    def detach(self) -> torch.Tensor:
        return self._mean.detach()

    def item(self) -> float:
        return float(self._mean.detach())

    def backward(self) -> None:
        """First pass: per-sample norms (Opacus' hooks). Masked = loss or norm not finite.
        Second pass (hooks disabled): sum_b c_b loss_b over the whole batch's graph when every
        sample is kept; over a fresh forward of the kept samples only when some are masked; none
        when all are masked (every `.grad` zero, as `PrivateTraining._zero_clipped_sum`)."""
        module, optimizer = self._owner.module, self._owner.optimizer
        self._mean.backward(retain_graph=True)
        optimizer.zero_grad()
        coeff = module.get_clipping_coef().to(self._losses.device)  # sets module.per_sample_gradient_norms
        keep = kept_samples(module.per_sample_gradient_norms, self._finite)
        kept = None if keep is None else torch.nonzero(keep).squeeze(1)
        module.disable_hooks()
        try:
            if kept is None:
                (coeff * self._losses).sum().backward()
            elif len(kept):
                self._kept_backward(kept, coeff[kept])
        finally:
            module.enable_hooks()
        for p in optimizer.params:
            if p.grad is None or (kept is not None and not len(kept)):
                p.grad = torch.zeros_like(p)   # no kept sample reached it: zero clipped sum

    def _kept_backward(self, kept: torch.Tensor, coeff: torch.Tensor) -> None:
        """Back-propagate sum_k coeff_k loss_k from a fresh forward of the samples `kept` [K]
        (coeff [K]); the first pass's `.grad` (NaN where a masked sample reached it) is dropped."""
        for p in self._owner.optimizer.params:
            p.grad = None
        inputs, target = select_rows(self._inputs, kept), self._target[kept.to(self._target.device)]
        losses, _ = zero_nonfinite_losses(per_sample_losses(self._owner.criterion, self._owner.module(inputs), target))
        (coeff * losses).sum().backward()
