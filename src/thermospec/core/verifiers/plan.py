"""What every verifier of N drafts is: a plan per context (`VerifierPlan`) and its flat tables (`VerifierTables`).

A verifier is one module of this package with one `VerifierPlan` subclass (and one entry in
``PLANS``, `thermospec.core.verifiers`).  Its plan holds what depends only on the context
(built once per context by `VerifierPlan.build`); it gives

- `VerifierPlan.step`: the per-step reference, plain scalar code, on the uniform layout of
  the package docstring (``N + 1`` uniforms, ``u = (u_1, …, u_N, u_res)``);
- `VerifierPlan.acceptance` and `VerifierPlan.accepted_law`: the exact probability of
  accepting a draft, and of accepting one that is y (the token trees' dynamic program);
- `VerifierPlan.tables`: the same step as flat tables (`VerifierTables`), which every
  table-driven step (the NumPy fallback, the compiled kernels, blocks, trees) walks without
  knowing which verifier built them: ``levels(N)`` ratio levels tested in draft order, or
  one level after a class-mixture selection (``selection``).  A verifier whose step is
  such a walk needs nothing more to run at compiled speed on every source.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
from numpy.typing import NDArray

__all__ = ["RowTables", "Step", "VerifierPlan", "VerifierTables", "flat_tables", "uniforms_per_step"]

Step = tuple[int, int | None]
"""``(emitted token, index of the accepted draft or None when the residual was drawn)``."""


def uniforms_per_step(n: int) -> int:
    """Uniforms one step consumes: one per draft plus one for the residual."""
    return n + 1


@dataclass(frozen=True, eq=False)
class RowTables:
    """The tables of m contexts built at once (`VerifierPlan.rows`), row by row each context's `VerifierTables`.

    Attributes
    ----------
    ratios : ndarray of float64, shape (m, L, V)
        The ratio levels of each context (0 where q = 0).
    final_cdf : ndarray of float64, shape (m, V)
        The residual CDF of each context.
    acceptance : ndarray of float64, shape (m,)
        Each context's exact acceptance.
    """

    ratios: NDArray[np.float64]
    final_cdf: NDArray[np.float64]
    acceptance: NDArray[np.float64]


@dataclass(frozen=True, eq=False, kw_only=True)
class VerifierPlan(ABC):
    """A verifier prepared for one context.

    Attributes
    ----------
    name : str
        The verifier's name (its key in ``PLANS``).
    p, q : ndarray of float64, shape (V,)
        The target row and the draft distribution ``F(ψ)``.
    n : int
        Number of drafts N.
    acceptance : float
        Exact probability that the emitted token is an accepted draft.
    expected_draws : float
        Mean TSU draws per step when drafts are drawn only while needed.
    """

    selection: ClassVar[bool] = False
    """Whether the tables select one draft (class mixture) and test it alone, rather than test drafts in order."""
    row_tables: ClassVar[bool] = False
    """Whether `rows` builds many contexts' tables at once (else each context's plan is built when met)."""

    name: str
    p: NDArray[np.float64]
    q: NDArray[np.float64]
    n: int
    acceptance: float
    expected_draws: float

    @classmethod
    @abstractmethod
    def build(cls, p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> Self:
        """The plan of a context with target `p` and drafts from `q` (float64, shape (V,), checked), N = `n`."""

    @classmethod
    def levels(cls, n: int) -> int:
        """Ratio levels of the tables for N = `n` (one, tested against every draft, unless the verifier says)."""
        return 1

    @classmethod
    def rows(cls, P: NDArray[np.float64], Q: NDArray[np.float64], n: int) -> RowTables:
        """The tables of every row pair of `P` and `Q` (shape (m, V)) at once, bit for bit each context's plan."""
        raise NotImplementedError(f"{cls.__name__} builds its tables one context at a time (row_tables is False)")

    def step(self, drafts: NDArray[np.int64] | list[int], u: NDArray[np.float64]) -> Step:
        """Emit one token from N drafts (i.i.d. from q) and ``N + 1`` uniforms (package docstring).

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

    @abstractmethod
    def _step(self, drafts: NDArray[np.int64], u: NDArray[np.float64]) -> Step:
        """`step` on checked drafts and uniforms."""

    @abstractmethod
    def tables(self) -> VerifierTables:
        """The plan as flat per-context tables (`VerifierTables`), for the table-driven steps."""

    @abstractmethod
    def accepted_law(self) -> NDArray[np.float64]:
        """``a(y)``: the probability that a draft is accepted and it is y (sums to `acceptance`)."""


@dataclass(frozen=True, eq=False, kw_only=True)
class VerifierTables:
    """A plan as flat per-context tables: what a table-driven step (compiled or not) reads.

    One step with drafts ``y_1 … y_N`` and verifier uniforms ``(u_1 … u_N, u_res)``:

    - ``selection == False``: accept the first ``y_i`` with
      ``u_i < ratios[min(i, L − 1)][y_i]`` (recursive: ``L = N`` levels ``p_i/q``;
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


def flat_tables(ratios: NDArray[np.float64], final_cdf: NDArray[np.float64], selection: bool,
                removal: NDArray[np.float64] | None = None, rank: NDArray[np.int64] | None = None) -> VerifierTables:
    """`VerifierTables` of ratio levels and a residual CDF, with the class walk of a selection's mixture if any."""
    empty_i = np.zeros(0, dtype=np.int64)
    if removal is None or rank is None:
        return VerifierTables(ratios=ratios, final_cdf=final_cdf, selection=selection, rank=empty_i,
                              node_at=empty_i, up=empty_i, removal=np.zeros(0, dtype=np.float64))
    node_at, up = _class_walk(removal)
    return VerifierTables(ratios=ratios, final_cdf=final_cdf, selection=selection, rank=rank, node_at=node_at,
                          up=up, removal=removal)
