"""The step rule of every fast path, written once in Python and once in NumPy.

`thermospec.core.acceptance.accept_correct_step` is the specification; on a
context's tables and the uniforms ``(u_draft, u_accept, u_residual)`` of a step,
every stepper performs::

    y = min(bisect_right(draft_cdf, u_draft * draft_cdf[-1]), last positive of draft_cdf)
    accept iff u_accept < (p / q)[y]                     (strict)
    else x = min(bisect_right(residual_cdf, u_residual * residual_cdf[-1]), last positive)

Here it is `step_tokens` (one step, over any `StepTables`: dense ones,
`DenseStepTables`, or the compact ones of `thermospec.engine.compact`) with its
correction half `correct_token` (which the γ-block stepper also calls), and
`vector_steps` (a step of many independent chains or draws at once, on arrays).
The compiled kernel (``thermospec.engine._kernels``) is the third writing.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from thermospec.core.sampling import last_positive

__all__ = [
    "Cdf",
    "DenseStepTables",
    "StepArrays",
    "StepTables",
    "cdf_entry",
    "correct_token",
    "draw_token",
    "python_steps",
    "step_tokens",
    "vector_bisect_right",
    "vector_steps",
]


StepArrays = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]
"""``(prev, proposed, emitted, accepted)`` of a chunk of steps."""


class StepTables(Protocol):
    """A context's tables as the step reads them."""

    def draft_token(self, u: float) -> int:
        """The TSU's draft for uniform `u`."""

    def ratio_at(self, y: int) -> float:
        """``p(y) / q(y)`` (0 where ``q(y) = 0``)."""

    def residual_token(self, u: float) -> int:
        """The token emitted after a rejection, for uniform `u`."""


def correct_token(tables: StepTables, y: int, u_accept: float, u_residual: float) -> tuple[int, bool]:
    """Accept draft `y` iff ``u_accept < p(y) / q(y)`` (strict), else draw the residual: ``(emitted, accepted)``."""
    if u_accept < tables.ratio_at(y):
        return y, True
    return tables.residual_token(u_residual), False


def step_tokens(tables: StepTables, u_draft: float, u_accept: float, u_residual: float) -> tuple[int, int, bool]:
    """One step on a context's tables: ``(proposed, emitted, accepted)``."""
    y = tables.draft_token(u_draft)
    emitted, accepted = correct_token(tables, y, u_accept, u_residual)
    return y, emitted, accepted


Cdf = tuple[Any, float, int]
"""Cumulative sums (a list, or an array at large V), their total and their last positive index."""


def cdf_entry(cdf: NDArray[np.float64], as_list: bool = True) -> Cdf:
    """`cdf` as `draw_token` takes it (a list: `bisect` on a list beats a NumPy call per step)."""
    return (cdf.tolist() if as_list else cdf, float(cdf[-1]), last_positive(cdf))


def draw_token(entry: Cdf, u: float) -> int:
    """`thermospec.core.sampling.inverse_cdf` for one uniform."""
    cdf, total, last = entry
    y: int = bisect_right(cdf, u * total)
    return last if y > last else y


class DenseStepTables:
    """A context's tables over all V tokens: draft CDF, ``p / q``, residual CDF.

    Parameters
    ----------
    draft_cdf, ratio, residual_cdf : ndarray of float64, shape (V,)
        `thermospec.engine.chain.context_tables` of the context.
    as_list : bool
        Hold them as Python lists (faster per step) rather than arrays (smaller at large V).
    """

    def __init__(self, draft_cdf: NDArray[np.float64], ratio: NDArray[np.float64], residual_cdf: NDArray[np.float64],
                 as_list: bool = True) -> None:
        self.draft = cdf_entry(draft_cdf, as_list)
        self.ratio: Any = ratio.tolist() if as_list else ratio
        self.residual = cdf_entry(residual_cdf, as_list)

    def draft_token(self, u: float) -> int:
        """The TSU's draft for uniform `u`."""
        return draw_token(self.draft, u)

    def ratio_at(self, y: int) -> float:
        """``p(y) / q(y)``."""
        return float(self.ratio[y])

    def residual_token(self, u: float) -> int:
        """The token emitted after a rejection, for uniform `u`."""
        return draw_token(self.residual, u)


def python_steps(tables: Callable[[int], StepTables], u: NDArray[np.float64], x: int) -> tuple[StepArrays, int]:
    """`step_tokens` over one chunk of uniforms from context `x` (the fallback of the compiled kernels).

    Row t of `u` holds step t's three uniforms; ``tables(x)`` gives context x's tables.

    Returns
    -------
    (prev, proposed, emitted, accepted), x
        The chunk's arrays and the context after its last step.
    """
    n = u.shape[0]
    prev, proposed, emitted, accepted = [0] * n, [0] * n, [0] * n, [False] * n
    for t, (u_draft, u_accept, u_residual) in enumerate(u.tolist()):
        prev[t] = x
        proposed[t], x, accepted[t] = step_tokens(tables(x), u_draft, u_accept, u_residual)
        emitted[t] = x
    arrays = (np.array(prev, dtype=np.int64), np.array(proposed, dtype=np.int64),
              np.array(emitted, dtype=np.int64), np.array(accepted, dtype=np.bool_))
    return arrays, x


def vector_bisect_right(
    flat: NDArray[np.float64], base: NDArray[np.int64], n: int, target: NDArray[np.float64]
) -> NDArray[np.int64]:
    """``bisect_right(flat[base[i] : base[i] + n], target[i])`` for every i, vectorised."""
    lo = np.zeros(base.shape[0], dtype=np.int64)
    length = np.full(base.shape[0], n, dtype=np.int64)
    while True:
        live = length > 0
        if not live.any():
            return lo
        half = length >> 1
        mid = lo + half
        go = live & (flat[base + np.minimum(mid, n - 1)] <= target)
        lo = np.where(go, mid + 1, lo)
        length = np.where(go, length - half - 1, np.where(live, half, 0))


def vector_steps(
    flat: NDArray[np.float64], base: NDArray[np.int64], V: int, totals: NDArray[np.float64],
    lasts: NDArray[np.int64], u: NDArray[np.float64],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
    """The step of many independent chains (or draws) at once, one context's tables each.

    Parameters
    ----------
    flat : ndarray of float64
        Tables laid out as ``[draft_cdf (V) | ratio (V) | residual_cdf (V)]`` from each offset of `base`
        (`thermospec.engine.kernels.TableCache.tables`, flattened).
    base : ndarray of int64, shape (B,)
        Offset of each step's tables in `flat`.
    V : int
        Vocabulary size.
    totals : ndarray of float64, shape (B, 2)
        Last entry of each step's draft and residual cdfs.
    lasts : ndarray of int64, shape (B, 2)
        Their last positive indices.
    u : ndarray of float64, shape (B, 3)
        Each step's ``(u_draft, u_accept, u_residual)``.

    Returns
    -------
    proposed, emitted : ndarray of int64, shape (B,)
    accepted : ndarray of bool, shape (B,)
    """
    y = vector_bisect_right(flat, base, V, u[:, 0] * totals[:, 0])
    np.minimum(y, lasts[:, 0], out=y)
    accepted: NDArray[np.bool_] = u[:, 1] < flat[base + V + y]
    r = vector_bisect_right(flat, base + 2 * V, V, u[:, 2] * totals[:, 1])
    np.minimum(r, lasts[:, 1], out=r)
    return y, np.where(accepted, y, r), accepted
