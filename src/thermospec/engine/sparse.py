"""Drafts and compact tables of sparse rows: ψ crafted from a row's support, in O(s log s).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from thermospec.core.payload import EpsSpec, PayloadError, craft_payload_from_support, encode_payload
from thermospec.engine.compact import CompactTables, compact_tables
from thermospec.targets.bigram import SupportSource
from thermospec.tsu.bounded import CompactTSU
from thermospec.tsu.drafts import ContextDraft, Proposer

__all__ = ["SparseProposer", "draft_for_support"]


def draft_for_support(
    support: NDArray[np.int64], probs: NDArray[np.float64], V: int, context: int, K: int, tau: float, eps: EpsSpec
) -> ContextDraft:
    """`thermospec.proposer.draft_for_row` for a row given by its support, in O(s log s).

    The payload bytes are those `draft_for_row` crafts from the dense row; `topk_mass`
    and `ce_gap_nats` are the same numbers; `overlap_mass` is summed over the support
    only (the dense sum adds zeros in another order: equal up to rounding).
    """
    return _draft_and_tables(support, probs, V, context, K, tau, eps)[0]


def _draft_and_tables(
    support: NDArray[np.int64], probs: NDArray[np.float64], V: int, context: int, K: int, tau: float, eps: EpsSpec
) -> tuple[ContextDraft, CompactTables]:
    """A context's draft and its compact tables, sharing F(ψ) on the support."""

    try:
        wire = encode_payload(craft_payload_from_support(support, probs, V, K, tau, eps))
    except PayloadError as exc:
        raise PayloadError(f"ψ of context {context}: {exc}") from None
    tsu = CompactTSU(wire)
    payload = tsu.payload
    tables = compact_tables(support, probs, payload)
    q_support = tables.q
    topk = float(probs[np.searchsorted(support, np.asarray(payload.ids, dtype=np.int64))].sum())
    if np.any(q_support <= 0):
        gap = float("inf")
    else:
        gap = float(np.sum(probs * (np.log(probs) - np.log(q_support))))
    draft = ContextDraft(
        context=context, payload_bytes=wire, tsu=tsu, topk_mass=topk,
        overlap_mass=float(np.minimum(probs, q_support).sum()), ce_gap_nats=gap,
    )
    return draft, tables


class SparseProposer(Proposer):
    """A `Proposer` for targets given by their rows' supports: O(s log s) per context, bounded memory.

    Drafts hold the payload and metrics (`CompactTSU`, no V-sized array) in a
    least-recently-used cache of `capacity` contexts; an evicted context is
    crafted again to the same bytes when it comes back.
    """

    def __init__(
        self, row: Callable[[int], NDArray[np.float64]], support: SupportSource, V: int, K: int, tau: float,
        eps: EpsSpec, capacity: int = 1 << 17,
    ) -> None:
        super().__init__(row, K, tau, eps)
        self.support = support
        self.V = V
        self.capacity = max(16, capacity)
        self._drafts = lru_cache(maxsize=self.capacity)(self.craft)
        self._recent: tuple[int, NDArray[np.int64], NDArray[np.float64]] | None = None
        self._recent_tables: tuple[int, CompactTables] | None = None

    def support_of(self, context: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """``support(context)``, remembering the last one: a new context's draft and tables read it once."""
        if self._recent is None or self._recent[0] != context:
            tokens, probs = self.support(context)
            self._recent = (context, tokens, probs)
        return self._recent[1], self._recent[2]

    def tables(self, context: int) -> CompactTables:
        """The compact tables of one context (those built with its draft when it was just crafted)."""
        draft = self.draft(context)  # crafting a new draft leaves its tables here
        recent = self._recent_tables
        if recent is not None and recent[0] == context:
            self._recent_tables = None  # handed over: the caller keeps them
            return recent[1]
        tokens, probs = self.support_of(context)
        return compact_tables(tokens, probs, draft.tsu.payload)

    def craft(self, context: int) -> ContextDraft:
        """Craft one context's draft from its support (its compact tables are kept for `tables`)."""
        tokens, probs = self.support_of(context)
        found, tables = _draft_and_tables(tokens, probs, self.V, context, self.K, self.tau, self.eps)
        self._recent_tables = (context, tables)
        return found
