"""Recursive rejection's tables of many contexts at once, bit for bit `core.verifiers`' per-context plans.

`recursive_rows` applies `verifiers._recursive_plan`'s operations (`recursive_targets`,
`acceptance.acceptance_ratio`, `acceptance.residual_cdf` and the acceptance's running
product) along each row of C-contiguous blocks: elementwise operations, and sums and
running sums along the last axis, which NumPy computes with the loop it runs on one
row, so every value is the per-context plan's (tested on every state of an order-N
corpus target).  The residual after k rejections depends only on the context, so the
N levels of a block are N passes over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["RecursiveRows", "recursive_rows"]


@dataclass(frozen=True, eq=False)
class RecursiveRows:
    """The recursive verifier's tables of m contexts (`verifiers.RecursivePlan.tables`, row by row).

    Attributes
    ----------
    ratios : ndarray of float64, shape (m, N, V)
        ``p_i / q`` of each level (0 where q = 0).
    final_cdf : ndarray of float64, shape (m, V)
        The residual CDF after N rejections.
    acceptance : ndarray of float64, shape (m,)
        Each plan's exact acceptance.
    """

    ratios: NDArray[np.float64]
    final_cdf: NDArray[np.float64]
    acceptance: NDArray[np.float64]


def recursive_rows(P: NDArray[np.float64], Q: NDArray[np.float64], n: int) -> RecursiveRows:
    """`make_plan("recursive", p, q, n)`'s tables and acceptance for each row pair of `P` and `Q` (shape (m, V))."""
    if n < 1:
        raise ValueError(f"drafts: the number of drafts must be >= 1, got {n}")
    P, Q = np.ascontiguousarray(P, dtype=np.float64), np.ascontiguousarray(Q, dtype=np.float64)
    m, V = P.shape
    ratios = np.zeros((m, n, V), dtype=np.float64)
    drafted = Q > 0
    target = P
    survive = np.ones(m, dtype=np.float64)
    for i in range(n):
        if i:  # p_{i+1}: the residual of p_i, normalised, or p_i itself when it is all zeros
            r = target - np.minimum(target, Q)
            total = r.sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                following = r / total[:, None]
            flat = ~(total > 0)
            following[flat] = target[flat]
            target = following
        alpha = np.minimum(1.0, np.minimum(target, Q).sum(axis=1))
        survive = survive * (1.0 - alpha)
        with np.errstate(over="ignore"):  # p / (subnormal q) is +inf, as `acceptance_ratio` leaves it
            np.divide(target, Q, out=ratios[:, i], where=drafted)
    final_cdf = np.cumsum(target - np.minimum(target, Q), axis=1)
    flat = ~(final_cdf[:, -1] > 0)
    final_cdf[flat] = np.cumsum(target[flat], axis=1)
    return RecursiveRows(ratios=ratios, final_cdf=final_cdf, acceptance=1.0 - survive)
