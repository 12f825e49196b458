"""Site-level modality subsets: which of image / labs / notes a whole site exports."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

MODALITY_NAMES: tuple[str, ...] = ("image", "labs", "notes")  # column order of Cohort.has
ALL_MODALITIES: frozenset[str] = frozenset(MODALITY_NAMES)


def check_modalities(modalities: Mapping[int, Iterable[str]] | None,
                     sites: int) -> dict[int, frozenset[str]]:
    """Validate {site index: modality names} and return it with frozenset values (ValueError if bad)."""
    if modalities is None:
        return {}
    if not isinstance(modalities, Mapping):
        raise ValueError("modalities must map a site index to a set of modality names")
    out: dict[int, frozenset[str]] = {}
    for k, names in modalities.items():
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < sites:
            raise ValueError(f"modalities: site index must be an int in 0..{sites - 1}, got {k!r}")
        if isinstance(names, str):
            raise ValueError(f"modalities[{k}] must be a set of names, not the string {names!r}")
        chosen = frozenset(names)
        if not chosen or not chosen <= ALL_MODALITIES:
            raise ValueError(f"modalities[{k}] must be a non-empty subset of {sorted(ALL_MODALITIES)}, "
                             f"got {sorted(map(str, chosen))}")
        out[k] = chosen
    return out


def allowed_mask(allowed: frozenset[str]) -> np.ndarray:
    """Boolean mask over MODALITY_NAMES."""
    return np.array([name in allowed for name in MODALITY_NAMES])


def restrict(has: np.ndarray, allowed: frozenset[str], rng: np.random.Generator) -> np.ndarray:
    """Drop modalities the site lacks; patients left with none get one random allowed modality."""
    if allowed == ALL_MODALITIES:
        return has
    mask = allowed_mask(allowed)
    out = has & mask
    choices = np.flatnonzero(mask)
    pick = choices[rng.integers(0, len(choices), size=len(out))]
    none = np.flatnonzero(~out.any(axis=1))
    out[none, pick[none]] = True
    return out
