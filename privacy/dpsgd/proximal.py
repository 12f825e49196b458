"""FedProx's proximal term, added to the DP gradient after clipping, noise and averaging.

FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, Eq. 2) has
each site minimise F(w) + mu/2 ||w - w_global||^2, whose gradient adds mu (w - w_global) to every
parameter's gradient. That term depends on no patient: only on the weights the site received this
round (w_global, public to the coordinator) and the site's current weights (themselves
post-processing of earlier noised steps). So it is added to the gradient the optimizer is about to
apply, after Opacus has clipped each sample, summed, noised and divided by the expected batch
size, and never enters the per-sample clipping: the sensitivity stays C, the noise and the
accountant are unchanged, and it costs no epsilon (post-processing). Empty Poisson batches get it
too (the step is taken anyway).

Hook: torch's `Optimizer.register_step_pre_hook` on the optimizer Opacus wraps
(`DPOptimizer.original_optimizer`). Opacus calls that optimizer's `step()` only after `pre_step`
(clip, accumulate, noise, scale, accountant hook) has produced the DP gradient in `p.grad`.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer


class ProximalTerm:
    """Adds mu * (p - p_global) to `p.grad` of every parameter of `optimizer`, before each step.

    `reference` is a detached copy of the parameters when the term is attached (call it before
    the first step: the weights received this round), same device and dtype as each parameter.
    mu must be finite and > 0 (mu = 0 is FedAvg: attach nothing). Raises ValueError otherwise.
    """

    def __init__(self, optimizer: Optimizer, mu: float) -> None:
        if not (math.isfinite(mu) and mu > 0):
            raise ValueError(f"proximal_mu must be finite and > 0 to attach a proximal term (got {mu})")
        self.mu = float(mu)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.reference = [p.detach().clone() for p in self.params]
        self._handle = optimizer.register_step_pre_hook(self._add)

    @torch.no_grad()
    def _add(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        for p, ref in zip(self.params, self.reference):
            pull = (p - ref).mul_(self.mu)
            if p.grad is None:
                p.grad = pull
            else:
                p.grad.add_(pull)

    def remove(self) -> None:
        """Detach the hook (the optimizer steps as without the term)."""
        self._handle.remove()
