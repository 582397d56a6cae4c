"""``optimal``: the optimal transport of N drafts (Khisti et al. 2024's canonical form).

Select one draft by the class mixture of `thermospec.core.transport` (component
``ω = u_2``: the first draft of the highest class present), then single-draft
speculative sampling of the selection's law ``x`` against ``p``: accept iff
``u_1 < p(y)/x(y)``, else emit from ``max(p − x, 0)``.  Exact for any mixture,
because ``y ~ x`` exactly; the mixture is chosen so that ``Σ min(p, x)`` is the
optimum over all exact verifiers (`transport.acceptance_optimum`).  The selection
looks at every draft, so a step needs all N.  Its tables are one ratio level ``p/x``
after the selection, with the class walk of the mixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from thermospec.core.acceptance import acceptance_ratio, residual_cdf
from thermospec.core.sampling import inverse_cdf
from thermospec.core.transport import ClassMixture, class_mixture
from thermospec.core.verifiers.plan import Step, VerifierPlan, VerifierTables, flat_tables

__all__ = ["OptimalPlan"]


@dataclass(frozen=True, eq=False, kw_only=True)
class OptimalPlan(VerifierPlan):
    """Class-mixture selection, then speculative sampling of ``x`` (the selection's law) against p."""

    selection: ClassVar[bool] = True

    mixture: ClassMixture | None
    law: NDArray[np.float64]
    ratio: NDArray[np.float64]
    final_cdf: NDArray[np.float64]

    @classmethod
    def build(cls, p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> Self:
        """The plan: the class mixture (none at N = 1: the selection is the one draft), its law's ratio, residual."""
        mixture = class_mixture(p, q, n) if n > 1 else None
        law = mixture.law if mixture is not None else q
        return cls(
            name="optimal", p=p, q=q, n=n,
            acceptance=float(np.minimum(p, law).sum()), expected_draws=float(n),
            mixture=mixture, law=law, ratio=acceptance_ratio(p, law), final_cdf=residual_cdf(p, law),
        )

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
            return flat_tables(self.ratio[None, :], self.final_cdf, True)
        return flat_tables(self.ratio[None, :], self.final_cdf, True, self.mixture.removal, self.mixture.rank)

    def accepted_law(self) -> NDArray[np.float64]:
        """``min(p, x)``, x the selection's law."""
        law: NDArray[np.float64] = np.minimum(self.p, self.law)
        return law
