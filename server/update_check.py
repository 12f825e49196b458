"""Site updates are checked before they are averaged: one bad reply must not poison the model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

K = TypeVar("K")


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


def update_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm of the update (arrays - reference) over every float array, in float64.

    Call only for arrays that update_problem accepted against the same reference."""
    total = 0.0
    for key, ref in reference.items():
        ref = np.asarray(ref)
        if ref.dtype.kind == "f":
            diff = np.asarray(arrays[key], dtype=np.float64) - ref.astype(np.float64)
            total += float(np.dot(diff.ravel(), diff.ravel()))
    return total ** 0.5


def norm_outliers(norms: Mapping[K, float], *, max_norm: float | None, factor: float) -> dict[K, str]:
    """Updates whose norm is out of bounds: {key: why}, for `norms` {key (a site or node): norm}.

    Out of bounds: above `max_norm` (strategy.max_update_norm; None: no absolute bound), or, with at
    least 3 updates in the round, above `factor` times the round's median norm
    (strategy.outlier_factor; the median is robust to a minority of outliers, Yin et al. 2018)."""
    out: dict[K, str] = {}
    values: Sequence[float] = sorted(norms.values())
    median = float(np.median(values)) if len(values) >= 3 else None
    for key, norm in norms.items():
        if max_norm is not None and norm > max_norm:
            out[key] = f"update norm {norm:.3g} above strategy.max_update_norm {max_norm:g}"
        elif median is not None and median > 0 and norm > factor * median:
            out[key] = (f"update norm {norm:.3g} is more than strategy.outlier_factor {factor:g} x the "
                        f"round's median {median:.3g}")
    return out


def capped_counts(counts: Mapping[K, int], *, factor: float) -> dict[K, int]:
    """Example counts used as averaging weights, each at most `factor` times the round's median
    count when there are at least 3 (a site reports its own count and could otherwise dominate a
    weighted average; strategy.outlier_factor). Fewer than 3: unchanged."""
    if len(counts) < 3:
        return dict(counts)
    cap = max(1, int(factor * float(np.median(list(counts.values())))))
    return {key: min(count, cap) for key, count in counts.items()}
