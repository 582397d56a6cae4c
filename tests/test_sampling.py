"""Tests of the inverse-CDF rule every code path uses to turn a uniform into a token."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from tests.speculative_law import ALPHA, miss_probability, noncentrality
from thermospec.core.sampling import inverse_cdf, last_positive
from thermospec.core.statistics import pooled_chi2

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def by_the_rule(weights: NDArray[np.float64], u: float) -> int:
    """The documented rule, one token at a time: ``c[j-1] <= u c[-1] < c[j]``, else the last positive token."""
    cdf = np.cumsum(weights)
    target = u * cdf[-1]
    below = 0.0
    for j, c in enumerate(cdf.tolist()):
        if below <= target < c:
            return j
        below = c
    return max(j for j in range(len(weights)) if cdf[j] > (cdf[j - 1] if j else 0.0))


def test_hand_made_intervals() -> None:
    w = np.array([0.0, 2.0, 0.0, 1.0, 1.0, 0.0])  # total 4: token 1 owns [0, 2), 3 owns [2, 3), 4 owns [3, 4)
    cdf = np.cumsum(w)
    u = np.array([0.0, 0.25, 0.4999, 0.5, 0.74, 0.75, 0.99, float(np.nextafter(1.0, 0.0))])
    np.testing.assert_array_equal(inverse_cdf(cdf, u), [1, 1, 1, 3, 3, 4, 4, 4])
    assert last_positive(cdf) == 4
    assert inverse_cdf(cdf, np.zeros((2, 3))).shape == (2, 3)
    assert inverse_cdf(cdf, u).dtype == np.int64


def test_the_top_of_the_range_gives_the_last_positive_token() -> None:
    # trailing zero weights own empty intervals: the largest uniform lands on the last positive token,
    # and u * total reaching the total (u = 1, never drawn) is clamped there instead of returning V
    w = np.array([0.1, 0.7, 0.2, 0.0, 0.0])
    cdf = np.cumsum(w)
    assert int(inverse_cdf(cdf, np.array([float(np.nextafter(1.0, 0.0))]))[0]) == 2
    assert int(inverse_cdf(cdf, np.array([1.0]))[0]) == 2
    assert last_positive(np.cumsum(np.array([0.0, 0.0, 3.0]))) == 2


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    st.lists(st.one_of(st.just(0.0), st.floats(1e-300, 1e3)), min_size=1, max_size=40).filter(lambda w: sum(w) > 0),
    st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=20),
)
def test_rule_holds_and_zero_weights_are_never_drawn(weights: list[float], uniforms: list[float]) -> None:
    w = np.array(weights)
    drawn = inverse_cdf(np.cumsum(w), np.array(uniforms))
    assert np.all(w[drawn] > 0)
    assert drawn.tolist() == [by_the_rule(w, u) for u in uniforms]


def test_draws_follow_the_normalised_weights_and_the_test_has_power() -> None:
    rng = np.random.default_rng(8)
    w = rng.dirichlet(np.full(30, 0.5)) * 7.0  # unnormalised
    w[[3, 17]] = 0.0
    n = 100_000
    counts = np.bincount(inverse_cdf(np.cumsum(w), rng.random(n)), minlength=30).astype(np.float64)
    assert counts[3] == counts[17] == 0
    p = w / w.sum()
    assert pooled_chi2(counts, n * p).p_value > ALPHA
    shifted = np.roll(p, 1)  # an off-by-one in the search would emit this law
    shifted = 0.98 * p + 0.02 * shifted / shifted.sum()
    lam, dof = noncentrality(shifted, p, n)
    assert miss_probability(lam, dof) < 1e-6
