"""The limit of N i.i.d. drafts, and a selection law that reaches it.

With drafts ``X_1 … X_N ~ q`` i.i.d. and a target ``p``, an *exact verifier* is
any coupling of the tuple ``X`` with an output ``Y ~ p``; it accepts when ``Y`` is
one of the drafts.  Writing ``φ_N(s) = 1 − (1 − s)^N`` for the probability that
a set of q-mass ``s`` is hit by some draft:

- **Per-token bound.** ``P(Y = y, y ∈ X) ≤ min(p(y), φ_N(q(y)))``, so
  ``acceptance ≤ Σ_y min(p(y), φ_N(q(y)))`` (`acceptance_bound`).
- **Optimum** (Hu et al. 2025, ICLR, "Towards optimal multi-draft speculative
  decoding": the dual of the transport LP).  Max-flow/min-cut on the bipartite
  graph tuple → token-in-tuple gives ``max acceptance = min_S [p(Sᶜ) + φ_N(q(S))]``
  over token sets ``S``.  ``S ↦ φ_N(q(S))`` is concave-of-modular, and exchanging
  a token in ``S`` for a token outside with a larger ``p/q`` never raises the cut
  (concavity of φ_N), so the minimum is over the prefixes of the tokens sorted by
  ``p/q`` descending: with ``b_k, P_k`` the cumulative ``q`` and ``p`` of the
  first ``k`` tokens (``P`` also counts the mass of tokens with ``q = 0``),
  ``optimum = 1 − D`` with ``D = max(0, max_k (P_k − φ_N(b_k)))``
  (`acceptance_optimum`; `lp_acceptance_optimum` solves the LP itself on small V).
- **A selection reaching it** (Khisti et al. 2024's canonical form: select one
  draft, then single-draft speculative sampling against the selection's law ``x``,
  which accepts ``Σ min(p, x)``).  Split the sorted tokens into consecutive
  *classes* at nodes ``J`` (``0 = j_0 < … < j_m = M``); select the first draft (by
  position) of the highest class present.  Class ``c`` is the highest present with
  probability ``φ_N(b_{j_c}) − φ_N(b_{j_{c−1}})``, and then its token is ``q``
  restricted to the class, so the law is the chord slope of φ_N times q:
  ``x_J(z) = q(z) [φ_N(b_{j_c}) − φ_N(b_{j_{c−1}})] / (b_{j_c} − b_{j_{c−1}})``.
  Mixtures of such ``J`` realise every concave curve ``C`` through ``(0, 0)``,
  ``(1, 1)`` with ``C(b_k) ≤ φ_N(b_k)``: the chord interpolations are that
  polytope's vertices.  The upper concave hull ``C`` of ``(0, 0)``, ``(1, 1)`` and
  ``(b_k, P_k − D)`` is such a curve and accepts ``Σ min(p, ΔC) = 1 − D``: on its
  first chord ``ΔC ≤ p``, where it follows ``P − D`` ``ΔC = p``, on its last chord
  ``ΔC ≥ p`` (tangent-line slopes), so ``Σ min(p, ΔC) = C(b_l) + P_r − P_l + 1 − P_r``
  ``= 1 − D``.  `class_mixture` peels ``C`` into at most M chord interpolations.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "LP_MAX_VOCAB",
    "ClassMixture",
    "acceptance_bound",
    "acceptance_optimum",
    "chord_slope",
    "class_mixture",
    "coverage",
    "lp_acceptance_optimum",
    "ratio_order",
]

LP_MAX_VOCAB = {1: 4096, 2: 96, 3: 16}
"""Largest V the transport LP accepts per N (N = 2 at V = 96: 4,656 draft multisets, ~9,000 flow variables)."""


def coverage(s: NDArray[np.float64] | float, n: int) -> NDArray[np.float64]:
    """``φ_n(s) = 1 − (1 − s)^n``: probability that n i.i.d. drafts hit a set of q-mass ``s``."""
    return np.asarray(1.0 - (1.0 - np.asarray(s, dtype=np.float64)) ** n, dtype=np.float64)


def acceptance_bound(p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> float:
    """``Σ_y min(p(y), 1 − (1 − q(y))^n)``: no exact verifier of n i.i.d. drafts accepts more often."""
    return float(np.minimum(p, coverage(q, n)).sum())


def ratio_order(p: NDArray[np.float64], q: NDArray[np.float64]) -> NDArray[np.int64]:
    """The tokens with ``q > 0`` sorted by the float ratio ``p/q``, descending (ties: lower token id first).

    Tokens with ``q = 0`` are never drafted and are left out.
    """
    drafted = np.flatnonzero(q > 0)
    with np.errstate(over="ignore"):  # p / (subnormal q) is +inf: first in the order, as it should be
        ratio = p[drafted] / q[drafted]
    return drafted[np.argsort(-ratio, kind="stable")].astype(np.int64)


def _prefix_sums(p: NDArray[np.float64], q: NDArray[np.float64], order: NDArray[np.int64]) -> tuple[
    NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]
]:
    """Cumulative sums over the sorted tokens, k = 0 … M.

    Returns ``b_k`` (q-mass of the first k), ``t_k = Σ_{j >= k} q`` (the tail,
    summed from the end so that ``1 − φ_N(b_k) = t_k^N`` keeps its digits where
    ``b_k ≈ 1``) and ``P_k`` (p-mass of the first k plus that of the tokens with q = 0).
    """
    q_s = q[order]
    b = np.concatenate(([0.0], np.cumsum(q_s)))
    t = np.concatenate((np.cumsum(q_s[::-1])[::-1], [0.0]))
    undrafted = float(p[q <= 0].sum())
    P = undrafted + np.concatenate(([0.0], np.cumsum(p[order])))
    return b, t, P


def acceptance_optimum(p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> float:
    """Exact maximum acceptance of any exact verifier of n i.i.d. drafts from q.

    ``1 − max(0, max_k (P_k − φ_n(b_k)))`` over the prefixes of `ratio_order`
    (the min-cut of the transport problem; see the module docstring).
    """
    if n < 1:
        raise ValueError(f"n: the number of drafts must be >= 1, got {n}")
    _, t, P = _prefix_sums(p, q, ratio_order(p, q))
    deficit = max(0.0, float(np.max(P - (1.0 - t**n))))
    return 1.0 - deficit


def chord_slope(t_lo: NDArray[np.float64], t_hi: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    """Slope of φ_n between the points whose tails are ``t_lo > t_hi``: ``(t_lo^n − t_hi^n) / (t_lo − t_hi)``.

    Evaluated as ``Σ_{k<n} t_lo^k t_hi^(n−1−k)``: positive terms, no cancellation, no division.
    """
    total = np.zeros(np.broadcast(t_lo, t_hi).shape)
    for k in range(n):
        total += t_lo**k * t_hi ** (n - 1 - k)
    return total


def _upper_hull(x: NDArray[np.float64], y: NDArray[np.float64]) -> list[int]:
    """Indices of the vertices of the upper concave hull of the points ``(x, y)``, x increasing."""
    hull: list[int] = []
    for k in range(x.size):
        while len(hull) >= 2:
            i, j = hull[-2], hull[-1]
            # drop j when it lies on or below the chord from i to k
            if (y[j] - y[i]) * (x[k] - x[i]) <= (y[k] - y[i]) * (x[j] - x[i]):
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


@dataclass(frozen=True, eq=False)
class ClassMixture:
    """A mixture of class selections over the tokens sorted by ``p/q``, indexed by a uniform ``ω``.

    Component ``ω ∈ [0, 1)`` splits the sorted tokens at the nodes still present,
    ``J(ω) = {k : removal[k] > ω}``: the components are nested, each later one
    coarser, so one array of removal times describes all of them in O(M) memory.

    Attributes
    ----------
    rank : ndarray of int64, shape (V,)
        Position of each token in `ratio_order` (−1 for tokens with q = 0, never drafted).
    removal : ndarray of float64, shape (M + 1,)
        Node k (between ranks k − 1 and k) splits classes while ``ω < removal[k]``;
        ``inf`` at the two ends, 0 for a node that never splits.
    law : ndarray of float64, shape (V,)
        ``x``: the law of the selected draft's token, ``∫_0^1 x_{J(ω)} dω``.
    """

    rank: NDArray[np.int64]
    removal: NDArray[np.float64]
    law: NDArray[np.float64]

    def class_start(self, ranks: NDArray[np.int64], omega: float) -> NDArray[np.int64]:
        """For each rank, the first node of its class in component ω: ``max{k ≤ rank : removal[k] > ω}``."""
        present = np.flatnonzero(self.removal > omega)
        return np.asarray(present[np.searchsorted(present, ranks, side="right") - 1], dtype=np.int64)

    def select(self, drafts: NDArray[np.int64], omega: float) -> int:
        """Index of the first draft (by position) in the highest class present in component ω."""
        return int(np.argmin(self.class_start(self.rank[drafts], omega)))

    def pieces(self) -> list[tuple[float, float]]:
        """``(weight, ω)`` of each distinct component: an ω inside each interval between removal times."""
        cuts = np.unique(np.concatenate(([0.0, 1.0], self.removal[(self.removal > 0) & (self.removal < 1)])))
        return [(float(hi - lo), float(0.5 * (lo + hi))) for lo, hi in itertools.pairwise(cuts) if hi > lo]


def _hull_slopes(p_s: NDArray[np.float64], q_s: NDArray[np.float64], b: NDArray[np.float64],
                 P: NDArray[np.float64], phi_end: float, deficit: float) -> NDArray[np.float64]:
    """Per-token slopes of the hull curve C: ``p/q`` where it follows ``P − D``, a chord's slope elsewhere."""
    M = q_s.size
    y = P - deficit
    y[0], y[M] = 0.0, phi_end
    hull = _upper_hull(b, y)
    slopes = np.empty(M)
    for i, j in itertools.pairwise(hull):
        if j == i + 1 and i > 0 and j < M:
            rise = float(p_s[i])
        elif i > 0 and j < M:
            rise = float(p_s[i:j].sum())
        else:  # an edge from (0, 0) or to (1, φ(1)): its ends' values
            rise = float(y[j] - y[i])
        slopes[i:j] = max(rise, 0.0) / float(q_s[i:j].sum())
    return slopes


