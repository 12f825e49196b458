"""DP-SGD settings and the noise generator's seeding: what a site needs without importing Opacus.

privacy/dpsgd/engine.py (which imports Opacus, several seconds) re-exports these; code that only
describes or seeds a DP computation (evaluation's DP release, the ClientApp at start-up) imports
them from here.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

BK = "bk"
GHOST = "ghost"
HOOKS = "hooks"
EW = "ew"
SUPPORTED_MODES = (BK, HOOKS, GHOST, EW)


@dataclass(frozen=True)
class DPSettings:
    """Per-round DP-SGD settings a site applies."""

    noise_multiplier: float
    max_grad_norm: float
    accountant: str
    grad_sample_mode: str


def os_seeded_generator(device: torch.device) -> torch.Generator:
    """A generator seeded from the operating system's entropy pool, never from configuration.

    DP noise and Poisson sampling must be unpredictable to the coordinator: a noise sequence it
    could replay (same seed, same shapes) could be subtracted from the released update.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63))
    return generator
