"""Combine the sites' federated evaluation into one global figure per round."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SiteEvaluation:
    """One site's validation of the global model."""

    site: str
    auroc: float | None
    loss: float
    num_examples: int
    epsilon: float | None = None   # the site's run epsilon after this release
    dp: bool = True                # False: the site's policy released exact (non-DP) metrics
    auroc_std: float = 0.0         # std of the site's AUROC due to its DP noise (0: exact)
    lifetime_epsilon: float | None = None  # the dataset's lifetime epsilon after this release
    compute_s: float = 0.0         # the site's reported scoring time (to 0.1 s; 0 if not reported)
    histogram_positive: tuple[float, ...] = ()  # [BINS] released score counts of positive patients
    histogram_negative: tuple[float, ...] = ()  # [BINS] ... of negative patients (client/validation_release.py)
    epsilon_cap: float | None = None  # the site's run epsilon ceiling, as it reported it


@dataclass(frozen=True)
class GlobalEvaluation:
    """Example-weighted mean of site AUROCs (sites with both classes) and of site losses."""

    auroc: float | None
    loss: float | None
    num_examples: int
    sites: int
    auroc_std: float = 0.0   # std of the weighted AUROC due to the sites' DP noise


def _weighted(pairs: Sequence[tuple[float, int]]) -> float | None:
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total > 0 else None


def aggregate(evals: Sequence[SiteEvaluation]) -> GlobalEvaluation:
    """AUROC is weighted by validation size over sites where it is defined."""
    defined = [e for e in evals if e.auroc is not None]
    auroc = _weighted([(e.auroc, e.num_examples) for e in defined])  # type: ignore[misc]
    loss = _weighted([(e.loss, e.num_examples) for e in evals])
    total = sum(e.num_examples for e in defined)
    std = (sum((e.num_examples * e.auroc_std) ** 2 for e in defined) ** 0.5 / total) if total > 0 else 0.0
    return GlobalEvaluation(auroc, loss, sum(e.num_examples for e in evals), len(evals), std)
