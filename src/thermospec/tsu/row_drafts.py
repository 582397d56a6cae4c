"""ψ of many target rows at once: the bytes, F(ψ), tables and metrics `draft_for_row` gives, row by row.

`draft_rows` crafts the Top-K payloads of a block of rows (each positive
everywhere, as Laplace-smoothed corpus rows are) with the operations of
`thermospec.core.payload.craft_payload`, `thermospec.core.proposal` and
`thermospec.core.metrics`, applied along each row: a stable sort, the same
float32 roundings, per-row sums and running sums.  NumPy reduces along the last
axis of a C-contiguous block with the loop it runs on one row, so every value is
the per-row value, bit for bit (the tests compare every row of Tiny Shakespeare's
order-5 contexts).  What the host would decode from the bytes is what was crafted
(every field is already a float32 value), so F(ψ) is computed from the crafted
fields directly.  Rows with a zero, or payload fields out of range, are left to
the per-row path (`draft_rows` returns None), which also names the error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from thermospec.core.payload import EpsSpec, payload_size

__all__ = ["RowDrafts", "TopK", "draft_rows", "top_k"]


@dataclass(frozen=True, eq=False)
class RowDrafts:
    """The drafts of m rows over V tokens (one entry or row per target row).

    Attributes
    ----------
    draft_cdf, ratio, residual_cdf : ndarray of float64, shape (m, V)
        `thermospec.engine.chain.context_tables` of each row.
    K : int
        Ids sent per payload (every row has V positive entries).
    tau : float
        τ as float32, widened.
    eps : ndarray of float64, shape (m,)
        ε of each payload, as float32, widened.
    psi_bytes : int
        Bytes of each encoded payload.
    topk_mass, overlap_mass, ce_gap_nats : ndarray of float64, shape (m,)
        The metrics of `thermospec.tsu.drafts.ContextDraft`.
    """

    draft_cdf: NDArray[np.float64]
    ratio: NDArray[np.float64]
    residual_cdf: NDArray[np.float64]
    K: int
    tau: float
    eps: NDArray[np.float64]
    psi_bytes: int
    topk_mass: NDArray[np.float64]
    overlap_mass: NDArray[np.float64]
    ce_gap_nats: NDArray[np.float64]


def _float32(values: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(over="ignore"):
        rounded: NDArray[np.float64] = values.astype(np.float32).astype(np.float64)
    return rounded


@dataclass(frozen=True, eq=False)
class TopK:
    """ψ's fields of m rows as `craft_payload` crafts them: the ids (in order), the rows there, the codes."""

    k: int
    order: NDArray[np.int64]
    top: NDArray[np.float64]
    ell: NDArray[np.float64]
    """``log d_i - log d_top`` on the ids (the codes' exact values)."""
    delta: NDArray[np.float64]
    codes: NDArray[np.float64]
    tau: float
    eps: NDArray[np.float64]


def top_k(P: NDArray[np.float64], K: int, tau: float, eps: EpsSpec) -> TopK | None:
    """ψ's fields of every row of `P` (rows > 0), or None where the per-row path must name an error."""
    P = np.ascontiguousarray(P, dtype=np.float64)
    m, V = P.shape
    if m == 0 or V < 2 or K < 1 or not np.all(P > 0) or not np.all(np.isfinite(P)):
        return None
    k = min(K, V)
    order = np.argsort(-P, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(P, order, axis=1)
    logp = np.log(top)
    ell = logp - logp[:, :1]
    spread = -ell.min(axis=1)
    delta = np.where(spread > 0, _float32(spread / 255.0), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.where(delta[:, None] > 0, np.clip(np.rint(-ell / delta[:, None]), 0, 255), 0.0)
    codes = codes.astype(np.uint8).astype(np.float64)
    tau32 = float(_float32(np.array([tau]))[0])
    if eps == "auto":
        tail = np.maximum(0.0, 1.0 - top.sum(axis=1))
        eps32 = _float32(tail / (V - k)) if k < V else np.zeros(m)
        while np.any((V - k) * eps32 >= 1.0):  # float32 rounding up can only cross 1 by an ulp
            over = (V - k) * eps32 >= 1.0
            eps32[over] = np.nextafter(eps32[over].astype(np.float32), np.float32(0)).astype(np.float64)
    else:
        eps32 = np.full(m, float(_float32(np.array([eps]))[0]) + 0.0)
    fields_ok = (np.isfinite(tau32) and tau32 > 0 and np.all(np.isfinite(eps32)) and np.all(eps32 >= 0)
                 and np.all((V - k) * eps32 < 1) and np.all(np.isfinite(delta)))
    if not fields_ok:
        return None
    return TopK(k=k, order=order, top=top, ell=ell, delta=delta, codes=codes, tau=tau32, eps=eps32)


def draft_rows(P: NDArray[np.float64], K: int, tau: float, eps: EpsSpec) -> RowDrafts | None:
    """Craft ψ of every row of `P` (shape (m, V), rows > 0 summing to 1), or None to craft them one by one."""
    P = np.ascontiguousarray(P, dtype=np.float64)
    fields = top_k(P, K, tau, eps)
    if fields is None:
        return None
    m, V = P.shape
    k, order, top, delta, codes, tau32, eps32 = (fields.k, fields.order, fields.top, fields.delta, fields.codes,
                                                 fields.tau, fields.eps)
    # F(psi) (thermospec.core.proposal): explicit probabilities on the ids, eps elsewhere.
    logits = -codes * delta[:, None] / tau32
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    explicit = (1.0 - (V - k) * eps32)[:, None] * (w / w.sum(axis=1, keepdims=True))
    rows = np.arange(m)[:, None]
    q = np.repeat(eps32[:, None], V, axis=1)
    q[rows, order] = explicit
    is_id = np.zeros((m, V), dtype=np.bool_)
    is_id[rows, order] = True
    spread_explicit = np.zeros((m, V), dtype=np.float64)
    spread_explicit[rows, order] = explicit
    n_tail = np.cumsum(~is_id, axis=1, dtype=np.int64).astype(np.float64)
    draft_cdf = n_tail * eps32[:, None] + np.cumsum(spread_explicit, axis=1)
    # Tables (thermospec.core.acceptance) and metrics (thermospec.core.metrics).
    ratio = np.zeros_like(P)
    with np.errstate(over="ignore"):
        np.divide(P, q, out=ratio, where=q > 0)
    residual_cdf = np.cumsum(P - np.minimum(P, q), axis=1)
    flat = ~(residual_cdf[:, -1] > 0)
    residual_cdf[flat] = np.cumsum(P[flat], axis=1)
    overlap = np.minimum(P, q).sum(axis=1)
    missing = np.any(q <= 0, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.sum(P * (np.log(P) - np.log(q)), axis=1)
    gap = np.where(missing, np.inf, np.where(gap > 0, gap, 0.0))
    return RowDrafts(draft_cdf=draft_cdf, ratio=ratio, residual_cdf=residual_cdf, K=k, tau=tau32, eps=eps32,
                     psi_bytes=payload_size(k, V), topk_mass=top.sum(axis=1), overlap_mass=overlap, ce_gap_nats=gap)
