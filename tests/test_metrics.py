"""Site-side validation metrics: numpy ranks equal SciPy's, AUROC equals the pairwise definition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from client.metrics import auroc, average_ranks


@pytest.mark.parametrize("n", [0, 1, 2, 7, 500])
@pytest.mark.parametrize("ties", [False, True])
def test_average_ranks_are_scipys(n: int, ties: bool) -> None:
    values = np.random.default_rng(n).normal(size=n).astype(np.float32)
    if ties:
        values = np.round(values, 1)
    np.testing.assert_array_equal(average_ranks(values), rankdata(values.astype(np.float64)))


def test_infinite_and_nan_scores_rank_as_scipy_does() -> None:
    for values in ([np.inf, -np.inf, 1.0, np.inf], [1.0, np.nan, 2.0]):
        np.testing.assert_array_equal(average_ranks(np.array(values)), rankdata(values))


def test_auroc_is_the_probability_a_positive_outranks_a_negative_ties_half() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.normal(size=300) + labels, 1)  # many ties
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auroc(labels, scores) == pytest.approx(pairwise, abs=1e-12)
    assert auroc(np.ones(4), np.arange(4.0)) is None
