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
    q : ndarray of float64, shape (m, V)
        F(ψ) of each row (``SimTSU(wire).q``), what the draft CDF sums.
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
    q: NDArray[np.float64]


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
    at: NDArray[np.int64]
    """Each id's position in the rows' flat (C-order) layout, row by row: ``row * V + id``."""


def top_k(P: NDArray[np.float64], K: int, tau: float, eps: EpsSpec) -> TopK | None:
    """ψ's fields of every row of `P` (rows > 0), or None where the per-row path must name an error."""
    P = np.ascontiguousarray(P, dtype=np.float64)
    m, V = P.shape
    if m == 0 or V < 2 or K < 1 or not np.all(P > 0) or not np.all(np.isfinite(P)):
        return None
    k = min(K, V)
    order = np.argsort(-P, axis=1, kind="stable")[:, :k]
    at = (np.arange(m)[:, None] * V + order).reshape(-1)  # each id's position in P's flat layout
    top = P.reshape(-1)[at].reshape(m, k)
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
    return TopK(k=k, order=order, top=top, ell=ell, delta=delta, codes=codes, tau=tau32, eps=eps32, at=at)


def draft_rows(P: NDArray[np.float64], K: int, tau: float, eps: EpsSpec) -> RowDrafts | None:
    """Craft ψ of every row of `P` (shape (m, V), rows > 0 summing to 1), or None to craft them one by one."""
    P = np.ascontiguousarray(P, dtype=np.float64)
    fields = top_k(P, K, tau, eps)
    if fields is None:
        return None
    V = P.shape[1]
    k, top, delta, codes, tau32, eps32, at = (fields.k, fields.top, fields.delta, fields.codes, fields.tau,
                                              fields.eps, fields.at)
    # F(psi) (thermospec.core.proposal): explicit probabilities on the ids, eps elsewhere.
    logits = -codes * delta[:, None] / tau32
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    explicit = (1.0 - (V - k) * eps32)[:, None] * (w / w.sum(axis=1, keepdims=True))
    q = np.repeat(eps32[:, None], V, axis=1)
    q.reshape(-1)[at] = explicit.reshape(-1)
    draft_cdf = _draft_cdf(q, at, eps32, k)
    # Tables (thermospec.core.acceptance) and metrics (thermospec.core.metrics).
    with np.errstate(over="ignore"):
        if np.all(explicit > 0) and (k == V or np.all(eps32 > 0)):  # q > 0 everywhere
            ratio = np.divide(P, q)
        else:
            ratio = np.zeros_like(P)
            np.divide(P, q, out=ratio, where=q > 0)
    kept = np.minimum(P, q)
    residual_cdf = np.cumsum(P - kept, axis=1)
    flat = ~(residual_cdf[:, -1] > 0)
    residual_cdf[flat] = np.cumsum(P[flat], axis=1)
    overlap = kept.sum(axis=1)
    missing = np.any(explicit <= 0, axis=1) | ((k < V) & (eps32 <= 0))
    gap = _gap_sums(P, q, at, eps32)
    gap = np.where(missing, np.inf, np.where(gap > 0, gap, 0.0))
    return RowDrafts(draft_cdf=draft_cdf, ratio=ratio, residual_cdf=residual_cdf, K=k, tau=tau32, eps=eps32,
                     psi_bytes=payload_size(k, V), topk_mass=top.sum(axis=1), overlap_mass=overlap, ce_gap_nats=gap,
                     q=q)


def _draft_cdf(q: NDArray[np.float64], at: NDArray[np.int64], eps32: NDArray[np.float64], k: int
               ) -> NDArray[np.float64]:
    """`thermospec.core.proposal.draft_cdf` of each row of F(ψ) `q`, ``n_tail * eps + cumsum(explicit)``, with no
    running sum over V.

    Between two ids the running sum of the explicit probabilities (0 off the ids) does not
    change, so at token v it is the sum over the ids <= v (in token order, the same partial
    sums), and ``n_tail(v) = v + 1 - (ids <= v)``: both are runs of one value per gap between ids.
    """
    m, V = q.shape
    is_id = np.zeros(m * V, dtype=np.bool_)
    is_id[at] = True
    by_token = np.flatnonzero(is_id).reshape(m, k)  # each row's ids in token order (flat positions)
    sums = np.zeros((m, k + 1), dtype=np.float64)
    np.cumsum(q.reshape(-1)[by_token], axis=1, out=sums[:, 1:])
    by_token -= np.arange(0, m * V, V)[:, None]
    runs = np.diff(by_token, axis=1, prepend=0, append=V).reshape(-1)  # how many tokens have 0 .. k ids at or before
    ids_before = np.repeat(np.tile(np.arange(k + 1, dtype=np.float64), m), runs).reshape(m, V)
    n_tail = np.arange(1, V + 1, dtype=np.float64) - ids_before
    cdf: NDArray[np.float64] = n_tail * eps32[:, None] + np.repeat(sums.reshape(-1), runs).reshape(m, V)
    return cdf


def _gap_sums(P: NDArray[np.float64], q: NDArray[np.float64], at: NDArray[np.int64], eps32: NDArray[np.float64]
              ) -> NDArray[np.float64]:
    """``sum(P * (log P - log q))`` of each row (`thermospec.core.metrics.ce_gap_nats`), bit for bit.

    Off the ids q is the row's ε; where P is also the row's smallest value the term is one
    value a row, computed once (the same operations on the same values): only the other
    terms need their own logarithms.  The sum is NumPy's, over the row's V terms.
    """
    V = P.shape[1]
    low = P.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.repeat((low * (np.log(low) - np.log(eps32)))[:, None], V, axis=1)
        own = np.not_equal(P, low[:, None]).reshape(-1)
        own[at] = True
        where = np.flatnonzero(own)
        p, qv = P.reshape(-1)[where], q.reshape(-1)[where]
        terms.reshape(-1)[where] = p * (np.log(p) - np.log(qv))
        sums: NDArray[np.float64] = np.sum(terms, axis=1)
    return sums
