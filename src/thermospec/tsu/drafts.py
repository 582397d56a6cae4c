"""The per-context proposer: one ψ payload per distinct context, crafted once and cached."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.core.metrics import ce_gap_nats, overlap_mass, topk_mass
from thermospec.core.payload import EpsSpec, Payload, PayloadError, craft_payload, encode_payload
from thermospec.tsu.sim import SimTSU

__all__ = ["ContextDraft", "Proposer"]


@dataclass(frozen=True, eq=False)
class ContextDraft:
    """Everything the host prepared for one context.

    Attributes
    ----------
    context : int
        The previous token x.
    payload_bytes : bytes
        The encoded ψ sent to the TSU.
    tsu : SimTSU
        The TSU programmed with those bytes (F is computed from the decoded bytes).
    topk_mass, overlap_mass, ce_gap_nats : float
        Metrics of F(ψ) against ``p(. | x)``; `ce_gap_nats` is ``inf`` when q misses p's support.
    """

    context: int
    payload_bytes: bytes
    tsu: SimTSU
    topk_mass: float
    overlap_mass: float
    ce_gap_nats: float

    @property
    def payload(self) -> Payload:
        """The decoded payload the TSU runs on."""
        return self.tsu.payload

    @property
    def psi_bytes(self) -> int:
        """Length of the encoded payload."""
        return len(self.payload_bytes)


def draft_for_row(p: NDArray[np.float64], context: int, K: int, tau: float, eps: EpsSpec) -> ContextDraft:
    """Craft, encode and load ψ for one target row, and measure it against the row."""
    try:
        wire = encode_payload(craft_payload(p, K, tau, eps))
    except PayloadError as exc:
        raise PayloadError(f"ψ of context {context}: {exc}") from None
    tsu = SimTSU(wire)  # q comes from the bytes, exactly as a chip would see them
    return ContextDraft(
        context=context,
        payload_bytes=wire,
        tsu=tsu,
        topk_mass=topk_mass(p, tsu.payload.ids),
        overlap_mass=overlap_mass(p, tsu.q),
        ce_gap_nats=ce_gap_nats(p, tsu.q),
    )


class Proposer:
    """Crafts ψ for each context of a bigram table, once per distinct context.

    Parameters
    ----------
    row : callable
        ``row(x)`` is the target ``p(. | x)`` (for example `BigramTarget.row`).
    K, tau, eps
        ψ hyperparameters, as in `thermospec.core.payload.craft_payload`.
    """

    samples_payload = True
    """Whether each draft's TSU draws exactly F(ψ) of its payload, so that tables built from the payload
    reproduce its draws (the table-driven engine relies on it); False for fault-injected and THRML TSUs."""
    backend: dict[str, Any] | None = None
    """The TSU backend, as the summary records it (``tsu_backend``); None for `SimTSU`."""

    def __init__(self, row: Callable[[int], NDArray[np.float64]], K: int, tau: float, eps: EpsSpec) -> None:
        self.row = row
        self.K = K
        self.tau = tau
        self.eps = eps
        self._drafts = lru_cache(maxsize=None)(self.craft)

    def craft(self, context: int) -> ContextDraft:
        """Craft the draft of one context from its row (no cache)."""
        return draft_for_row(self.row(context), context, self.K, self.tau, self.eps)

    def draft(self, context: int) -> ContextDraft:
        """The (cached) draft of one context."""
        return self._drafts(context)

    def cached(self) -> int:
        """How many contexts' drafts the cache holds."""
        return int(self._drafts.cache_info().currsize)

    def all_drafts(self, V: int) -> list[ContextDraft]:
        """Drafts of contexts 0 .. V-1 (crafting those not yet cached)."""
        return [self.draft(x) for x in range(V)]


DraftSource = Callable[[int], ContextDraft]
