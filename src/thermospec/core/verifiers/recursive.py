"""``recursive``: recursive rejection sampling (SpecInfer's multi-step speculative sampling, Miao et al. 2023).

``p_1 = p``; accept ``x_i`` iff ``u_i < p_i(x_i)/q(x_i)``, else
``p_{i+1} = max(p_i − q, 0) / Σ max(p_i − q, 0)`` (``= p_i`` when that residual is
all zeros: a rejection there had probability 0); after N rejections emit from
``p_{N+1}``.  Each stage is single-draft speculative sampling of ``p_i`` by ``q``, so
by induction the output is ``p``.  Acceptance ``1 − Π_i (1 − α_i)``,
``α_i = Σ min(p_i, q)``; a step stops at the first acceptance, so drawn one at a
time it needs ``Σ_{i≤N} Π_{j<i} (1 − α_j)`` draws on average.

The residual after k rejections depends only on the context, so the tables are N
ratio levels ``p_i / q`` and the final residual; `RecursivePlan.rows` builds those
of many contexts at once with the same operations along each row of C-contiguous
blocks (elementwise operations, and sums and running sums along the last axis, which
NumPy computes with the loop it runs on one row), so every value is the per-context
plan's (tested on every state of an order-N corpus target).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from thermospec.core.acceptance import acceptance_ratio, residual, residual_cdf
from thermospec.core.sampling import inverse_cdf
from thermospec.core.verifiers.plan import RowTables, Step, VerifierPlan, VerifierTables, flat_tables

__all__ = ["RecursivePlan", "recursive_rows", "recursive_targets"]


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

    row_tables: ClassVar[bool] = True

    ratios: tuple[NDArray[np.float64], ...]
    final_cdf: NDArray[np.float64]

    @classmethod
    def build(cls, p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> Self:
        """The plan: each level's ratio, the acceptance's running product, the final residual."""
        targets = recursive_targets(p, q, n)
        alphas = [min(1.0, float(np.minimum(t, q).sum())) for t in targets]
        survive = np.cumprod([1.0, *(1.0 - a for a in alphas)])
        return cls(
            name="recursive", p=p, q=q, n=n,
            acceptance=float(1.0 - survive[-1]),
            expected_draws=float(survive[:-1].sum()),
            ratios=tuple(acceptance_ratio(t, q) for t in targets),
            final_cdf=residual_cdf(targets[-1], q),
        )

    @classmethod
    def levels(cls, n: int) -> int:
        """N levels: draft i is tested against ``p_i``."""
        return n

    @classmethod
    def rows(cls, P: NDArray[np.float64], Q: NDArray[np.float64], n: int) -> RowTables:
        """`recursive_rows`."""
        return recursive_rows(P, Q, n)

    def _step(self, drafts: NDArray[np.int64], u: NDArray[np.float64]) -> Step:
        for i in range(self.n):
            y = int(drafts[i])
            if u[i] < self.ratios[i][y]:
                return y, i
        return int(inverse_cdf(self.final_cdf, u[self.n : self.n + 1])[0]), None

    def tables(self) -> VerifierTables:
        """N levels ``p_i / q``, then the final residual."""
        return flat_tables(np.stack(self.ratios), self.final_cdf, False)

    def accepted_law(self) -> NDArray[np.float64]:
        """``Σ_i Π_{j<i}(1 − α_j) min(p_i, q)``."""
        law = np.zeros_like(self.p)
        reach = 1.0
        for p_i in recursive_targets(self.p, self.q, self.n):
            accepted = np.minimum(p_i, self.q)
            law += reach * accepted
            reach *= 1.0 - min(float(accepted.sum()), 1.0)
        return law


def recursive_rows(P: NDArray[np.float64], Q: NDArray[np.float64], n: int) -> RowTables:
    """`RecursivePlan.build(p, q, n)`'s tables and acceptance for each row pair of `P` and `Q` (shape (m, V))."""
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
    return RowTables(ratios=ratios, final_cdf=final_cdf, acceptance=1.0 - survive)
