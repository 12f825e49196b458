"""Opacus' PRV and RDP epsilons, computed exactly as Opacus computes them, with the costly part kept.

Most of the time of an Opacus PRV epsilon (opacus.accountants.PRVAccountant.get_epsilon) goes to
sizing its discretisation domain (Gopi et al. 2021, remark 5.6: opacus.accountants.analysis.prv.
compute_safe_domain_size), which asks Opacus' RDP accountant for the epsilon of the whole history
and of one step of every mechanism; each RDP curve evaluates ~150 orders of a series, fractional
ones by slow loops. RDP composes additively and a mechanism's curve over T steps is T times its
per-step curve (opacus.accountants.analysis.rdp.compute_rdp returns `rdp * steps`). So an
AccountingCache keeps every (sigma, q) mechanism's per-step curve, and a site's re-accounting
after one more round (the same mechanisms, more steps) re-evaluates no series at all.

The arithmetic is Opacus' own, step by step (the same functions, the same order of sums), so the
results are bit-for-bit the values `opacus.accountants.create_accountant(mechanism).get_epsilon`
returns (tests/test_accounting_cache.py checks this). Opacus is imported when first needed.

The cache is process state held by whoever creates it (a site's SiteCache owns the site's one:
client/site_data/site_cache.py); bounded: at most `mechanisms` curves and `results` finished epsilons, least recently used out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from privacy.mechanism import MechanismUse

History = tuple[tuple[float, float, int], ...]  # merged (noise_multiplier, sample_rate, steps)


class AccountingCache:
    """Per-step RDP curves by (sigma, q), and finished epsilons by (history, delta, accountant, error)."""

    def __init__(self, *, mechanisms: int = 256, results: int = 1024) -> None:
        self._max_curves, self._max_results = mechanisms, results
        self._curves: OrderedDict[tuple[float, float], np.ndarray] = OrderedDict()
        self._results: OrderedDict[tuple[History, float, str, float], float] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def mechanisms(self) -> int:
        """Per-step RDP curves kept."""
        return len(self._curves)

    @property
    def results(self) -> int:
        """Finished epsilons kept."""
        return len(self._results)

    def epsilon(self, history: Sequence[MechanismUse], delta: float, accountant: str, eps_error: float) -> float:
        """Opacus' `accountant` ("prv" or "rdp") epsilon of the (merged, non-empty) `history` at
        `delta` (PRV: with `eps_error`, delta_error = delta / 1000, Opacus' default); the upper
        bound for PRV. Raises what Opacus raises for the same history."""
        key = (tuple((h.noise_multiplier, h.sample_rate, h.steps) for h in history), delta, accountant, eps_error)
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
        value = self._prv(key[0], delta, eps_error) if accountant == "prv" else self._rdp_epsilon(key[0], delta)
        with self._lock:
            self._results[key] = value
            while len(self._results) > self._max_results:
                self._results.popitem(last=False)
        return value

    def curve(self, noise_multiplier: float, sample_rate: float) -> np.ndarray:
        """One step's RDP at RDPAccountant.DEFAULT_ALPHAS: compute_rdp(q, sigma, steps=1, orders)."""
        key = (noise_multiplier, sample_rate)
        with self._lock:
            if key in self._curves:
                self._curves.move_to_end(key)
                return self._curves[key]
        from opacus.accountants.analysis import rdp as analysis
        from opacus.accountants.rdp import RDPAccountant
        value = analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                     orders=RDPAccountant.DEFAULT_ALPHAS)
        value.flags.writeable = False
        with self._lock:
            self._curves[key] = value
            while len(self._curves) > self._max_curves:
                self._curves.popitem(last=False)
        return value

    def _rdp_epsilon(self, history: History, delta: float) -> float:
        """RDPAccountant(history).get_epsilon(delta): the sum of `steps` x per-step curves."""
        from opacus.accountants.analysis import rdp as analysis
        from opacus.accountants.rdp import RDPAccountant
        if not history:
            return 0.0
        rdp = sum([self.curve(sigma, q) * steps for sigma, q, steps in history])
        eps, _ = analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(eps)

    def _safe_domain_size(self, history: History, eps_error: float, delta_error: float) -> float:
        """opacus.accountants.analysis.prv.compute_safe_domain_size, with cached curves."""
        total = sum(steps for _, _, steps in history)
        largest = self._rdp_epsilon(history, delta_error / 4)
        for sigma, q, _ in history:
            largest = max(largest, self._rdp_epsilon(((sigma, q, 1),), delta_error / (8 * total)))
        return max(largest, eps_error) + 3

    def _prv(self, history: History, delta: float, eps_error: float) -> float:
        """PRVAccountant(history).get_epsilon(delta, eps_error=eps_error): eps_upper."""
        from opacus.accountants.analysis.prv import (Domain, PoissonSubsampledGaussianPRV,
                                                     TruncatedPrivacyRandomVariable, compose_heterogeneous,
                                                     discretize)
        delta_error = delta / 1000
        prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
        counts = [steps for _, _, steps in history]
        size = self._safe_domain_size(history, eps_error, delta_error)
        mesh = eps_error / np.sqrt(sum(counts) * np.log(12 / delta_error) / 2)
        domain = Domain.create_aligned(-size, size, mesh)
        dprvs = [discretize(TruncatedPrivacyRandomVariable(prv, domain.t_min, domain.t_max), domain) for prv in prvs]
        composed = compose_heterogeneous(dprvs=dprvs, num_self_compositions=counts)
        _, _, eps_upper = composed.compute_epsilon(delta, delta_error, eps_error)
        return float(eps_upper)
