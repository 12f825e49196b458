"""The deterministic per-site train/validation split."""

from __future__ import annotations

import hashlib

import numpy as np


def validation_mask(patient_ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """Split by a hash of (seed, patient id): stable when patients are added."""
    def unit(pid: str) -> float:
        digest = hashlib.blake2b(f"{seed}:{pid}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64
    return np.array([unit(p) < fraction for p in patient_ids], dtype=bool)
