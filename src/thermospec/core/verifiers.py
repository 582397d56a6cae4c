"""Exact verification of N i.i.d. drafts: one target call, N TSU draws, one emitted token.

The TSU draws ``x_1 … x_N`` i.i.d. from ``q = F(ψ)``; a verifier emits one token
distributed exactly as ``p`` and *accepts* when that token is one of the drafts.
Every verifier here is split in two:

- `make_plan` (``name, p, q, N``): everything that depends only on the context,
  computed once per context (cache it next to ψ), with the verifier's exact
  acceptance probability `VerifierPlan.acceptance` and its mean TSU draws;
- `VerifierPlan.step` (``drafts, u``): the per-step reference, plain scalar code.

**Uniform layout.** A step consumes exactly ``N + 1`` float64 uniforms in [0, 1)
(`uniforms_per_step`), always all of them: ``u = (u_1, …, u_N, u_res)``.
``recursive`` and ``spectr`` test draft ``i`` with ``u_i``; ``optimal`` tests its
selected draft with ``u_1`` and picks its mixture component with ``u_2``
(``u_3 … u_N`` unused); every verifier draws its residual from ``u_res`` by
`inverse_cdf`.  With ``N = 1`` all three are M1's `accept_correct_step` on
``(u_1, u_res)``, token for token.  A step returns ``(emitted token, index)``,
the index (0-based) of the accepted draft or None when the residual was drawn.

Verifiers (``VERIFIERS``):

``recursive``
    Recursive rejection sampling (SpecInfer's multi-step speculative sampling,
    Miao et al. 2023): ``p_1 = p``; accept ``x_i`` iff ``u_i < p_i(x_i)/q(x_i)``,
    else ``p_{i+1} = max(p_i − q, 0) / Σ max(p_i − q, 0)`` (``= p_i`` when that
    residual is all zeros: a rejection there had probability 0); after N
    rejections emit from ``p_{N+1}``.  Each stage is single-draft speculative
    sampling of ``p_i`` by ``q``, so by induction the output is ``p``.
    Acceptance ``1 − Π_i (1 − α_i)``, ``α_i = Σ min(p_i, q)``.
``spectr``
    SpecTr's k-sequential selection (Sun et al. 2023): accept the first ``x_i``
    with ``u_i < p(x_i) / (ρ q(x_i))``.  Token y is accepted with probability
    ``A(y) = min(q(y), p(y)/ρ) · G``, ``G = Σ_{k<N} (1 − β)^k = φ_N(β)/β``,
    ``β = Σ min(q, p/ρ)``; it is exact (emit from ``p − A`` after N rejections)
    iff ``A ≤ p``, i.e. ``G(β_ρ) ≤ ρ``.  ``ρ`` is the smallest such value in
    ``[1, N]`` (bisection; ``ρβ_ρ − φ_N(β_ρ)`` increases with ρ).  Acceptance
    ``φ_N(β) = 1 − (1 − β)^N``.
``optimal``
    Select one draft by the class mixture of `thermospec.core.transport`
    (component ``ω = u_2``: the first draft of the highest class present), then
    single-draft speculative sampling of the selection's law ``x`` against ``p``
    (Khisti et al. 2024's canonical form): accept iff
    ``u_1 < p(y)/x(y)``, else emit from ``max(p − x, 0)``.  Exact for any
    mixture, because ``y ~ x`` exactly; the mixture is chosen so that
    ``Σ min(p, x)`` is the optimum over all exact verifiers
    (`transport.acceptance_optimum`).

TSU draws: ``recursive`` and ``spectr`` stop at the first acceptance, so drawn
one at a time they need ``Σ_{i≤N} Π_{j<i} (1 − α_j)`` resp. ``G`` draws on average
(`VerifierPlan.expected_draws`); ``optimal`` needs all N (its selection looks at
every draft).  None needs draws without replacement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from thermospec.core.acceptance import acceptance_ratio, residual, residual_cdf
from thermospec.core.sampling import inverse_cdf
from thermospec.core.transport import ClassMixture, class_mixture

__all__ = [
    "VERIFIERS",
    "OptimalPlan",
    "RecursivePlan",
    "SpecTrPlan",
    "VerifierPlan",
    "VerifierTables",
    "make_plan",
    "recursive_targets",
    "spectr_rho",
    "table_layout",
    "uniforms_per_step",
    "verifier_acceptance",
    "verifier_tables",
    "verify_step",
]

VERIFIERS = ("recursive", "spectr", "optimal")
"""Names accepted by `make_plan` (and, later, by ``--verifier``)."""

Step = tuple[int, int | None]


def uniforms_per_step(n: int) -> int:
    """Uniforms one step consumes: one per draft plus one for the residual."""
    return n + 1


@dataclass(frozen=True, eq=False, kw_only=True)
class VerifierPlan:
    """A verifier prepared for one context.

    Attributes
    ----------
    name : str
        One of `VERIFIERS`.
    p, q : ndarray of float64, shape (V,)
        The target row and the draft distribution ``F(ψ)``.
    n : int
        Number of drafts N.
    acceptance : float
        Exact probability that the emitted token is an accepted draft.
    expected_draws : float
        Mean TSU draws per step when drafts are drawn only while needed.
    """

    name: str
    p: NDArray[np.float64]
    q: NDArray[np.float64]
    n: int
    acceptance: float
    expected_draws: float

    def step(self, drafts: NDArray[np.int64] | list[int], u: NDArray[np.float64]) -> Step:
        """Emit one token from N drafts (i.i.d. from q) and ``N + 1`` uniforms (module docstring).

        Raises
        ------
        ValueError
            If there are not N drafts and N + 1 uniforms, or a draft is outside
            the vocabulary or has ``q = 0`` (a TSU never draws it).
        """
        d = np.asarray(drafts, dtype=np.int64).reshape(-1)
        u = np.asarray(u, dtype=np.float64).reshape(-1)
        if d.size != self.n or u.size != self.n + 1:
            raise ValueError(f"step: needs {self.n} drafts and {self.n + 1} uniforms, got {d.size} and {u.size}")
        V = self.q.shape[0]
        if d.size and (int(d.min()) < 0 or int(d.max()) >= V):
            raise ValueError(f"drafts: {d.tolist()} has a token outside the vocabulary [0, {V})")
        if not np.all(self.q[d] > 0):
            y = int(d[np.argmin(self.q[d] > 0)])
            raise ValueError(f"drafts: the draft {y} has q = {float(self.q[y])!r}; a draft must have q > 0")
        return self._step(d, u)

    def draws_used(self, index: int | None) -> int:
        """TSU draws a step needed, drawing one at a time until a draft is accepted: ``index + 1``, or N."""
        return self.n if index is None else index + 1

    def _step(self, drafts: NDArray[np.int64], u: NDArray[np.float64]) -> Step:
        raise NotImplementedError

    def tables(self) -> VerifierTables:
        """The plan as flat per-context tables (`VerifierTables`), for the table-driven steps."""
        raise NotImplementedError


def recursive_targets(p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> list[NDArray[np.float64]]:
    """``p_1 = p, …, p_n``: the distribution draft i is tested against by recursive rejection.

    ``p_{i+1} = max(p_i − q, 0)`` normalised, or ``p_i`` itself when that residual
    is all zeros (``p_i = q`` up to rounding, so a rejection had probability 0).
    """
    targets = [p]
    for _ in range(n - 1):
        r = residual(targets[-1], q)
        total = float(r.sum())
        targets.append(r / total if total > 0 else targets[-1])
    return targets


@dataclass(frozen=True, eq=False, kw_only=True)
class RecursivePlan(VerifierPlan):
    """Recursive rejection sampling: ``ratios[i] = p_i / q``; ``final_cdf`` draws from ``p_{N+1}``."""

    ratios: tuple[NDArray[np.float64], ...]
    final_cdf: NDArray[np.float64]

    def _step(self, drafts: NDArray[np.int64], u: NDArray[np.float64]) -> Step:
        for i in range(self.n):
            y = int(drafts[i])
            if u[i] < self.ratios[i][y]:
                return y, i
        return int(inverse_cdf(self.final_cdf, u[self.n : self.n + 1])[0]), None

    def tables(self) -> VerifierTables:
        """N levels ``p_i / q``, then the final residual."""
        return _tables(np.stack(self.ratios), self.final_cdf, False)


def _recursive_plan(p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> RecursivePlan:
    targets = recursive_targets(p, q, n)
    alphas = [min(1.0, float(np.minimum(t, q).sum())) for t in targets]
    survive = np.cumprod([1.0, *(1.0 - a for a in alphas)])
    return RecursivePlan(
        name="recursive", p=p, q=q, n=n,
        acceptance=float(1.0 - survive[-1]),
        expected_draws=float(survive[:-1].sum()),
        ratios=tuple(acceptance_ratio(t, q) for t in targets),
        final_cdf=residual_cdf(targets[-1], q),
    )


def _geometric(beta: float, n: int) -> float:
    """``G = Σ_{k<n} (1 − β)^k = φ_n(β)/β`` (n at β = 0), without dividing."""
    return float(sum((1.0 - beta) ** k for k in range(n)))


def spectr_rho(p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> float:
    """Smallest ``ρ`` in ``[1, n]`` with ``G(β_ρ) ≤ ρ`` (``β_ρ = Σ min(q, p/ρ)``), to float precision.

    The returned value always satisfies the inequality as evaluated in float64,
    so ``A = min(q, p/ρ) · G ≤ p`` holds up to one rounding.
    """

    def valid(rho: float) -> bool:
        return _geometric(float(np.minimum(q, p / rho).sum()), n) <= rho

    if n == 1 or valid(1.0):
        return 1.0
    lo, hi = 1.0, float(n)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if valid(mid):
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True, eq=False, kw_only=True)
class SpecTrPlan(VerifierPlan):
    """K-sequential selection: ``ratio = p/(ρ q)``; ``final_cdf`` draws from ``p − A``."""

    rho: float
    ratio: NDArray[np.float64]
    final_cdf: NDArray[np.float64]

    def _step(self, drafts: NDArray[np.int64], u: NDArray[np.float64]) -> Step:
        for i in range(self.n):
            y = int(drafts[i])
            if u[i] < self.ratio[y]:
                return y, i
        return int(inverse_cdf(self.final_cdf, u[self.n : self.n + 1])[0]), None

    def tables(self) -> VerifierTables:
        """One level ``p / (ρ q)`` for every draft, then the final residual."""
        return _tables(self.ratio[None, :], self.final_cdf, False)


def _spectr_plan(p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> SpecTrPlan:
    rho = spectr_rho(p, q, n)
    one = np.minimum(q, p / rho)  # P(a single draft is y and accepted)
    beta = float(one.sum())
    G = _geometric(beta, n)
    if n == 1:
        cdf = residual_cdf(p, q)  # exactly M1's
    else:
        rest = np.maximum(p - one * G, 0.0)
        cdf = np.cumsum(rest) if rest.sum() > 0 else np.cumsum(p)
    return SpecTrPlan(
        name="spectr", p=p, q=q, n=n,
        acceptance=min(1.0, beta * G), expected_draws=G,
        rho=rho, ratio=acceptance_ratio(p, q) / rho, final_cdf=cdf,
    )


@dataclass(frozen=True, eq=False, kw_only=True)
class OptimalPlan(VerifierPlan):
    """Class-mixture selection, then speculative sampling of ``x`` (the selection's law) against p."""

    mixture: ClassMixture | None
    law: NDArray[np.float64]
    ratio: NDArray[np.float64]
    final_cdf: NDArray[np.float64]

    def draws_used(self, index: int | None) -> int:
        """N: the selection looks at every draft."""
        return self.n

    def select(self, drafts: NDArray[np.int64], u_component: float) -> int:
        """Index of the selected draft: the first one in the highest class of component ``ω = u_component``."""
        return 0 if self.mixture is None else self.mixture.select(drafts, u_component)

    def _step(self, drafts: NDArray[np.int64], u: NDArray[np.float64]) -> Step:
        i = self.select(drafts, float(u[1]) if self.n > 1 else 0.0)
        y = int(drafts[i])
        if u[0] < self.ratio[y]:
            return y, i
        return int(inverse_cdf(self.final_cdf, u[self.n : self.n + 1])[0]), None

    def tables(self) -> VerifierTables:
        """The selection's ratio ``p / x`` and residual, and the class walk of its mixture (none at N = 1)."""
        if self.mixture is None:
            return _tables(self.ratio[None, :], self.final_cdf, True)
        return _tables(self.ratio[None, :], self.final_cdf, True, self.mixture.removal, self.mixture.rank)


def _optimal_plan(p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> OptimalPlan:
    mixture = class_mixture(p, q, n) if n > 1 else None
    law = mixture.law if mixture is not None else q
    return OptimalPlan(
        name="optimal", p=p, q=q, n=n,
        acceptance=float(np.minimum(p, law).sum()), expected_draws=float(n),
        mixture=mixture, law=law, ratio=acceptance_ratio(p, law), final_cdf=residual_cdf(p, law),
    )


_BUILDERS = {"recursive": _recursive_plan, "spectr": _spectr_plan, "optimal": _optimal_plan}


def make_plan(name: str, p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> VerifierPlan:
    """Prepare verifier `name` for a context with target `p` and drafts from `q` (float64, shape (V,)).

    Raises
    ------
    ValueError
        For an unknown name, ``n < 1``, or p, q not 1-D float arrays of one shape.
    """
    if name not in _BUILDERS:
        raise ValueError(f"verifier: unknown name {name!r}; choose one of {', '.join(VERIFIERS)}")
    if n < 1:
        raise ValueError(f"drafts: the number of drafts must be >= 1, got {n}")
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.ndim != 1 or p.shape != q.shape:
        raise ValueError(f"p, q: must be 1-D of one shape, got {p.shape} and {q.shape}")
    return _BUILDERS[name](p, q, n)


def verify_step(name: str, p: NDArray[np.float64], q: NDArray[np.float64],
                drafts: NDArray[np.int64] | list[int], u: NDArray[np.float64]) -> Step:
    """One step of verifier `name` from scratch: ``make_plan(name, p, q, len(drafts)).step(drafts, u)``."""
    return make_plan(name, p, q, len(drafts)).step(np.asarray(drafts, dtype=np.int64), u)


def verifier_acceptance(name: str, p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> float:
    """Exact probability that verifier `name` emits an accepted draft, given (p, q, N): ``make_plan(…).acceptance``."""
    return make_plan(name, p, q, n).acceptance


@dataclass(frozen=True, eq=False, kw_only=True)
class VerifierTables:
    """A plan as flat per-context tables: what a table-driven step (compiled or not) reads.

    One step with drafts ``y_1 … y_N`` and verifier uniforms ``(u_1 … u_N, u_res)``:

    - ``selection == False`` (``recursive``, ``spectr``): accept the first ``y_i``
      with ``u_i < ratios[min(i, L − 1)][y_i]`` (recursive: ``L = N`` levels ``p_i/q``;
      spectr: one level ``p/(ρ q)``);
    - ``selection == True`` (``optimal``): select draft ``i`` (the first of the
      smallest `class_start` at ``ω = u_2``; draft 0 when N = 1) and accept it iff
      ``u_1 < ratios[0][y_i]``;
    - otherwise emit ``inverse_cdf(final_cdf, u_res)``.

    ``class_start(r, ω) = max{k ≤ r : removal[k] > ω}`` (`ClassMixture.class_start`)
    is found without a search over all nodes: start at ``node_at[r]`` (the last node
    ``≤ r`` that ever splits) and follow ``up[k]`` (the nearest node left of k with a
    larger removal time) while ``removal[k] ≤ ω``; every skipped node has a removal
    time ``≤ ω``, and node 0 (``removal = inf``) ends the walk.

    Attributes
    ----------
    ratios : ndarray of float64, shape (L, V)
    final_cdf : ndarray of float64, shape (V,)
    selection : bool
    rank : ndarray of int64, shape (V,)
        Position of each token in the ratio order (−1 for q = 0); empty unless `selection`.
    node_at : ndarray of int64, shape (M,)
    up : ndarray of int64, shape (M + 1,)
    removal : ndarray of float64, shape (M + 1,)
        Empty unless `selection` with N > 1.
    """

    ratios: NDArray[np.float64]
    final_cdf: NDArray[np.float64]
    selection: bool
    rank: NDArray[np.int64]
    node_at: NDArray[np.int64]
    up: NDArray[np.int64]
    removal: NDArray[np.float64]

    def class_start(self, r: int, omega: float) -> int:
        """``max{k ≤ r : removal[k] > ω}`` by the walk of the class docstring."""
        k = int(self.node_at[r])
        while not self.removal[k] > omega:
            k = int(self.up[k])
        return k


def _class_walk(removal: NDArray[np.float64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``node_at[r]`` (last node ``k ≤ r`` with ``removal[k] > 0``) and ``up[k]`` (nearest left, strictly later)."""
    M = removal.shape[0] - 1
    splits = removal > 0
    positions = np.where(splits, np.arange(M + 1), 0)
    node_at = np.maximum.accumulate(positions)[:M].astype(np.int64)
    up = np.zeros(M + 1, dtype=np.int64)
    stack: list[int] = []
    for k in np.flatnonzero(splits).tolist():
        while stack and not removal[stack[-1]] > removal[k]:
            stack.pop()
        up[k] = stack[-1] if stack else 0
        stack.append(k)
    return node_at, up


def table_layout(name: str, n: int) -> tuple[int, bool]:
    """``(L, selection)`` of verifier `name`'s tables for N = n: the ratio levels, and whether it selects a draft.

    Raises
    ------
    ValueError
        For an unknown name or ``n < 1``.
    """
    if name not in _BUILDERS:
        raise ValueError(f"verifier: unknown name {name!r}; choose one of {', '.join(VERIFIERS)}")
    if n < 1:
        raise ValueError(f"drafts: the number of drafts must be >= 1, got {n}")
    return (n if name == "recursive" else 1), name == "optimal"


def verifier_tables(plan: VerifierPlan) -> VerifierTables:
    """The flat tables of `plan` (its own arrays: a table-driven step emits the tokens `plan.step` emits)."""
    return plan.tables()


def _tables(ratios: NDArray[np.float64], final_cdf: NDArray[np.float64], selection: bool,
            removal: NDArray[np.float64] | None = None, rank: NDArray[np.int64] | None = None) -> VerifierTables:
    empty_i = np.zeros(0, dtype=np.int64)
    if removal is None or rank is None:
        return VerifierTables(ratios=ratios, final_cdf=final_cdf, selection=selection, rank=empty_i,
                              node_at=empty_i, up=empty_i, removal=np.zeros(0, dtype=np.float64))
    node_at, up = _class_walk(removal)
    return VerifierTables(ratios=ratios, final_cdf=final_cdf, selection=selection, rank=rank, node_at=node_at,
                          up=up, removal=removal)
