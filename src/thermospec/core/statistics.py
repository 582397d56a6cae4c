"""χ² goodness of fit with the pooling rule of SPEC §6.

Bins whose expected count is below 5 are pooled into one bin; if that pooled
bin is still below 5 it is merged into the smallest other bin.  With a single
bin left there is nothing to test: the statistic is 0 and the p-value 1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Chi2Result", "chi2_sf", "context_chi2", "pairs_chi2", "pooled_bins", "pooled_chi2", "pooled_chi2_rows"]


MIN_EXPECTED = 5.0
BLOCK_ELEMENTS = 1 << 20
"""Contexts tested at once by `context_chi2`: about this many counts (8 MB of float64 a block)."""


@dataclass(frozen=True)
class Chi2Result:
    """Outcome of a χ² test: statistic, degrees of freedom, p-value and bins used."""

    stat: float
    dof: int
    p_value: float
    bins: int


def pooled_bins(
    observed: NDArray[np.float64], expected: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Apply the pooling rule; return the pooled observed and expected counts."""
    observed = np.asarray(observed, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    small = expected < MIN_EXPECTED
    if not small.any():
        return observed, expected
    obs = observed[~small]
    exp = expected[~small]
    pooled_obs = float(observed[small].sum())
    pooled_exp = float(expected[small].sum())
    if pooled_exp >= MIN_EXPECTED or exp.size == 0:
        return np.append(obs, pooled_obs), np.append(exp, pooled_exp)
    smallest = int(np.argmin(exp))
    obs = obs.copy()
    exp = exp.copy()
    obs[smallest] += pooled_obs
    exp[smallest] += pooled_exp
    return obs, exp


def chi2_sf(stat: float, dof: int) -> float:
    """Survival function of the χ² distribution, ``P(X >= stat)`` for `dof` degrees of freedom."""
    from scipy.special import chdtrc  # deferred: only the end of a run pays this import

    return float(chdtrc(dof, stat))


def pooled_chi2(observed: NDArray[np.float64], expected: NDArray[np.float64]) -> Chi2Result:
    """Pearson χ² of observed counts against expected counts, pooled per SPEC §6.

    Parameters
    ----------
    observed : array_like, shape (V,)
        Observed counts per token.
    expected : array_like, shape (V,)
        Expected counts (``N * p``), with the same total as `observed`.

    Returns
    -------
    Chi2Result
        ``dof = bins - 1``; with one bin left, ``stat = 0`` and ``p_value = 1``.
    """
    obs, exp = pooled_bins(observed, expected)
    if obs.size <= 1:
        return Chi2Result(stat=0.0, dof=0, p_value=1.0, bins=int(obs.size))
    stat = math.fsum(((obs - exp) ** 2 / exp).tolist())
    dof = int(obs.size - 1)
    return Chi2Result(stat=stat, dof=dof, p_value=chi2_sf(stat, dof), bins=int(obs.size))


def context_chi2(
    counts: Iterable[tuple[int, NDArray[np.float64]]], row: Callable[[int], NDArray[np.float64]]
) -> Chi2Result:
    """χ² of each context's emitted counts against ``n_x p(. | x)``, summed over contexts.

    Given its context, a step's emitted token is a fresh draw from ``p(. | x)``
    whatever came before (the Markov property), so, unlike the marginal χ²
    against ``N pi``, this test is calibrated for a correlated chain
    (Anderson and Goodman 1957): the per-context statistics (pooled per SPEC §6)
    and their degrees of freedom add up.  Contexts are tested in blocks
    (`pooled_chi2_rows`), bit for bit `pooled_chi2` of each.

    Parameters
    ----------
    counts : iterable of (int, ndarray of float64)
        Each visited context ``x`` with the counts of the tokens emitted after it.
    row : callable
        The target row ``p(. | x)`` of a context.
    """
    total = _ContextTotal()
    observed: list[NDArray[np.float64]] = []
    rows: list[NDArray[np.float64]] = []
    for x, counted in counts:
        observed.append(counted)
        rows.append(row(x))
        if len(observed) * counted.shape[0] >= BLOCK_ELEMENTS:
            total.add(np.stack(observed), np.stack(rows))
            observed, rows = [], []
    if observed:
        total.add(np.stack(observed), np.stack(rows))
    return total.result()


def pairs_chi2(
    context: NDArray[np.int64],
    token: NDArray[np.int64],
    count: NDArray[np.int64],
    vocab_size: int,
    rows: Callable[[NDArray[np.int64]], NDArray[np.float64]],
) -> Chi2Result:
    """`context_chi2` of (context, token, count) pairs, the target rows fetched a block of contexts at a time.

    Parameters
    ----------
    context, token, count : ndarray of int64, shape (pairs,)
        The pairs seen, sorted by context (`thermospec.engine.pairs.PairCounts.pairs`).
    vocab_size : int
        V: tokens are in ``[0, V)``.
    rows : callable
        The target rows ``p(. | x)`` of an array of contexts, shape ``(contexts, V)``.

    Returns
    -------
    Chi2Result
        Bit for bit ``context_chi2`` of the same counts and rows.
    """
    total = _ContextTotal()
    if not context.shape[0]:
        return total.result()
    starts = np.flatnonzero(np.diff(context, prepend=-1))
    block = max(1, BLOCK_ELEMENTS // max(1, vocab_size))
    for a in range(0, starts.shape[0], block):
        first = int(starts[a])
        stop = int(starts[a + block]) if a + block < starts.shape[0] else context.shape[0]
        owner = np.cumsum(np.diff(context[first:stop], prepend=context[first]) != 0)
        observed = np.zeros((int(owner[-1]) + 1, vocab_size), dtype=np.float64)
        observed[owner, token[first:stop]] = count[first:stop]
        total.add(observed, rows(context[starts[a:a + block]]))
    return total.result()


class _ContextTotal:
    """The per-context statistics and degrees of freedom of `context_chi2`, block by block."""

    def __init__(self) -> None:
        self.stats: list[NDArray[np.float64]] = []
        self.dof = 0
        self.contexts = 0

    def add(self, observed: NDArray[Any], rows: NDArray[np.float64]) -> None:
        """Add the contexts of one block: counts and rows, shape (contexts, V)."""
        stat, dof = pooled_chi2_rows(observed, observed.sum(axis=1)[:, None] * rows)
        self.stats.append(stat)
        self.dof += int(dof.sum())
        self.contexts += int(stat.shape[0])

    def result(self) -> Chi2Result:
        stat = math.fsum(np.concatenate(self.stats).tolist()) if self.stats else 0.0
        dof = self.dof
        return Chi2Result(stat=stat, dof=dof, p_value=chi2_sf(stat, dof) if dof else 1.0, bins=dof + self.contexts)


def pooled_chi2_rows(
    observed: NDArray[Any], expected: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """`pooled_chi2`'s statistic and degrees of freedom of each row, at once and bit for bit.

    The pooled bin of a row sums its small bins in index order (the same pairwise
    sums as ``expected[small].sum()``: rows with equally many small bins are summed
    as one 2-D array); the statistic of a row is the exactly rounded sum of its
    terms (as `math.fsum`), so the zeros of the bins a row does not have change
    nothing, and a row of at most two non-zero terms needs a single addition.

    Parameters
    ----------
    observed, expected : ndarray, shape (m, V)
        Observed and expected counts of m tests.

    Returns
    -------
    stat : ndarray of float64, shape (m,)
    dof : ndarray of int64, shape (m,)
        ``bins - 1``, or 0 (and ``stat = 0``) with one bin left.
    """
    seen = np.asarray(observed, dtype=np.float64)
    want = np.asarray(expected, dtype=np.float64)
    m, V = want.shape
    small = want < MIN_EXPECTED
    k = small.sum(axis=1)
    pooled_obs = np.zeros(m, dtype=np.float64)
    pooled_exp = np.zeros(m, dtype=np.float64)
    by = np.argsort(k, kind="stable")  # rows with equally many small bins: one slice of these
    sizes = k[by]
    edges = np.flatnonzero(np.diff(sizes, prepend=0, append=V + 1)).tolist()
    for a, b in itertools.pairwise(edges):
        j = int(sizes[a])
        if j:
            at = by[a:b]
            mask = small[at]
            pooled_obs[at] = seen[at][mask].reshape(-1, j).sum(axis=1)
            pooled_exp[at] = want[at][mask].reshape(-1, j).sum(axis=1)
    big = ~small
    kept = V - k
    separate = (k > 0) & ((pooled_exp >= MIN_EXPECTED) | (kept == 0))
    merged = np.flatnonzero((k > 0) & ~separate)
    bins = np.where(separate, kept + 1, kept)
    terms = np.zeros((m, V + 1), dtype=np.float64)
    np.divide((seen - want) ** 2, want, out=terms[:, :V], where=big)
    if merged.shape[0]:
        at = np.argmin(np.where(big[merged], want[merged], np.inf), axis=1)
        obs = seen[merged, at] + pooled_obs[merged]
        exp = want[merged, at] + pooled_exp[merged]
        terms[merged, at] = (obs - exp) ** 2 / exp
    lone = np.flatnonzero(separate & (kept > 0))
    terms[lone, V] = (pooled_obs[lone] - pooled_exp[lone]) ** 2 / pooled_exp[lone]
    tested = bins > 1
    terms[~tested] = 0.0
    stat = terms.sum(axis=1)  # exact where a row has at most two non-zero terms
    many = np.flatnonzero((terms != 0).sum(axis=1) > 2)
    if many.shape[0]:
        stat[many] = [math.fsum(t) for t in terms[many].tolist()]
    return stat, np.where(tested, bins - 1, 0).astype(np.int64)
