"""The per-context proposer: one ψ payload per distinct context, crafted once and cached."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from thermospec.core.losses import draft_overlap
from thermospec.core.metrics import ce_gap_nats, overlap_mass, topk_mass
from thermospec.core.payload import MAX_K, EpsSpec, Payload, PayloadError, craft_payload, encode_payload
from thermospec.core.proposal import proposal_distribution
from thermospec.tsu.row_drafts import top_k
from thermospec.tsu.sim import SimTSU

__all__ = ["ContextDraft", "CraftedRecord", "DraftRecord", "MeasuredProposer", "Proposer", "RecordSource"]


class DraftRecord(Protocol):
    """What a telemetry record and a summary say of a key's draft (a `ContextDraft`, or a `CraftedRecord`)."""

    @property
    def K(self) -> int: ...
    @property
    def tau(self) -> float: ...
    @property
    def eps_used(self) -> float: ...
    @property
    def psi_bytes(self) -> int: ...
    @property
    def topk_mass(self) -> float: ...
    @property
    def overlap_mass(self) -> float: ...
    @property
    def ce_gap_nats(self) -> float: ...


@dataclass(frozen=True)
class CraftedRecord:
    """A `DraftRecord` of a draft crafted in a block of keys at once (no payload bytes, no TSU object kept).

    Its fields are those the `ContextDraft` of the same key reports, bit for bit: K and the float32
    τ and ε its payload carries, its length, and the metrics of F(ψ) against the key's row.
    """

    K: int
    tau: float
    eps_used: float
    psi_bytes: int
    topk_mass: float
    overlap_mass: float
    ce_gap_nats: float


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
    draft_overlap : float
        ``sum min(p, d)`` of the row ``d`` ψ was crafted from: 1 when it is the target's own row
        (``--draft-order``, ``--draft-trace``: a draft model's).
    """

    context: int
    payload_bytes: bytes
    tsu: SimTSU
    topk_mass: float
    overlap_mass: float
    ce_gap_nats: float
    draft_overlap: float = 1.0

    @property
    def payload(self) -> Payload:
        """The decoded payload the TSU runs on."""
        return self.tsu.payload

    @property
    def psi_bytes(self) -> int:
        """Length of the encoded payload."""
        return len(self.payload_bytes)

    @property
    def K(self) -> int:
        """Ids the payload carries."""
        return self.payload.K

    @property
    def tau(self) -> float:
        """The payload's temperature (float32, as sent)."""
        return self.payload.tau

    @property
    def eps_used(self) -> float:
        """The payload's ε (float32, as sent)."""
        return self.payload.eps


def draft_for_row(p: NDArray[np.float64], context: int, K: int, tau: float, eps: EpsSpec,
                  d: NDArray[np.float64] | None = None) -> ContextDraft:
    """Craft, encode and load ψ for one target row, and measure it against the row.

    With `d` (a draft model's row for the same context) ψ is crafted from `d` and still measured
    against the target's `p`, which the drafts are verified against.
    """
    try:
        wire = encode_payload(craft_payload(p if d is None else d, K, tau, eps))
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
        draft_overlap=1.0 if d is None else draft_overlap(p, d),
    )


BLOCK_FLOATS = 1 << 21
"""Rows of a block `Proposer.all_drafts` crafts at once: at most this many float64 values (16 MiB)."""


