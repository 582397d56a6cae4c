"""``spectr``: SpecTr's k-sequential selection (Sun et al. 2023).

Accept the first ``x_i`` with ``u_i < p(x_i) / (ρ q(x_i))``.  Token y is accepted
with probability ``A(y) = min(q(y), p(y)/ρ) · G``, ``G = Σ_{k<N} (1 − β)^k = φ_N(β)/β``,
``β = Σ min(q, p/ρ)``; it is exact (emit from ``p − A`` after N rejections) iff
``A ≤ p``, i.e. ``G(β_ρ) ≤ ρ``.  ``ρ`` is the smallest such value in ``[1, N]``
(bisection; ``ρβ_ρ − φ_N(β_ρ)`` increases with ρ).  Acceptance ``φ_N(β) = 1 − (1 − β)^N``;
a step stops at the first acceptance, so drawn one at a time it needs ``G`` draws on
average.  Its tables are one ratio level ``p/(ρ q)``, tested against every draft.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
from numpy.typing import NDArray

from thermospec.core.acceptance import acceptance_ratio, residual_cdf
from thermospec.core.sampling import inverse_cdf
from thermospec.core.verifiers.plan import Step, VerifierPlan, VerifierTables, flat_tables

__all__ = ["SpecTrPlan", "spectr_rho"]


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

    @classmethod
    def build(cls, p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> Self:
        """The plan: ρ by bisection, the one ratio level, the residual ``p − A``."""
        rho = spectr_rho(p, q, n)
        one = np.minimum(q, p / rho)  # P(a single draft is y and accepted)
        beta = float(one.sum())
        G = _geometric(beta, n)
        if n == 1:
            cdf = residual_cdf(p, q)  # exactly M1's
        else:
            rest = np.maximum(p - one * G, 0.0)
            cdf = np.cumsum(rest) if rest.sum() > 0 else np.cumsum(p)
        return cls(
            name="spectr", p=p, q=q, n=n,
            acceptance=min(1.0, beta * G), expected_draws=G,
            rho=rho, ratio=acceptance_ratio(p, q) / rho, final_cdf=cdf,
        )

    def _step(self, drafts: NDArray[np.int64], u: NDArray[np.float64]) -> Step:
        for i in range(self.n):
            y = int(drafts[i])
            if u[i] < self.ratio[y]:
                return y, i
        return int(inverse_cdf(self.final_cdf, u[self.n : self.n + 1])[0]), None

    def tables(self) -> VerifierTables:
        """One level ``p / (ρ q)`` for every draft, then the final residual."""
        return flat_tables(self.ratio[None, :], self.final_cdf, False)

    def accepted_law(self) -> NDArray[np.float64]:
        """``min(q, p/ρ) G``, ``G = φ_N(β)/β``."""
        single = np.minimum(self.q, self.p / float(self.rho))
        beta = float(single.sum())
        geometric = self.n if beta <= 0 else (1.0 - (1.0 - beta) ** self.n) / beta
        law: NDArray[np.float64] = single * geometric
        return law
