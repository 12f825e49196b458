"""Non-finite per-sample contributions are masked to exactly zero, in every grad_sample_mode.

Why: DP-SGD's guarantee rests on each sample's contribution to the clipped sum being bounded by
C. Crafted but finite global weights can make one patient's logit overflow, so that patient's
per-sample loss or gradient is inf/NaN while every other patient's is finite. Opacus' clip
factor C / (||g|| + 1e-6) is then 0 or NaN, 0 * inf = NaN, and the clipped sum, the noised sum and
the released weights are NaN exactly when that patient was sampled: a non-finite contribution
turns the DP sum into a membership oracle (Gaussian noise cannot hide a NaN).

So a sample whose per-sample loss or per-sample gradient norm is not finite is masked: its clip
factor is 0 and every batch-first tensor that the clipped sum multiplies has its row replaced by
zeros with torch.where (never by a product: 0 * inf = NaN). Its contribution is exactly zero, the
step is taken and noised as for any batch (refusing to release would be the same one-bit leak),
and a batch in which every sample is masked gives a zero clipped sum, like an empty Poisson batch.
A huge but finite gradient is clipped as usual. The common all-finite batch costs one
`isfinite(...).all()` check; rows are only rewritten when something is not finite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed


def per_sample_losses(criterion: Any, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The criterion's loss of each sample, [B], from `output` [B, ...] and `target` [B, ...].

    The criterion (an nn loss module with `reduction="mean"`) is called with reduction "none", as
    Opacus' ghost criterion does, and restored after. A per-element loss [B, ...] is averaged over
    each sample's elements, so the mean of the result is the criterion's "mean"."""
    reduction = criterion.reduction
    criterion.reduction = "none"
    try:
        losses = criterion(output, target)
    finally:
        criterion.reduction = reduction
    return losses.reshape(len(losses), -1).mean(1) if losses.dim() != 1 else losses


def zero_nonfinite_losses(losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses [B] with every non-finite one replaced by 0, finite mask [B] bool).

    The replacement is a torch.where, so a masked sample's loss has gradient exactly 0 (its
    gradient can still turn NaN further down, through 0 * inf; the norm mask catches that). Take
    the mean over all B samples, as the criterion does, and every kept sample's gradient is
    unchanged."""
    finite = torch.isfinite(losses)
    return torch.where(finite, losses, torch.zeros_like(losses)), finite


def kept_samples(norms: torch.Tensor, finite_losses: torch.Tensor | None = None) -> torch.Tensor | None:
    """[B] bool, True for a sample whose gradient norm (norms [B]) and loss (finite_losses [B]
    bool, None: all finite) are finite; None when every sample is kept (the fast path)."""
    keep = torch.isfinite(norms)
    if finite_losses is not None:
        keep = keep & finite_losses.to(keep.device)
    return None if bool(keep.all()) else keep


def clip_factors(norms: torch.Tensor, max_grad_norm: float, keep: torch.Tensor | None) -> torch.Tensor:
    """Opacus' flat clip factors min(1, C / (||g_b|| + 1e-6)) [B], and exactly 0 where `keep` is False."""
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return factors if keep is None else torch.where(keep, factors, torch.zeros_like(factors))


def zero_rows(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x [B, ...] with row b replaced by zeros where keep[b] is False (torch.where: no 0 * inf)."""
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(keep.to(x.device).view(-1, *([1] * (x.dim() - 1))), x, zero)


def select_rows(batch: Any, index: torch.Tensor) -> Any:
    """The samples `index` [K] of a batch-first tensor or (Named)tuple of batch-first tensors."""
    if isinstance(batch, torch.Tensor):
        return batch[index.to(batch.device)]
    rows = [select_rows(t, index) for t in batch]
    return type(batch)(*rows) if hasattr(batch, "_fields") else type(batch)(rows)


class FiniteDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer ("hooks", "ew") whose clipping masks non-finite samples: a sample whose
    per-sample gradient norm is not finite gets clip factor 0 and its `grad_sample` rows zeroed
    (torch.where) before the einsum, so it adds exactly zero to `summed_grad` (see module doc)."""

    def clip_and_accumulate(self) -> None:
        grad_samples: Sequence[torch.Tensor] = self.grad_samples
        if len(grad_samples[0]) == 0:   # an empty batch: Opacus' zero sum
            super().clip_and_accumulate()
            return
        device = grad_samples[0].device
        norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1).to(device) for g in grad_samples], dim=1)
        norms = norms.norm(2, dim=1)
        keep = kept_samples(norms)
        factors = clip_factors(norms, self.max_grad_norm, keep)
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            grad_sample = self._get_flat_grad_sample(p).to(p.dtype)
            if keep is not None:
                grad_sample = zero_rows(grad_sample, keep)
            grad = torch.einsum("i,i...", factors.to(grad_sample.device, p.dtype), grad_sample)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)
