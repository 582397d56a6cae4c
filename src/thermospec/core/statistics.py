"""χ² goodness of fit with the pooling rule of SPEC §6.

Bins whose expected count is below 5 are pooled into one bin; if that pooled
bin is still below 5 it is merged into the smallest other bin.  With a single
bin left there is nothing to test: the statistic is 0 and the p-value 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Chi2Result", "chi2_sf", "context_chi2", "pooled_bins", "pooled_chi2"]


MIN_EXPECTED = 5.0


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
    and their degrees of freedom add up.

    Parameters
    ----------
    counts : iterable of (int, ndarray of float64)
        Each visited context ``x`` with the counts of the tokens emitted after it.
    row : callable
        The target row ``p(. | x)`` of a context.
    """
    stat_terms: list[float] = []
    dof = 0
    for x, observed in counts:
        result = pooled_chi2(observed, observed.sum() * row(x))
        stat_terms.append(result.stat)
        dof += result.dof
    stat = math.fsum(stat_terms)
    return Chi2Result(stat=stat, dof=dof, p_value=chi2_sf(stat, dof) if dof else 1.0, bins=dof + len(stat_terms))
