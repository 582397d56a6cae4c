"""The loss split of order-N contexts whose ψ were crafted at once (`engine.block_kernel.craft_all`), no draft kept.

`runs.losses` splits a key's one-draft loss from its kept draft (``_kept``: the payload's ids,
codes and fields, and the draft's ``overlap_mass``).  A block run that crafted every state at
once keeps no draft; `crafted_losses` recomputes ψ's fields from the rows (`row_drafts.top_k`,
pinned to `craft_payload`: the payload's ids in their order, its codes, δ, τ and ε) and runs
``_kept``'s very operations on them, with the crafted ``overlap_mass``, so the summary's three
losses are the ones the per-key path gives, bit for bit (tested).  ψ is crafted from the
target's rows (no draft model: ``loss_draft_model`` is 0), one K for every key.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from thermospec.core.payload import EpsSpec
from thermospec.engine.state_drafts import StateMetrics
from thermospec.targets.context_moves import ContextMoves
from thermospec.tsu.row_drafts import top_k

__all__ = ["CRAFTED_LOSS_ROWS", "crafted_losses"]

CRAFTED_LOSS_ROWS = 1 << 12
"""Rows per block (4,096: the temporaries stay small)."""


def crafted_losses(moves: ContextMoves, metrics: StateMetrics, psi: tuple[int, float, EpsSpec],
                   contexts: NDArray[np.int64]) -> NDArray[np.float64] | None:
    """``(loss_draft_model, loss_top_k, loss_quantisation)`` of each context id, shape (contexts, 3).

    None when a context has no state or a row's fields cannot be crafted at once (then key by key).
    """
    states = moves.states_of(contexts)
    if not bool(np.all(states >= 0)):
        return None
    K, tau, eps = psi
    parts: list[NDArray[np.float64]] = []
    for first in range(0, states.shape[0], CRAFTED_LOSS_ROWS):
        block = states[first:first + CRAFTED_LOSS_ROWS]
        P = moves.rows(block)
        fields = top_k(P, K, tau, eps)
        if fields is None:
            return None
        m, V = P.shape
        p_ids = fields.top  # the row at ψ's ids, in the payload's order
        explicit_mass = (1.0 - (V - fields.k) * fields.eps)[:, None]  # 1 - payload.tail_mass
        logits = -fields.codes * fields.delta[:, None] / fields.tau
        quantised = np.exp(logits - logits.max(axis=1, keepdims=True))
        quantised *= explicit_mass / quantised.sum(axis=1, keepdims=True)
        ell = fields.ell / fields.tau
        exact = np.exp(ell - ell.max(axis=1, keepdims=True))
        exact *= explicit_mass / exact.sum(axis=1, keepdims=True)
        quantisation = np.minimum(p_ids, exact).sum(axis=1) - np.minimum(p_ids, quantised).sum(axis=1)
        out = np.zeros((m, 3), dtype=np.float64)  # loss_draft_model: 1 - draft_overlap, 1.0 without a draft model
        overlap = metrics.overlap_mass[block]
        out[:, 1] = (1.0 - overlap) - 0.0 - quantisation
        out[:, 2] = quantisation
        parts.append(out)
    return np.concatenate(parts) if parts else np.zeros((0, 3))
