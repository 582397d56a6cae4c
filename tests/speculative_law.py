"""Exact laws the statistical tests compare against, computed independently of the package.

`emitted_law` is the distribution of the token emitted by one draft-and-correct
step when the draft is sampled from ``q_draft`` but the correction is computed
with ``q_used``: it equals ``p`` exactly when ``q_used == q_draft`` (the theorem),
and it is how the negative controls compute their expected χ² non-centrality.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from thermospec.core.statistics import pooled_bins

# Significance of every statistical assertion in the suite: an honest sampler must
# give p > ALPHA at the fixed seed, a broken one p < ALPHA.
ALPHA = 1e-3


def emitted_law(
    p: NDArray[np.float64], q_draft: NDArray[np.float64], q_used: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Law of the emitted token: drafts from ``q_draft``, acceptance and residual from ``q_used``."""
    ratio = np.divide(p, q_used, out=np.zeros_like(p), where=q_used > 0)
    accept = q_draft * np.minimum(1.0, ratio)
    residual = np.maximum(p - q_used, 0.0)
    rest = residual / residual.sum() if residual.sum() > 0 else p / p.sum()
    law: NDArray[np.float64] = accept + (1.0 - accept.sum()) * rest
    return law


def noncentrality(law: NDArray[np.float64], p: NDArray[np.float64], n: int) -> tuple[float, int]:
    """Expected non-centrality ``n Σ (law - p)² / p`` of the pooled χ² of `n` draws of `law` against ``n p``.

    Returns the non-centrality and the degrees of freedom of the pooled test.
    """
    obs, exp = pooled_bins(n * law, n * p)
    return float(np.sum((obs - exp) ** 2 / exp)), int(obs.size - 1)


def miss_probability(lam: float, dof: int) -> float:
    """Probability that a χ² test at level `ALPHA` misses a shift of non-centrality `lam`."""
    critical = stats.chi2.isf(ALPHA, dof)
    return float(stats.ncx2.cdf(critical, dof, lam))


def spec_formula(ids: NDArray[np.int64], codes: NDArray[np.uint8], V: int, tau: float, eps: float,
                 delta: float) -> NDArray[np.float64]:
    """SPEC §3 written out: ``q(ids_i) = (1 - T) w_i / Σ w``, ``q(v) = ε`` elsewhere."""
    T = (V - len(ids)) * eps
    ell_hat = np.array([-float(c) * delta for c in codes.tolist()])
    w = np.exp(ell_hat / tau)
    q = np.full(V, eps)
    for i, v in enumerate(ids.tolist()):
        q[v] = (1.0 - T) * w[i] / w.sum()
    return q