def class_mixture(p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> ClassMixture:
    """The optimal selection: the hull curve ``C`` of the module docstring, peeled into chord interpolations.

    Peeling (Carathéodory): while weight ω of ``C`` is peeled off, what is left
    is ``c̃ = C − Σ w_J v_J`` with slope drops (kinks) ``κ̃ ≥ 0`` at its nodes.  With
    ``J`` = the nodes where ``κ̃ > 0`` plus the two ends, ``c̃ ≤ (1 − ω) v_J`` and
    peeling ``v_J`` lowers each ``κ̃(k)`` at the rate ``κ_v(k)``, the slope drop of
    the chord interpolation ``v_J``; the first node to reach 0 leaves ``J`` (its two
    classes merge; only its neighbours' rates change).  An event queue gives
    O(M log M); at ``ω = 1`` nothing is left.  Each component is a valid selection
    whatever the rounding, so rounding costs optimality (~1e-15), never exactness.
    """
    order = ratio_order(p, q)
    M = order.size
    if M == 0:
        raise ValueError("q: has no positive entry, nothing can be drafted")
    rank = np.full(p.shape[0], -1, dtype=np.int64)
    rank[order] = np.arange(M)
    b, t, P = _prefix_sums(p, q, order)
    phi_b = 1.0 - t**n
    deficit = max(0.0, float(np.max(P - phi_b)))
    q_s = q[order]
    slope = _hull_slopes(p[order], q_s, b, P, float(phi_b[M]), deficit)
    kink = np.zeros(M + 1)
    with np.errstate(invalid="ignore"):  # inf − inf where two tokens have p/q = inf: no kink
        kink[1:M] = np.nan_to_num(slope[:-1] - slope[1:], nan=0.0, posinf=np.inf)
    nodes = [0, *np.flatnonzero(kink > 0).tolist(), M]
    removal = np.zeros(M + 1)
    removal[nodes] = np.inf  # until peeled off; the ends never are
    prev = np.zeros(M + 1, dtype=np.int64)
    nxt = np.zeros(M + 1, dtype=np.int64)
    for a, c in itertools.pairwise(nodes):
        nxt[a], prev[c] = c, a
    chord = np.zeros(M + 1)  # chord[a]: slope of φ over the class starting at node a
    chord[nodes[:-1]] = chord_slope(t[nodes[:-1]], t[nodes[1:]], n)
    born = np.zeros(M + 1)  # when the class starting at node a was formed
    left = kink.copy()  # κ̃ at time stamp[k]
    stamp = np.zeros(M + 1)
    rate = np.zeros(M + 1)
    version = np.zeros(M + 1, dtype=np.int64)
    coef = np.zeros(M + 1)  # difference array of Σ chord × lifetime over the ranks of each class
    queue: list[tuple[float, int, int]] = []

    def schedule(k: int, now: float) -> None:
        left[k] -= (now - stamp[k]) * rate[k]
        stamp[k] = now
        rate[k] = chord[prev[k]] - chord[k]
        version[k] += 1
        due = now + left[k] / rate[k] if rate[k] > 0 and left[k] > 0 else now
        heapq.heappush(queue, (due, int(version[k]), k))

    def close(a: int, now: float) -> None:
        coef[a] += chord[a] * (now - born[a])
        coef[nxt[a]] -= chord[a] * (now - born[a])

    for k in nodes[1:-1]:
        schedule(k, 0.0)
    now = 0.0
    while queue:
        due, ver, k = heapq.heappop(queue)
        if ver != version[k] or removal[k] != np.inf:
            continue
        if due >= 1.0:
            break
        now = max(now, due)
        a, c = int(prev[k]), int(nxt[k])
        close(a, now)
        close(k, now)
        removal[k] = now
        nxt[a], prev[c] = c, a
        ta, tc = float(t[a]), float(t[c])
        chord[a] = math.fsum(ta**i * tc ** (n - 1 - i) for i in range(n))  # chord_slope, for one class
        born[a] = now
        for j in (a, c):
            if 0 < j < M:
                schedule(j, now)
    a = 0
    while a != M:
        close(a, 1.0)
        a = int(nxt[a])
    law = np.zeros(p.shape[0])
    law[order] = q_s * np.cumsum(coef)[:M]
    return ClassMixture(rank=rank, removal=removal, law=law)


def _multisets(V: int, n: int, q: NDArray[np.float64]) -> tuple[list[tuple[int, ...]], NDArray[np.float64]]:
    """The draft multisets of tokens with q > 0 and their probabilities ``n!/Π m_y! · Π q(y)``."""
    drafted = [int(v) for v in np.flatnonzero(q > 0)]
    sets = list(itertools.combinations_with_replacement(drafted, n))
    probs = np.empty(len(sets))
    for i, ms in enumerate(sets):
        mult = math.factorial(n)
        for y in set(ms):
            mult //= math.factorial(ms.count(y))
        probs[i] = mult * math.prod(float(q[y]) for y in ms)
    return sets, probs


def lp_acceptance_optimum(p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> float:
    """The optimal-transport LP over all exact verifiers, solved by HiGHS (small V only).

    Maximise ``P(Y ∈ X)`` over couplings of the tuple law ``q^{⊗n}`` and ``p``.
    Only mass on pairs with ``y ∈ x`` counts and the rest can always be coupled
    arbitrarily (both leftovers have the same total), so the LP is the max-flow
    ``max Σ f(m, y)`` over draft multisets ``m`` (symmetrising over draft
    positions loses nothing) and ``y ∈ m`` with ``p(y) > 0``, subject to
    ``Σ_y f(m, y) ≤ Q(m)`` and ``Σ_m f(m, y) ≤ p(y)``, ``f ≥ 0``.

    Raises
    ------
    ValueError
        For n outside `LP_MAX_VOCAB` or V above its limit (the LP grows as ``V^n``);
        `acceptance_optimum` gives the same number in closed form at any size.
    """
    from scipy.optimize import linprog  # deferred: SciPy's optimiser only for this check
    from scipy.sparse import coo_matrix

    V = int(p.shape[0])
    if n not in LP_MAX_VOCAB or LP_MAX_VOCAB[n] < V:
        limits = ", ".join(f"V <= {v} for N = {k}" for k, v in LP_MAX_VOCAB.items())
        raise ValueError(f"lp_acceptance_optimum: V = {V}, N = {n} is too large for the transport LP "
                         f"(limits: {limits}); use acceptance_optimum, its closed form")
    sets, probs = _multisets(V, n, q)
    rows: list[int] = []
    cols: list[int] = []
    for i, ms in enumerate(sets):
        for y in sorted(set(ms)):
            if p[y] > 0:
                rows += [i, len(sets) + y]
                cols += [len(cols) // 2, len(cols) // 2]
    n_var = len(cols) // 2
    if n_var == 0:
        return 0.0
    A = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(sets) + V, n_var)).tocsr()
    b_ub = np.concatenate((probs, p))
    res = linprog(-np.ones(n_var), A_ub=A, b_ub=b_ub, bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"lp_acceptance_optimum: HiGHS failed: {res.message}")
    return float(-res.fun)
