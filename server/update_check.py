"""Site updates are checked before they are averaged: one bad reply must not poison the model."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def update_problem(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray] | None) -> str | None:
    """Why this update cannot be averaged (None: it can).

    Refused: names, shapes or dtype kinds that differ from `reference` (the global model that was
    sent; None: not known, e.g. in a unit test), and any NaN or infinite value.
    """
    if reference is not None:
        if set(arrays) != set(reference):
            return "its arrays are not the global model's (names differ)"
        for key, ref in reference.items():
            value = np.asarray(arrays[key])
            if value.shape != np.asarray(ref).shape or value.dtype.kind != np.asarray(ref).dtype.kind:
                return f"array {key!r} has another shape or type than the global model's"
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            return f"array {key!r} holds NaN or infinite values"
    return None
