"""Noise planned once for a site's whole run: rounds x local epochs of Poisson-sampled steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

from privacy.accountant import calibrate_noise


@dataclass(frozen=True)
class NoisePlan:
    """What a site commits to for one run."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_steps: int


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Opacus' Poisson loader: len(loader) = ceil(N / B) steps, sample rate 1 / that."""
    if num_examples < 1:
        raise ValueError("cannot plan DP training on an empty training split")
    return math.ceil(num_examples / batch_size)


def plan_noise(*, num_examples: int, batch_size: int, local_epochs: int, rounds: int,
               target_epsilon: float, delta: float, accountant: str) -> NoisePlan:
    """Calibrate sigma so that all planned rounds together spend at most target_epsilon."""
    per_epoch = steps_per_epoch(num_examples, batch_size)
    sample_rate = 1.0 / per_epoch
    per_round = per_epoch * local_epochs
    planned = per_round * rounds
    sigma = calibrate_noise(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate,
                            steps=planned, accountant=accountant)
    return NoisePlan(sigma, sample_rate, per_round, planned)
