"""Drafts without V-sized arrays, for token targets of large V.

`CompactTSU` keeps a payload and recomputes F(ψ) when asked; `BoundedProposer`
keeps its drafts in a memory-bounded cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from thermospec.core.payload import EpsSpec, Payload, decode_payload
from thermospec.core.proposal import draft_cdf, proposal_distribution
from thermospec.tsu.drafts import ContextDraft, Proposer, draft_for_row
from thermospec.tsu.sim import SimTSU

__all__ = ["BoundedProposer", "CompactTSU"]


DRAFT_CACHE_BYTES = 128 * 1024 * 1024


@lru_cache(maxsize=32)
def payload_arrays(payload: Payload) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """F(ψ) and its CDF of a payload, read-only; the last few payloads' arrays are kept."""
    q = proposal_distribution(payload)
    cdf = draft_cdf(payload)
    q.flags.writeable = False
    cdf.flags.writeable = False
    return q, cdf


class CompactTSU(SimTSU):
    """A `SimTSU` that recomputes F(ψ) and its CDF from the decoded payload on access.

    At V = 16,384 a stored q and CDF cost 256 KB per context; this keeps only the
    payload (a few hundred bytes), so the drafts of every context fit in memory.
    The values are exactly `SimTSU`'s (same function of the same payload).
    """

    def __init__(self, payload: Payload | bytes) -> None:  # deliberately no super(): no stored arrays
        if isinstance(payload, bytes | bytearray | memoryview):
            payload = decode_payload(bytes(payload))
        self.payload = payload

    def _arrays(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return payload_arrays(self.payload)

    @property
    def q(self) -> NDArray[np.float64]:
        """F(ψ), recomputed (the last few contexts' arrays are kept)."""
        return self._arrays()[0]

    @q.setter
    def q(self, value: NDArray[np.float64]) -> None:
        raise AttributeError("CompactTSU.q is computed from the payload")

    @property
    def cdf(self) -> NDArray[np.float64]:
        """Cumulative F(ψ), recomputed."""
        return self._arrays()[1]

    @cdf.setter
    def cdf(self, value: NDArray[np.float64]) -> None:
        raise AttributeError("CompactTSU.cdf is computed from the payload")


class BoundedProposer(Proposer):
    """A `Proposer` for large vocabularies: compact drafts in a least-recently-used cache.

    Each cached draft holds its payload and metrics but no V-sized array
    (`CompactTSU`), so about ``max_bytes / (1 KB + 20 K)`` contexts stay cached;
    an evicted context is crafted again to the same bytes when it comes back.
    """

    def __init__(
        self,
        row: Callable[[int], NDArray[np.float64]],
        K: int,
        tau: float,
        eps: EpsSpec,
        V: int,
        max_bytes: int = DRAFT_CACHE_BYTES,
    ) -> None:
        super().__init__(row, K, tau, eps)
        self.capacity = max(16, max_bytes // (1024 + 20 * min(K, V)))
        self._drafts = lru_cache(maxsize=self.capacity)(self.craft)

    def craft(self, context: int) -> ContextDraft:
        """Craft the draft of one context, keeping its payload and metrics only (`CompactTSU`)."""
        full = draft_for_row(self.row(context), context, self.K, self.tau, self.eps)
        return dataclasses.replace(full, tsu=CompactTSU(full.tsu.payload))