def drafts_of_rows(P: NDArray[np.float64], contexts: range, K: int, tau: float, eps: EpsSpec
                   ) -> list[ContextDraft] | None:
    """`draft_for_row` of each row of `P` (shape (m, V), every entry > 0), ψ's fields crafted for all rows at once.

    The fields are `thermospec.tsu.row_drafts.top_k`'s, the per-row values of `craft_payload` bit for bit;
    each payload is then encoded, loaded into its `SimTSU` and measured as `draft_for_row` does, so the
    drafts are the same, byte for byte.  None where the rows must be crafted one by one (a zero, a
    field out of range), which also names the error.
    """
    fields = top_k(P, K, tau, eps)
    if fields is None or fields.k > MAX_K:
        return None
    V = P.shape[1]
    codes = fields.codes.astype(np.uint8)
    drafts: list[ContextDraft] = []
    for i, context in enumerate(contexts):
        payload = Payload(ids=fields.order[i], codes=codes[i], vocab_size=V, tau=fields.tau,
                          eps=float(fields.eps[i]), delta=float(fields.delta[i]))
        try:
            wire = encode_payload(payload)
        except PayloadError:
            return None
        tsu = SimTSU(wire)  # q comes from the bytes, exactly as a chip would see them
        p = P[i]
        drafts.append(ContextDraft(context=context, payload_bytes=wire, tsu=tsu,
                                   topk_mass=topk_mass(p, tsu.payload.ids), overlap_mass=overlap_mass(p, tsu.q),
                                   ce_gap_nats=ce_gap_nats(p, tsu.q)))
    return drafts


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

    def __init__(self, row: Callable[[int], NDArray[np.float64]], K: int, tau: float, eps: EpsSpec,
                 draft_row: Callable[[int], NDArray[np.float64]] | None = None,
                 K_of: Callable[[int], int] | None = None, max_cached: int | None = None) -> None:
        self.row = row
        self.K = K
        self.tau = tau
        self.eps = eps
        self.draft_row = draft_row
        self.K_of = K_of
        self._drafts = lru_cache(maxsize=max_cached)(self.craft)
        self._crafted: dict[int, ContextDraft] = {}  # crafted by `all_drafts`, on their way into the cache

    @property
    def psi_spec(self) -> tuple[int, float, EpsSpec] | None:
        """``(K, tau, eps)`` when every context's ψ is crafted from the target's own row with them (then
        engines may craft many contexts at once from the rows); None with a draft model or K per context."""
        return (self.K, self.tau, self.eps) if self.draft_row is None and self.K_of is None else None

    def craft(self, context: int) -> ContextDraft:
        """Craft the draft of one context from its row, or its draft model's row (no cache)."""
        ready = self._crafted.pop(context, None)
        if ready is not None:
            return ready
        K = self.K if self.K_of is None else self.K_of(context)
        d = None if self.draft_row is None else self.draft_row(context)
        return draft_for_row(self.row(context), context, K, self.tau, self.eps, d)

    def draft(self, context: int) -> ContextDraft:
        """The (cached) draft of one context."""
        return self._drafts(context)

    def cached(self) -> int:
        """How many contexts' drafts the cache holds."""
        return int(self._drafts.cache_info().currsize)

    def all_drafts(self, V: int) -> list[ContextDraft]:
        """Drafts of contexts 0 .. V-1 (crafting those not yet cached).

        With one ψ recipe for every context (`psi_spec`) and none cached yet, blocks of rows are
        crafted at once (`drafts_of_rows`); a block that cannot be is crafted one context at a time,
        which names the error.  The drafts are the same either way, and each row is read once.
        """
        spec = self.psi_spec
        if spec is not None and self.cached() == 0:
            rows = max(1, min(V, BLOCK_FLOATS // V))
            for start in range(0, V, rows):
                block = range(start, min(V, start + rows))
                P = np.stack([self.row(x) for x in block])
                crafted = drafts_of_rows(P, block, *spec) or [draft_for_row(P[i], x, *spec)
                                                              for i, x in enumerate(block)]
                self._crafted.update(zip(block, crafted, strict=True))
                for x in block:
                    self.draft(x)  # each moves into the cache
        return [self.draft(x) for x in range(V)]


class MeasuredProposer(Proposer):
    """Another proposer's ψ, crafted from a draft model's rows, measured against the target's rows.

    For proposers that craft their own way (a trace's positions: `drafted` crafts ψ of
    position t from the draft trace's row t); each draft's metrics are recomputed
    against the target's row ``p`` (O(V) once per context, kept in a bounded cache).
    """

    def __init__(self, drafted: Proposer, row: Callable[[int], NDArray[np.float64]], max_cached: int) -> None:
        super().__init__(row, drafted.K, drafted.tau, drafted.eps, draft_row=drafted.row, max_cached=max_cached)
        self.drafted = drafted

    def craft(self, context: int) -> ContextDraft:
        """`drafted`'s draft of `context`, its metrics against the target's row."""
        made = self.drafted.craft(context)
        p, q = self.row(context), proposal_distribution(made.payload)
        return ContextDraft(context=context, payload_bytes=made.payload_bytes, tsu=made.tsu,
                            topk_mass=topk_mass(p, made.payload.ids), overlap_mass=overlap_mass(p, q),
                            ce_gap_nats=ce_gap_nats(p, q), draft_overlap=draft_overlap(p, self.drafted.row(context)))


DraftSource = Callable[[int], ContextDraft]
RecordSource = Callable[[int], DraftRecord]
"""What records and summaries read of each key's draft: a `DraftSource`, or crafted records."""
