"""Tests of the χ² statistics and the pooling rule of SPEC §6, on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy import stats

from thermospec.core.statistics import (
    chi2_sf,
    context_chi2,
    pairs_chi2,
    pooled_bins,
    pooled_chi2,
    pooled_chi2_rows,
)


def test_no_small_bin_means_no_pooling() -> None:
    observed = np.array([10.0, 20.0, 30.0, 40.0])
    expected = np.array([25.0, 25.0, 25.0, 25.0])
    obs, exp = pooled_bins(observed, expected)
    np.testing.assert_array_equal(obs, observed)
    np.testing.assert_array_equal(exp, expected)
    result = pooled_chi2(observed, expected)
    assert result.stat == pytest.approx((15**2 + 5**2 + 5**2 + 15**2) / 25)
    assert (result.dof, result.bins) == (3, 4)
    assert result.p_value == pytest.approx(stats.chisquare(observed, expected).pvalue, rel=1e-12)


def test_small_bins_pool_into_one_bin_of_at_least_five() -> None:
    observed = np.array([50.0, 3.0, 40.0, 2.0, 1.0, 4.0])
    expected = np.array([45.0, 2.0, 45.0, 3.0, 1.5, 3.5])  # small bins: 2 + 3 + 1.5 + 3.5 = 10 >= 5
    obs, exp = pooled_bins(observed, expected)
    np.testing.assert_array_equal(obs, [50.0, 40.0, 10.0])
    np.testing.assert_array_equal(exp, [45.0, 45.0, 10.0])
    result = pooled_chi2(observed, expected)
    assert result.stat == pytest.approx(25 / 45 + 25 / 45 + 0.0)
    assert (result.dof, result.bins) == (2, 3)


def test_a_pooled_bin_still_below_five_merges_into_the_smallest_other_bin() -> None:
    observed = np.array([30.0, 9.0, 2.0, 1.0, 20.0])
    expected = np.array([28.0, 10.0, 1.0, 2.0, 21.0])  # pooled bin 3 < 5: merged into the 10
    obs, exp = pooled_bins(observed, expected)
    np.testing.assert_array_equal(obs, [30.0, 12.0, 20.0])
    np.testing.assert_array_equal(exp, [28.0, 13.0, 21.0])
    result = pooled_chi2(observed, expected)
    assert result.stat == pytest.approx(4 / 28 + 1 / 13 + 1 / 21)
    assert result.dof == 2


def test_zero_expected_bins_are_pooled_without_dividing_by_zero() -> None:
    observed = np.array([0.0, 50.0, 0.0, 50.0])
    expected = np.array([0.0, 50.0, 0.0, 50.0])
    result = pooled_chi2(observed, expected)
    assert np.isfinite(result.stat)
    assert result.stat == 0.0
    assert result.p_value == 1.0


def test_single_bin_left_means_nothing_to_test() -> None:
    # everything small: one pooled bin
    result = pooled_chi2(np.array([1.0, 2.0, 0.0]), np.array([1.0, 1.0, 1.0]))
    assert (result.stat, result.dof, result.p_value, result.bins) == (0.0, 0, 1.0, 1)
    # one big bin and a small pooled bin merged into it: one bin
    result = pooled_chi2(np.array([97.0, 3.0]), np.array([99.0, 1.0]))
    assert (result.stat, result.dof, result.p_value, result.bins) == (0.0, 0, 1.0, 1)
    # one-hot target
    result = pooled_chi2(np.array([0.0, 1000.0, 0.0]), np.array([0.0, 1000.0, 0.0]))
    assert result.p_value == 1.0


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.floats(0.0, 500.0), st.integers(1, 300))
def test_chi2_sf_agrees_with_scipy(stat: float, dof: int) -> None:
    assert chi2_sf(stat, dof) == pytest.approx(stats.chi2.sf(stat, dof), rel=1e-9, abs=1e-300)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 60), st.integers(10, 5000))
def test_pooled_chi2_p_value_agrees_with_scipy_on_the_pooled_bins(seed: int, V: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(V, 0.5))
    observed = rng.multinomial(n, p).astype(np.float64)
    expected = n * p
    obs, exp = pooled_bins(observed, expected)
    assert obs.sum() == pytest.approx(observed.sum())
    assert exp.sum() == pytest.approx(expected.sum())
    if obs.size > 1:
        assert np.all(exp >= 5)
    result = pooled_chi2(observed, expected)
    if obs.size > 1:
        reference = stats.chisquare(obs, exp * obs.sum() / exp.sum())
        assert result.stat == pytest.approx(float(reference.statistic), rel=1e-6, abs=1e-9)
        assert result.p_value == pytest.approx(float(reference.pvalue), rel=1e-6, abs=1e-12)
        assert result.dof == obs.size - 1
    else:
        assert result.p_value == 1.0


def test_p_values_are_uniform_under_the_null_and_small_under_an_alternative() -> None:
    """The test has its nominal level and real power (a negative control for the statistic itself)."""
    rng = np.random.default_rng(2024)
    p = rng.dirichlet(np.full(40, 0.5))
    n, trials = 5000, 400
    null = [pooled_chi2(rng.multinomial(n, p).astype(np.float64), n * p).p_value for _ in range(trials)]
    # p-values under the null are uniform: Kolmogorov-Smirnov against U(0, 1)
    assert stats.kstest(null, "uniform").pvalue > 1e-3
    shifted = 0.9 * p + 0.1 / 40  # 10 % of the mass moved to uniform
    alt = [pooled_chi2(rng.multinomial(n, shifted).astype(np.float64), n * p).p_value for _ in range(50)]
    assert max(alt) < 1e-3


def _old_context_chi2(counts: list[tuple[int, NDArray[np.float64]]], rows: NDArray[np.float64]) -> tuple[float, int]:
    """`context_chi2` as it was, one `pooled_chi2` per context: the reference of the blocks."""
    results = [pooled_chi2(observed, observed.sum() * rows[x]) for x, observed in counts]
    return math.fsum(r.stat for r in results), sum(r.dof for r in results)


def _random_tests(rng: np.random.Generator, m: int, V: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """m count vectors over V bins and their rows: sharp or flat rows, rounded (ties) or not, few or many counts."""
    rows = rng.dirichlet(np.full(V, float(rng.choice([0.05, 0.5, 5.0]))), size=m)
    if rng.random() < 0.3:  # ties between bins (the merge goes to the first smallest) and zero rows entries
        rows = np.round(rows, 2)
        rows[:, 0] += 1.0 - rows.sum(axis=1)
        rows = np.abs(rows)
    n = rng.integers(0, int(rng.choice([5, 50, 500, 5000, 500_000])), size=m)
    observed = np.stack([rng.multinomial(int(n[i]), rows[i] / rows[i].sum()) for i in range(m)]).astype(np.float64)
    if rng.random() < 0.2:  # counts that are not integers: the pooled sums' order then shows
        observed += rng.random(observed.shape)
    return observed, rows


@pytest.mark.parametrize("V", [1, 2, 3, 8, 9, 65, 130, 300])
def test_pooled_chi2_rows_is_pooled_chi2_bit_for_bit(V: int) -> None:
    """Each row's statistic and dof are `pooled_chi2`'s exactly, over every branch of the pooling rule."""
    rng = np.random.default_rng(V)
    branches = {"unpooled": 0, "separate": 0, "merged": 0, "one bin": 0}
    for _ in range(150):
        observed, rows = _random_tests(rng, int(rng.integers(1, 30)), V)
        expected = observed.sum(axis=1)[:, None] * rows
        stat, dof = pooled_chi2_rows(observed, expected)
        for i in range(observed.shape[0]):
            result = pooled_chi2(observed[i], expected[i])
            assert (float(stat[i]), int(dof[i])) == (result.stat, result.dof)
            small = expected[i] < 5
            pooled = expected[i][small].sum()
            branch = ("one bin" if result.bins <= 1 else "unpooled" if not small.any()
                      else "separate" if pooled >= 5 else "merged")
            branches[branch] += 1
    assert all(branches.values()) or V < 8, branches  # every branch met (small V: no room for all)


@pytest.mark.parametrize("seed", range(4))
def test_context_chi2_and_pairs_chi2_are_the_per_context_loop_bit_for_bit(seed: int) -> None:
    """The block-wise `context_chi2` and `pairs_chi2` give the old per-context loop's statistic and dof exactly."""
    rng = np.random.default_rng(seed)
    V = int(rng.choice([5, 65, 300]))
    observed, rows = _random_tests(rng, 500, V)
    observed = np.floor(observed)
    visited = np.flatnonzero(observed.sum(axis=1))
    counts = [(int(x), observed[x]) for x in visited]
    stat, dof = _old_context_chi2(counts, rows)
    result = context_chi2(counts, lambda x: rows[x])
    assert (result.stat, result.dof, result.bins) == (stat, dof, dof + visited.shape[0])
    assert result.p_value == (chi2_sf(stat, dof) if dof else 1.0)
    context, token = np.nonzero(observed)
    count = observed[context, token].astype(np.int64)
    for block in (1 << 20, 7 * V):  # one block, and many (contexts cut across blocks)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("thermospec.core.statistics.BLOCK_ELEMENTS", block)
            pairs = pairs_chi2(context.astype(np.int64), token.astype(np.int64), count, V, lambda xs: rows[xs])
            assert pairs == result
            assert context_chi2(counts, lambda x: rows[x]) == result
