"""The unit of privacy accounting (no heavy imports: the ledger and the console read it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MechanismUse:
    """`steps` applications of the Poisson-subsampled Gaussian at (noise_multiplier, sample_rate)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
