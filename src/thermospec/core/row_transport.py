"""`thermospec.core.transport`'s acceptance bound and optimum of many rows at once, bit for bit.

`acceptance_bounds` and `acceptance_optima` apply the operations of
`transport.acceptance_bound` and `transport.acceptance_optimum` along each row of
C-contiguous blocks: elementwise operations, a stable sort, running sums and sums
along the last axis, which NumPy computes with the loop it runs on one row, so each
value is the per-row function's (tested).  A row whose F(ψ) has a zero (the optimum
then leaves tokens out of its order) is computed by the per-row function.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from thermospec.core.transport import acceptance_optimum, coverage

__all__ = ["acceptance_bounds", "acceptance_optima"]


def acceptance_bounds(P: NDArray[np.float64], Q: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    """`transport.acceptance_bound` of each row pair of `P` and `Q` (shape (m, V)) for n drafts."""
    P, Q = np.ascontiguousarray(P, dtype=np.float64), np.ascontiguousarray(Q, dtype=np.float64)
    bounds: NDArray[np.float64] = np.minimum(P, coverage(Q, n)).sum(axis=1)
    return bounds


def acceptance_optima(P: NDArray[np.float64], Q: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    """`transport.acceptance_optimum` of each row pair of `P` and `Q` (shape (m, V)) for n >= 1 drafts."""
    if n < 1:
        raise ValueError(f"n: the number of drafts must be >= 1, got {n}")
    P, Q = np.ascontiguousarray(P, dtype=np.float64), np.ascontiguousarray(Q, dtype=np.float64)
    m, V = P.shape
    optima = np.empty(m, dtype=np.float64)
    whole = np.all(Q > 0, axis=1)  # every token drafted: the order is a permutation of the row
    for i in np.flatnonzero(~whole).tolist():
        optima[i] = acceptance_optimum(P[i], Q[i], n)
    rows = np.flatnonzero(whole)
    if not rows.shape[0]:
        return optima
    p, q = P[rows], Q[rows]
    with np.errstate(over="ignore"):
        order = np.argsort(-(p / q), axis=1, kind="stable")
    q_s = np.take_along_axis(q, order, axis=1)
    t = np.zeros((rows.shape[0], V + 1), dtype=np.float64)
    t[:, :V] = np.cumsum(q_s[:, ::-1], axis=1)[:, ::-1]
    cum = np.zeros((rows.shape[0], V + 1), dtype=np.float64)
    np.cumsum(np.take_along_axis(p, order, axis=1), axis=1, out=cum[:, 1:])
    cum += 0.0  # the per-row function adds the mass of the undrafted tokens: none here
    deficit = np.maximum(0.0, np.max(cum - (1.0 - t**n), axis=1))
    optima[rows] = 1.0 - deficit
    return optima
