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


@dataclass(frozen=True)
class GlobalEvaluation:
    """Example-weighted mean of site AUROCs (sites with both classes) and of site losses."""

    auroc: float | None
    loss: float | None
    num_examples: int
    sites: int


def _weighted(pairs: Sequence[tuple[float, int]]) -> float | None:
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total > 0 else None


def aggregate(evals: Sequence[SiteEvaluation]) -> GlobalEvaluation:
    """AUROC is weighted by validation size over sites where it is defined."""
    auroc = _weighted([(e.auroc, e.num_examples) for e in evals if e.auroc is not None])
    loss = _weighted([(e.loss, e.num_examples) for e in evals])
    return GlobalEvaluation(auroc, loss, sum(e.num_examples for e in evals), len(evals))
