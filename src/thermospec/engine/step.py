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
`vector_steps` (a step of many independent chains or draws at once, on arrays of dense tables) with
`vector_compact_steps` (many steps on one context's compact tables: a trace position's) and
`vector_context_steps` (many steps on one context's dense tables, each CDF a `GuidedCdf`: the fixed-context
draws of the checks and the grid sweep).
The compiled kernel (``thermospec.engine._kernels``) is the third writing.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from thermospec.core.sampling import last_positive

__all__ = [
    "Cdf",
    "DenseStepTables",
    "GuidedCdf",
    "StepArrays",
    "StepTables",
    "VectorCompactTables",
    "cdf_entry",
    "correct_token",
    "draw_token",
    "python_steps",
    "step_tokens",
    "vector_bisect_right",
    "vector_compact_steps",
    "vector_context_steps",
    "vector_correct",
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
    """``bisect_right(flat[base[i] : base[i] + n], target[i])`` for every i, vectorised.

    Every row has the same length, so the rounds are the same for all: the answer stays in
    ``[at, at + left]``; a round probes ``at + half - 1`` (``half = ceil(left / 2)``) and either
    moves past it or keeps ``[at, at + left - half]``, which still holds the answer.  About
    ``log2(n) + 1`` rounds of one gather and one comparison each, with no per-row bookkeeping.
    """
    at = np.zeros(base.shape[0], dtype=np.int64)
    left = n
    while left > 0:
        half = (left + 1) >> 1
        at += half * (flat[base + at + (half - 1)] <= target)
        left -= half
    return at


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

    def residual_tokens(rows: NDArray[np.int64]) -> NDArray[np.int64]:
        r = vector_bisect_right(flat, base[rows] + 2 * V, V, u[rows, 2] * totals[rows, 1])
        np.minimum(r, lasts[rows, 1], out=r)
        return r

    emitted, accepted = vector_correct(y, flat[base + V + y], u[:, 1], residual_tokens)
    return y, emitted, accepted


def vector_correct(
    y: NDArray[np.int64], ratio: NDArray[np.float64], u_accept: NDArray[np.float64],
    residual_tokens: Callable[[NDArray[np.int64]], NDArray[np.int64]],
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """`correct_token` on arrays: accept draft i iff ``u_accept[i] < ratio[i]`` (strict), else its residual draw.

    ``residual_tokens(rows)`` draws the residual of the rejected `rows` (with their own uniforms).
    """
    accepted: NDArray[np.bool_] = u_accept < ratio
    emitted = y.copy()
    rejected = np.flatnonzero(~accepted)
    if rejected.size:
        emitted[rejected] = residual_tokens(rejected)
    return emitted, accepted


class GuidedCdf:
    """One context's CDF prepared for many draws at once: `inverse_cdf` of a vector of uniforms in a few passes.

    A guide table (Chen's: ``guide[g] = bisect_right(cdf, g * total / G)`` for G ≥ 2V buckets, a power of
    two) starts every target at most a few entries from its answer, and a vectorised walk on both sides
    finishes it, so the float rounding of a target's bucket never matters: the walk stops exactly where
    ``cdf[i - 1] <= target < cdf[i]``.  About 20 ns a draw at V = 256, where `numpy.searchsorted` on
    unsorted targets takes about 100 ns (a mispredicted branch at every level of its bisection).

    Parameters
    ----------
    cdf : ndarray of float64, shape (V,)
        Cumulative sums of non-negative weights with a positive total.
    """

    def __init__(self, cdf: NDArray[np.float64]) -> None:
        self.total = float(cdf[-1])
        self.last = last_positive(cdf)
        buckets = 1 << max(1, 2 * int(cdf.shape[0]) - 1).bit_length()
        self._buckets = buckets
        scale = buckets / self.total
        self._scale = scale if math.isfinite(scale) else 0.0  # a subnormal total: every target walks from 0
        self._guide: NDArray[np.int64] = np.searchsorted(
            cdf, np.arange(buckets, dtype=np.float64) * (self.total / buckets), side="right"
        ).astype(np.int64)
        self._at = np.append(cdf, np.inf)  # cdf[i], +inf past the end
        self._before = np.append(-np.inf, cdf)  # cdf[i - 1], -inf before the start

    def bisect_right(self, target: NDArray[np.float64]) -> NDArray[np.int64]:
        """``bisect_right(cdf, target[i])`` for every i (``np.searchsorted(cdf, target, side="right")``)."""
        g = (target * self._scale).astype(np.int64)
        np.clip(g, 0, self._buckets - 1, out=g)
        i = self._guide[g]
        rows = np.flatnonzero(self._before[i] > target)
        while rows.size:  # rare: a target rounded into the bucket after its own
            i[rows] -= 1
            rows = rows[self._before[i[rows]] > target[rows]]
        rows = np.flatnonzero(self._at[i] <= target)
        while rows.size:
            i[rows] += 1
            rows = rows[self._at[i[rows]] <= target[rows]]
        return i

    def tokens(self, u: NDArray[np.float64]) -> NDArray[np.int64]:
        """The draws of uniforms `u`: ``min(bisect_right(cdf, u * total), last positive)``, as `inverse_cdf`."""
        y = self.bisect_right(u * self.total)
        np.minimum(y, self.last, out=y)
        return y


def vector_context_steps(
    draft: GuidedCdf, ratio: NDArray[np.float64], residual: GuidedCdf, u: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
    """Many independent steps on one context's dense tables: row i of `u` holds a step's three uniforms.

    Parameters
    ----------
    draft, residual : GuidedCdf
        The context's draft and residual CDFs (`thermospec.engine.chain.context_tables`).
    ratio : ndarray of float64, shape (V,)
        Its ``p / q``.
    u : ndarray of float64, shape (n, 3)

    Returns
    -------
    proposed, emitted : ndarray of int64, shape (n,)
    accepted : ndarray of bool, shape (n,)
    """
    y = draft.tokens(u[:, 0])

    def residual_tokens(rows: NDArray[np.int64]) -> NDArray[np.int64]:
        return residual.tokens(u[rows, 2])

    emitted, accepted = vector_correct(y, ratio[y], u[:, 1], residual_tokens)
    return y, emitted, accepted


@dataclass(frozen=True, eq=False)
class VectorCompactTables:
    """A context's (or position's) compact step tables for `vector_compact_steps`, O(K + r) entries.

    Attributes
    ----------
    ids, id_cdf, explicit_cum, eps, draft_total, draft_last
        The draft half of `engine.compact.CompactTables`: the payload's ids in token
        order, the draft CDF at each, F(ψ) summed over the ids, ε, the CDF's total
        and the last token it reaches it at.
    q_ids : ndarray of float64, shape (K,)
        F(ψ) at each id (token order).
    residual_tokens : ndarray of int64, shape (r,)
        Increasing tokens of positive residual ``p - min(p, q)`` (of positive p where that is all 0).
    residual_cum : ndarray of float64, shape (r,)
        The dense running sum of that residual at those tokens.
    residual_last : int
        Index into `residual_tokens` where `residual_cum` reaches its total.
    """

    vocab_size: int
    ids: NDArray[np.int64]
    id_cdf: NDArray[np.float64]
    explicit_cum: NDArray[np.float64]
    eps: float
    draft_total: float
    draft_last: int
    q_ids: NDArray[np.float64]
    residual_tokens: NDArray[np.int64]
    residual_cum: NDArray[np.float64]
    residual_last: int

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return int(self.ids.nbytes * 4 + self.residual_tokens.nbytes + self.residual_cum.nbytes + 256)


def _draft_tokens(tb: VectorCompactTables, u: NDArray[np.float64]) -> NDArray[np.int64]:
    """The TSU's draw for every uniform of `u`: ``min(first token whose draft CDF exceeds u * total, draft_last)``,
    the rule of `engine.compact.first_above` (and of `inverse_cdf` on the dense CDF), vectorised."""
    ids, V, eps = tb.ids, tb.vocab_size, tb.eps
    target = u * tb.draft_total
    J = np.searchsorted(tb.id_cdf, target, side="right")
    hi = np.append(ids, V)[J]  # first id after the gap of tail tokens the draw may land in (V: none)
    y = hi.copy()
    if eps > 0:
        lo = np.append(-1, ids)[J] + 1
        base, shift = tb.explicit_cum[J], 1 - J  # tail token v has CDF float(v + shift) * eps + base
        inside = (lo < hi) & ((hi - 1 + shift).astype(np.float64) * eps + base > target)
        at = np.flatnonzero(inside)
        if at.size:
            y[at] = _first_above(lo[at], hi[at] - 1, shift[at], base[at], target[at], eps)
    np.minimum(y, tb.draft_last, out=y)
    return y


def _first_above(lo: NDArray[np.int64], hi: NDArray[np.int64], shift: NDArray[np.int64],
                 base: NDArray[np.float64], target: NDArray[np.float64], eps: float) -> NDArray[np.int64]:
    """Least m in [lo, hi] with ``float(m + shift) * eps + base > target`` (true at hi), per element.

    A binary search on the monotone predicate, started from the closed-form estimate
    (a window of 5 checked at both ends, else the whole gap): the same m as
    `engine.compact.first_above`'s search, in about 3 vector passes.
    """

    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        guess = np.floor((target - base) / eps) - shift + 1
    guess = np.clip(np.nan_to_num(guess, nan=0.0), lo, hi).astype(np.int64)
    a, b = np.maximum(guess - 2, lo), np.minimum(guess + 2, hi)
    below = ~_above(np.maximum(a - 1, lo), shift, base, target, eps)
    window = _above(b, shift, base, target, eps) & ((a == lo) | below)
    a, b = np.where(window, a, lo), np.where(window, b, hi)
    while True:
        open_ = np.flatnonzero(a < b)
        if not open_.size:
            return a
        m = (a[open_] + b[open_]) // 2
        yes = _above(m, shift[open_], base[open_], target[open_], eps)
        b[open_] = np.where(yes, m, b[open_])
        a[open_] = np.where(yes, a[open_], m + 1)


def _above(m: NDArray[np.int64], shift: NDArray[np.int64], base: NDArray[np.float64],
           target: NDArray[np.float64], eps: float) -> NDArray[np.bool_]:
    """Whether the draft CDF at tail token m (``float(m + shift) * eps + base``) exceeds `target`."""
    result: NDArray[np.bool_] = (m + shift).astype(np.float64) * eps + base > target
    return result


def vector_compact_steps(
    tb: VectorCompactTables, p: NDArray[np.float64], u: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
    """Many steps on one context's compact tables: row i of `u` holds a step's three uniforms.

    Returns (proposed, emitted, accepted).

    The same tokens as, step by step, ``SimTSU.draw`` (draft) and `accept_correct_step`
    with the row `p` and ``q = F(ψ)`` of the decoded payload.
    """
    y = _draft_tokens(tb, u[:, 0])
    K = int(tb.ids.shape[0])
    k = np.minimum(np.searchsorted(tb.ids, y), K - 1)
    q = np.where(tb.ids[k] == y, tb.q_ids[k], tb.eps)
    ratio = np.zeros(y.shape[0], dtype=np.float64)
    with np.errstate(over="ignore"):  # p / (subnormal q) is +inf, as in acceptance_ratio
        np.divide(p[y], q, out=ratio, where=q > 0)
    def residual_tokens(rows: NDArray[np.int64]) -> NDArray[np.int64]:
        r = np.searchsorted(tb.residual_cum, u[rows, 2] * float(tb.residual_cum[-1]), side="right")
        np.minimum(r, tb.residual_last, out=r)
        found: NDArray[np.int64] = tb.residual_tokens[r]
        return found

    emitted, accepted = vector_correct(y, ratio, u[:, 1], residual_tokens)
    return y, emitted, accepted
