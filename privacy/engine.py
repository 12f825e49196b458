"""The one place Opacus is wrapped: DP-SGD over a model, optimizer and Poisson-sampled loader."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from privacy.accountant import MechanismUse, merge


@dataclass(frozen=True)
class DPSettings:
    """Per-round DP-SGD settings a site applies."""

    noise_multiplier: float
    max_grad_norm: float
    accountant: str
    grad_sample_mode: str


@dataclass
class PrivateTraining:
    """A model, optimizer and loader made private, plus the accountant that watches them."""

    model: nn.Module
    optimizer: DPOptimizer
    loader: DataLoader
    engine: PrivacyEngine

    def history(self) -> list[MechanismUse]:
        """The accountant's full history: the prior spend plus every step taken since."""
        return merge(MechanismUse(float(s), float(q), int(n)) for s, q, n in self.engine.accountant.history)

    def close(self) -> None:
        """Detach Opacus' hooks and per-sample buffers from the wrapped model."""
        close = getattr(self.model, "_close", None)
        if callable(close):
            close()


def make_private(model: nn.Module, optimizer: Optimizer, loader: DataLoader, *,
                 settings: DPSettings, prior: Sequence[MechanismUse]) -> PrivateTraining:
    """Wrap for DP-SGD with Poisson sampling; the accountant resumes from `prior`."""
    with warnings.catch_warnings():
        # Opacus warns on every engine; torchcsprng (secure_mode) does not exist for torch 2.x.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=settings.accountant)
    logging.getLogger("fedclinic.privacy").info(
        "DP noise comes from torch's default RNG: Opacus secure_mode needs torchcsprng, "
        "which has no release for torch 2.x")
    engine.accountant.history = [(h.noise_multiplier, h.sample_rate, h.steps) for h in prior]
    private_model, private_opt, private_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=settings.noise_multiplier, max_grad_norm=settings.max_grad_norm,
        poisson_sampling=True, grad_sample_mode=settings.grad_sample_mode)
    return PrivateTraining(private_model, private_opt, private_loader, engine)
