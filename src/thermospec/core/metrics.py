"""Per-context metrics of a payload against its target row.

``topk_mass = sum_{v in ids} p(v)``, ``overlap_mass = sum_v min(p(v), q(v))``
(the acceptance probability) and ``ce_gap_nats = H(p, q) - H(p) = KL(p || q)``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["ce_gap_nats", "overlap_mass", "topk_mass"]


def topk_mass(p: NDArray[np.float64], ids: NDArray[np.int64]) -> float:
    """Target mass of the ids a payload sends."""
    return float(p[ids].sum())


def overlap_mass(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    """``sum min(p, q) = 1 - TV(p, q)``: the probability that a draft is accepted."""
    return float(np.minimum(p, q).sum())


def ce_gap_nats(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    """Cross-entropy gap ``H(p, q) - H(p) = KL(p || q)`` in nats.

    Returns ``inf`` when ``q = 0`` somewhere ``p > 0``.  A KL divergence is never
    negative; when ``q`` is ``p`` up to rounding, the float sum can come out as
    -1e-16: that rounding is clamped to 0 (a non-negative sum is returned as is).
    """
    support = p > 0
    if np.any(q[support] <= 0):
        return float("inf")
    ps = p[support]
    gap = float(np.sum(ps * (np.log(ps) - np.log(q[support]))))
    return gap if gap > 0 else 0.0
