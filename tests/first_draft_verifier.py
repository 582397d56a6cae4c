"""A verifier written as a user would add one: this module and an entry in ``PLANS`` (docs/architecture.md).

``first``: of N drafts only the first counts.  Accept ``x_1`` iff ``u_1 < p(x_1)/q(x_1)``,
else emit from M1's residual ``max(p − q, 0)``; drafts 2 … N are never accepted (their
ratio levels are 0, and ``u < 0`` never holds).  It is M1 with N − 1 wasted draws: exact,
acceptance ``Σ min(p, q)``, a floor any real N-draft verifier must beat.  Nothing else in
the package names it, yet it runs on every context source, with one or many chains,
blocks and trees, compiled where the table walk is (`tests/test_new_verifier.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
from numpy.typing import NDArray

from thermospec.core.acceptance import acceptance_ratio, residual_cdf
from thermospec.core.sampling import inverse_cdf
from thermospec.core.verifiers.plan import Step, VerifierPlan, VerifierTables, flat_tables


@dataclass(frozen=True, eq=False, kw_only=True)
class FirstDraftPlan(VerifierPlan):
    """Only the first draft is tested (``ratio = p / q``); ``final_cdf`` is M1's residual."""

    ratio: NDArray[np.float64]
    final_cdf: NDArray[np.float64]

    @classmethod
    def build(cls, p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> Self:
        """M1's ratio and residual of (p, q)."""
        alpha = float(np.minimum(p, q).sum())
        return cls(name="first", p=p, q=q, n=n, acceptance=alpha, expected_draws=alpha + (1.0 - alpha) * n,
                   ratio=acceptance_ratio(p, q), final_cdf=residual_cdf(p, q))

    @classmethod
    def levels(cls, n: int) -> int:
        """One level per draft: the first is ``p / q``, the others 0."""
        return n

    def _step(self, drafts: NDArray[np.int64], u: NDArray[np.float64]) -> Step:
        y = int(drafts[0])
        if u[0] < self.ratio[y]:
            return y, 0
        return int(inverse_cdf(self.final_cdf, u[self.n : self.n + 1])[0]), None

    def tables(self) -> VerifierTables:
        """``p / q`` for the first draft, zeros for the others, then M1's residual."""
        ratios = np.zeros((self.n, self.p.shape[0]), dtype=np.float64)
        ratios[0] = self.ratio
        return flat_tables(ratios, self.final_cdf, False)

    def accepted_law(self) -> NDArray[np.float64]:
        """``min(p, q)``: only the first draft is ever accepted."""
        law: NDArray[np.float64] = np.minimum(self.p, self.q)
        return law


@dataclass(frozen=True, eq=False, kw_only=True)
class WrongResidualPlan(FirstDraftPlan):
    """A negative control: after a rejection it emits from p itself instead of the residual (not exact)."""

    @classmethod
    def build(cls, p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> Self:
        """`FirstDraftPlan`'s, with p's own CDF as the residual."""
        alpha = float(np.minimum(p, q).sum())
        return cls(name="wrong", p=p, q=q, n=n, acceptance=alpha, expected_draws=alpha + (1.0 - alpha) * n,
                   ratio=acceptance_ratio(p, q), final_cdf=np.cumsum(p))
