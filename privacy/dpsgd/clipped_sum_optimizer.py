"""Opacus' DP optimizer for gradients that already are clipped per-sample sums (the "bk" mode)."""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed


class ClippedSumOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' optimizer for a `.grad` that already is the clipped sum, with two shortcuts that
    change no value's distribution: no per-step deepcopy of every gradient (`add_noise` replaces
    `p.grad` by a new tensor, so the clipped sum can be kept as `summed_grad` as it is), and the
    Gaussian noise for all parameters drawn in one call, N(0, (sigma C)^2) per coordinate as in
    Opacus' non-secure `_generate_noise`, then divided by the expected batch size in the same
    pass (Opacus' `scale_grad`)."""

    def accumulate(self) -> None:
        for p in self.params:
            p.summed_grad = p.grad if p.summed_grad is None else p.summed_grad + p.grad

    def add_noise(self) -> None:
        params = self.params
        if len({(p.dtype, p.device) for p in params}) != 1:
            super().add_noise()
            return
        for p in params:
            _check_processed_flag(p.summed_grad)
        std = self.noise_multiplier * self.max_grad_norm
        flat = torch.cat([p.summed_grad.reshape(-1) for p in params])   # a new tensor: updated in place
        flat.add_(torch.normal(0.0, std, size=flat.shape, device=flat.device, dtype=flat.dtype,
                               generator=self.generator))
        if self.loss_reduction == "mean":
            flat.div_(self.expected_batch_size * self.accumulated_iterations)
        for p, part in zip(params, flat.split([p.numel() for p in params])):
            p.grad = part.view_as(p)
            _mark_as_processed(p.summed_grad)
        self._scaled = True

    def scale_grad(self) -> None:
        """Done in `add_noise` when it drew the noise in one call (one pass over the gradients)."""
        if not getattr(self, "_scaled", False):
            super().scale_grad()
        self._scaled = False
