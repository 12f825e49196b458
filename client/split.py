"""The deterministic per-site train/validation/test split."""

from __future__ import annotations

import hashlib

import numpy as np


def validation_mask(patient_ids: list[str], fraction: float, seed: int, *, salt: str = "") -> np.ndarray:
    """Split by a hash of (salt, seed, patient id): stable when patients are added."""
    def unit(pid: str) -> float:
        digest = hashlib.blake2b(f"{salt}{seed}:{pid}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64
    return np.array([unit(p) < fraction for p in patient_ids], dtype=bool)


def split_masks(patient_ids: list[str], validation_fraction: float, test_fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """([N] validation, [N] test) masks, disjoint. The test split is drawn first from its own hash
    (so changing validation.fraction never moves a patient into or out of the test split), and the
    validation split is the same as without a test split, less the test patients; training gets
    the rest. A test_fraction of 0 gives the two-way split of earlier releases, unchanged."""
    test = validation_mask(patient_ids, test_fraction, seed, salt="test:") if test_fraction > 0 \
        else np.zeros(len(patient_ids), dtype=bool)
    return validation_mask(patient_ids, validation_fraction, seed) & ~test, test
