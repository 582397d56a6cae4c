"""ψ under a byte budget: K chosen per context by the Lagrangian (convex-hull) allocation.

The host sees the row ``d`` ψ is crafted from, not the target's row, so a
context's K can depend on ``d`` only.  For each context ``c`` the one-draft
overlap curve ``o_c(K) = sum min(d_c, F(ψ_K(d_c)))`` over ``K = 1 .. K_max``
(`overlap_curves`; ids, τ, ε and codes exactly as `craft_payload` makes them)
and the bytes ``b_c(K) = payload_size(K, V)`` give points whose upper convex
hull is a chain of segments of decreasing slope (overlap per byte).  With
weights ``w_c`` (summing to 1), maximising ``sum_c w_c o_c(K_c)`` subject to
``sum_c w_c b_c(K_c) <= budget`` (`allocate_budget`):

1. every context starts at its smallest K;
2. the hull segments of all contexts are taken in order of decreasing slope
   while they fit: the exact Lagrangian solution, whose multiplier λ is the
   slope of the first segment that does not fit (what a bisection on λ
   approximates);
3. the remaining budget is filled greedily along the hulls: each later
   segment, in slope order, that is its context's next one and still fits;
4. the best uniform K that fits is returned instead when it overlaps more
   (the rounding in 3 can lose up to one segment, which matters with few
   contexts or a few heavy ones; on Tiny Shakespeare it never wins).

Steps 1-3 overlap no less for a larger budget (a segment that fits only with
the larger budget gains more than whatever the smaller budget fills instead),
and so does step 4: the allocation's overlap is monotone in the budget.

A budget that does not bind gives each context the K <= K_max of its largest
overlap, which is not always ``K_max``: a larger K widens the codes' range, so
coarser codes can cost more than the extra id gains (Tiny Shakespeare, ``K_max = 64``:
0.99789 at 121.8 B mean against 0.99648 for K = 64 everywhere at 220 B).  A
budget below the mean size of the smallest K is refused (`ValueError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from thermospec.core.payload import EpsSpec, payload_size

__all__ = ["BudgetAllocation", "BudgetPlan", "OverlapCurves", "allocate_budget", "overlap_curve", "overlap_curves"]

_RELATIVE_SLACK = 1e-12  # mean bytes are weighted sums: a fixed K's mean is its size only up to rounding


@dataclass(frozen=True)
class OverlapCurves:
    """One-draft overlaps of ψ crafted with ``K = 1 .. K_max`` ids, per context.

    Attributes
    ----------
    overlap : ndarray of float64, shape (C, K_max)
        ``overlap[c, K - 1] = sum min(d_c, F(ψ_K(d_c)))``; ``-inf`` where that ψ cannot be
        crafted (a fixed ε with ``(V - K) * ε >= 1``).
    sent : ndarray of int64, shape (C, K_max)
        The K each payload sends: ``min(K, |support of d_c|)``.
    vocab_size : int
        V.
    """

    overlap: NDArray[np.float64]
    sent: NDArray[np.int64]
    vocab_size: int

    @property
    def n_bytes(self) -> NDArray[np.int64]:
        """``payload_size(sent, V)`` per context and K, shape (C, K_max)."""
        per_id = payload_size(2, self.vocab_size) - payload_size(1, self.vocab_size)
        fixed = payload_size(1, self.vocab_size) - per_id
        sizes: NDArray[np.int64] = fixed + per_id * self.sent
        return sizes


@dataclass(frozen=True)
class BudgetAllocation:
    """K per context under a mean ψ-bytes budget.

    Attributes
    ----------
    K : ndarray of int64, shape (C,)
        The K each context's ψ is crafted with (what it sends: at most its row's support).
    mean_bytes : float
        Design mean ψ size, ``sum_c w_c payload_size(K_c, V)``: at most the budget.
    mean_overlap : float
        Design mean one-draft overlap, ``sum_c w_c o_c(K_c)``.
    multiplier : float
        λ, overlap per byte at the margin: the slope of the first hull segment the budget
        could not take (0 when the budget does not bind).
    """

    K: NDArray[np.int64]
    mean_bytes: float
    mean_overlap: float
    multiplier: float


def _float32(values: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(over="ignore"):
        widened: NDArray[np.float64] = values.astype(np.float32).astype(np.float64)
    return widened


def overlap_curve(probs: NDArray[np.float64], V: int, K_max: int, tau: float, eps: EpsSpec) -> NDArray[np.float64]:
    """``sum min(d, F(ψ_K(d)))`` for ``K = 1 .. K_max``, vectorised over K (O(K_max^2 + s log s)).

    Parameters
    ----------
    probs : ndarray of float64, shape (s,)
        The row ``d``'s positive probabilities, in any order (a dense row's zeros may be
        left out or kept).
    V : int
        Vocabulary size.
    K_max : int
        Largest K, >= 1.
    tau : float
        Temperature, > 0 (sent as float32).
    eps : float or "auto"
        As in `craft_payload`.

    Returns
    -------
    ndarray of float64, shape (K_max,)
        Equal to `overlap_mass` of ``d`` and `proposal_distribution(craft_payload(d, K, tau, eps))`
        up to rounding; past the support's size the curve is flat (ψ sends the support).
        ``-inf`` where a fixed ε makes that ψ invalid.
    """
    positive = np.asarray(probs, dtype=np.float64)
    positive = positive[positive > 0]
    if positive.size == 0 or K_max < 1 or not (np.isfinite(tau) and tau > 0):
        raise ValueError("overlap_curve: need a row with positive mass, K_max >= 1 and a finite tau > 0")
    k_top = min(K_max, positive.size, V)
    ks = np.arange(1, k_top + 1)
    # The K_max largest, sorted descending; the rest needs no order (a large V costs O(s)).
    split = np.partition(positive, positive.size - k_top) if positive.size > k_top else positive
    top = np.sort(split[positive.size - k_top:])[::-1]
    rest = split[: positive.size - k_top]
    logp = np.log(top)
    ell = logp - logp[0]
    spread = -ell  # sorted descending: the spread of the first K ids is -ell[K - 1]
    delta = np.where(spread > 0, _float32(spread / 255.0), 0.0)
    inside = ks[:, None] > np.arange(k_top)[None, :]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        codes = np.clip(np.rint(-ell[None, :] / np.where(delta > 0, delta, 1.0)[:, None]), 0, 255)
    codes = np.where(inside & (delta > 0)[:, None], codes, 0.0)
    tau32 = float(np.float32(tau))
    w = np.where(inside, np.exp(-codes * delta[:, None] / tau32), 0.0)
    if eps == "auto":
        tail = np.maximum(0.0, 1.0 - np.cumsum(top))
        eps32 = np.where(ks < V, _float32(tail / np.maximum(V - ks, 1)), 0.0)
        over = (V - ks) * eps32 >= 1.0
        while np.any(over):  # float32 rounding up can only cross 1 by an ulp, as in craft_payload
            eps32[over] = np.nextafter(eps32[over].astype(np.float32), np.float32(0)).astype(np.float64)
            over = (V - ks) * eps32 >= 1.0
    else:
        eps32 = np.full(k_top, float(np.float32(eps)) + 0.0)
    T = (V - ks) * eps32
    q = (1.0 - T)[:, None] * (w / w.sum(axis=1)[:, None])
    head = np.where(inside, np.minimum(top[None, :], q), 0.0).sum(axis=1)
    tail_top = np.where(inside, 0.0, np.minimum(top[None, :], eps32[:, None])).sum(axis=1)
    # The rest, below every id: those above eps_K count eps_K each, the others themselves.
    small = rest <= eps32.min()
    big = np.sort(rest[~small])[::-1]
    suffix = np.concatenate([np.cumsum(big[::-1])[::-1], [0.0]])
    above = np.searchsorted(-big, -eps32, side="left")
    curve = head + tail_top + (eps32 * above + suffix[above] + float(rest[small].sum()))
    curve[(T >= 1.0) | (eps32 < 0)] = -np.inf
    return np.concatenate([curve, np.full(K_max - k_top, curve[-1])])


def overlap_curves(
    rows: NDArray[np.float64] | Sequence[NDArray[np.float64]], V: int, K_max: int, tau: float, eps: EpsSpec
) -> OverlapCurves:
    """`overlap_curve` of each context's row ``d_c``.

    Parameters
    ----------
    rows : ndarray of float64, shape (C, V), or a sequence of C 1-D arrays
        Dense rows, or each row's positive probabilities (its support's, for large V).
    V, K_max, tau, eps
        As in `overlap_curve`.

    Returns
    -------
    OverlapCurves
    """
    overlap = np.empty((len(rows), K_max))
    sent = np.empty((len(rows), K_max), dtype=np.int64)
    every_k = np.arange(1, K_max + 1)
    for c, row in enumerate(rows):
        row = np.asarray(row, dtype=np.float64)
        overlap[c] = overlap_curve(row, V, K_max, tau, eps)
        sent[c] = np.minimum(every_k, min(int(np.count_nonzero(row)), V))
    return OverlapCurves(overlap=overlap, sent=sent, vocab_size=V)


def _upper_hull(n_bytes: list[int], overlap: list[float]) -> list[int]:
    """Indices of the upper convex hull's vertices from the smallest valid K up to the largest overlap.

    Points of equal bytes (K past the support) count once; a point on a chord is kept
    (the greedy fill may use the smaller step); the hull stops where overlap stops rising.
    """
    hull: list[int] = []
    for i, (size, value) in enumerate(zip(n_bytes, overlap, strict=True)):
        if value == -np.inf or (hull and size == n_bytes[hull[-1]]):
            continue
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is strictly below the chord a -> i: not a vertex of the upper hull.
            if (overlap[b] - overlap[a]) * (size - n_bytes[a]) < (value - overlap[a]) * (n_bytes[b] - n_bytes[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    end = 1
    while end < len(hull) and overlap[hull[end]] > overlap[hull[end - 1]]:
        end += 1
    return hull[:end]


class BudgetPlan:
    """The contexts' hulls and their segments in slope order: `allocate` for any number of budgets.

    Parameters
    ----------
    curves : OverlapCurves
        The contexts' overlap curves (`overlap_curves`).
    weights : ndarray of float64, shape (C,)
        Non-negative context weights (π, context frequencies, or uniform); normalised here.

    Raises
    ------
    ValueError
        Weights of the wrong shape, negative or all zero; a context with no valid ψ.
    """

    def __init__(self, curves: OverlapCurves, weights: NDArray[np.float64]) -> None:
        w = np.asarray(weights, dtype=np.float64)
        C = curves.overlap.shape[0]
        if w.shape != (C,) or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise ValueError(f"weights: need {C} finite non-negative weights, not all 0")
        self.curves = curves
        self.weights = w / w.sum()
        n_bytes = curves.n_bytes.tolist()
        overlap = curves.overlap.tolist()
        self.hulls = [_upper_hull(n_bytes[c], overlap[c]) for c in range(C)]
        if any(not hull for hull in self.hulls):
            raise ValueError("psi-budget: a context has no valid ψ for any K (a fixed eps too large)")
        start = np.array([hull[0] for hull in self.hulls], dtype=np.int64)
        self.smallest = float(self.weights @ curves.n_bytes[np.arange(C), start])
        ctx, seq, cost, slopes = [], [], [], []
        for c, hull in enumerate(self.hulls):
            for j in range(len(hull) - 1):
                a, b = hull[j], hull[j + 1]
                ctx.append(c)
                seq.append(j + 1)
                cost.append(float(self.weights[c]) * (n_bytes[c][b] - n_bytes[c][a]))
                slopes.append((overlap[c][b] - overlap[c][a]) / (n_bytes[c][b] - n_bytes[c][a]))
        order = np.lexsort((np.array(seq), np.array(ctx), -np.array(slopes))).tolist()
        # Segments in decreasing slope: (context, its position on the hull, weighted bytes, slope).
        self.segments = [(ctx[s], seq[s], cost[s], slopes[s]) for s in order]

    def allocate(self, budget: float) -> BudgetAllocation:
        """K per context maximising the weighted mean overlap with a weighted mean ψ size <= `budget`.

        Raises
        ------
        ValueError
            A budget below the mean size of every context's smallest ψ (one line, naming the
            budget and that size).

        Notes
        -----
        The mean bytes are at most ``budget`` up to a relative 1e-12 (a weighted sum of equal
        sizes is that size only up to rounding).  O(C K_max) per budget.
        """
        slack = _RELATIVE_SLACK * max(abs(budget), 1.0)
        if not budget + slack >= self.smallest:
            smallest = f"{self.smallest:.4g} bytes"
            raise ValueError(f"psi-budget: {budget:g} bytes is below the smallest mean ψ size, {smallest}")
        room = budget - self.smallest
        position = [0] * len(self.hulls)
        refused: float | None = None  # the slope of the first segment that did not fit: λ
        for c, seq, cost, slope in self.segments:
            if seq != position[c] + 1:
                continue
            if cost <= room + slack:
                room -= cost
                position[c] = seq
            elif refused is None:
                refused = slope
        index = np.array([hull[k] for hull, k in zip(self.hulls, position, strict=True)], dtype=np.int64)
        lagrangian = self._allocation(index, 0.0 if refused is None else refused)
        curves = self.curves
        fits = (self.weights @ curves.n_bytes <= budget + slack) & np.all(np.isfinite(curves.overlap), axis=0)
        if not np.any(fits):
            return lagrangian
        uniform_overlap = np.where(fits, self.weights @ np.where(fits, curves.overlap, 0.0), -np.inf)
        uniform = self._allocation(np.full(len(self.hulls), int(np.argmax(uniform_overlap))), lagrangian.multiplier)
        return uniform if uniform.mean_overlap > lagrangian.mean_overlap else lagrangian

    def _allocation(self, index: NDArray[np.int64], slope: float) -> BudgetAllocation:
        rows = np.arange(index.shape[0])
        n_bytes = self.curves.n_bytes[rows, index].astype(np.float64)
        return BudgetAllocation(
            K=self.curves.sent[rows, index], mean_bytes=float(self.weights @ n_bytes),
            mean_overlap=float(self.weights @ self.curves.overlap[rows, index]), multiplier=slope,
        )


def allocate_budget(curves: OverlapCurves, weights: NDArray[np.float64], budget: float) -> BudgetAllocation:
    """K per context under a mean ψ-bytes budget: ``BudgetPlan(curves, weights).allocate(budget)``.

    Examples
    --------
    >>> import numpy as np
    >>> rows = np.array([[0.9, 0.05, 0.05, 0.0], [0.4, 0.3, 0.2, 0.1]])
    >>> curves = overlap_curves(rows, V=4, K_max=3, tau=1.0, eps="auto")
    >>> allocation = allocate_budget(curves, np.array([0.5, 0.5]), budget=32.5)
    >>> allocation.K.tolist(), allocation.mean_bytes
    ([1, 2], 32.5)
    """
    return BudgetPlan(curves, weights).allocate(budget)
