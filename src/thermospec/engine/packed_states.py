"""An order-N move table's states packed one record a state, for the counting kernel (``--telemetry none``).

A counted order-N step reads, of its state: the draft's total, last token and guide, the
draft cdf around the draw, the ratio at the draft, the move after the emitted token and
that pair's count.  In a `TableCache` and the move and count tables these lie in six
arrays, so with tens of thousands of states (their rows far apart) a step waits on six
cache misses.  `PackedStates` keeps each state as one 64-byte aligned record (the
compiled ``state_pack``: head line, then per token its cdf, ratio, move and count, then
the residual's total, last, guide and cdf): an accepted draft, most steps, reads the head
line and a few entries, all prefetched at once.  The kernel (``state_counts``) compares
the same doubles in the same order as ``moving_counts`` does on the cache (same tokens),
and counts each step into its record (uint32, added to the run's int64 pairs by
`PackedStates.flush` before any could overflow).

`craft_states` fills it as it fills a `TableCache` (`load_rows`, consecutive blocks of
states); its `tables`, `totals`, `lasts` and `guides` stay unfilled: no other stepper reads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.kernels import DEFAULT_TABLE_BYTES, TableCache, compiled_module
from thermospec.targets.context_moves import ContextMoves

__all__ = ["MAX_PACKED_V", "PackedStates", "packed_states", "record_bytes"]

MAX_PACKED_V = 255
"""Largest vocabulary packed (a guide entry is one byte: a token index up to V)."""

_FLUSH_AT = (1 << 32) - 1
"""The records' counts are uint32: they are flushed before the steps counted since the last flush pass this."""


def record_bytes(V: int, G: int) -> int:
    """Bytes of one state's record (the compiled ``record_layout``): head (with a bit per token counted), V entries
    of 24 bytes, residual."""
    mask = (12 + G + 1 + 7) // 8 * 8  # the bits of the tokens counted since the last flush
    head = (mask + 8 * ((V + 63) // 64) + 63) // 64 * 64
    residual = (head + 24 * V + 7) // 8 * 8
    residual_cdf = (residual + 12 + G + 1 + 7) // 8 * 8
    return (residual_cdf + 8 * V + 63) // 64 * 64


def _no_source(state: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    raise ValueError(f"state {state}: packed states are loaded all at once (craft_states), not one by one")


class PackedStates(TableCache):
    """Every state of a move table as one record (see the module), filled by `load_rows`; build it with
    `packed_states`.

    Attributes
    ----------
    records : ndarray of uint8, shape (states * size,)
        The records, 64-byte aligned.
    size : int
        Bytes of a record (`record_bytes`).
    unflushed : int
        Steps counted into the records since the last `flush` or `take_codes`.
    flushed : bool
        Whether counts were ever flushed into a pairs table.
    """

    def __init__(self, V: int, moves: ContextMoves, module: Any, max_bytes: int = DEFAULT_TABLE_BYTES) -> None:
        super().__init__(V, _no_source, max_bytes, moves.states)  # its tables are never touched (zero pages)
        self.moves, self.module = moves, module
        self.size = record_bytes(V, self.G)
        raw = np.empty(moves.states * self.size + 64, dtype=np.uint8)
        skip = -raw.ctypes.data % 64
        self.records: NDArray[np.uint8] = raw[skip:skip + moves.states * self.size]
        self.unflushed = 0
        self.flushed = False  # whether counts were ever flushed into a pairs table

    @property
    def nbytes(self) -> int:
        """Bytes of the records (the cache's own arrays are left untouched)."""
        return int(self.records.nbytes)

    def load_rows(self, keys: NDArray[np.int64], draft_cdf: NDArray[np.float64], ratio: NDArray[np.float64],
                  residual_cdf: NDArray[np.float64]) -> None:
        """Pack consecutive states' tables (rows of each array, one per key) with their moves.

        Raises
        ------
        ValueError
            Keys that are not consecutive.
        """
        count = int(keys.shape[0])
        if not count:
            return
        first = int(keys[0])
        if not np.array_equal(keys, np.arange(first, first + count)):
            raise ValueError("PackedStates.load_rows: needs consecutive states")
        rows = [np.ascontiguousarray(a, dtype=np.float64) for a in (draft_cdf, ratio, residual_cdf)]
        self.module.state_pack(self.records, *rows, self.moves.next, self.V, self.G, first, count)
        self.filled += int(np.count_nonzero(self.slot_of[keys] < 0))
        self.slot_of[keys] = keys
        self.context_of[keys] = keys
        self.builds += count

    def counts(self, rng: NDArray[np.uint64], accepted: NDArray[np.int64], pairs: NDArray[np.int64], n: int,
               x: int) -> int:
        """Run `n` steps from state `x` (every state packed), counting into the records (flushed into `pairs`
        first when they could overflow) and `accepted`; the state after them.  `rng`: a PCG64 state, advanced."""
        if not self.resident:
            raise ValueError("PackedStates.counts: every state must be packed first")
        if self.unflushed + n > _FLUSH_AT:
            self.flush(pairs)
        _, x = self.module.state_counts(self.records, rng, accepted, self.V, self.G, self.contexts, n, x)
        self.unflushed += n
        return int(x)

    def take_codes(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The codes ``state * V + emitted`` of the pairs counted since the last flush, increasing, and their
        counts (the non-zero entries `flush` would add); the records' counts are zeroed."""
        room = min(self.unflushed, self.contexts * self.V)
        codes, counts = np.empty(room, dtype=np.int64), np.empty(room, dtype=np.int64)
        m = self.module.state_codes(self.records, codes, counts, self.V, self.G, self.contexts)
        self.unflushed = 0
        return codes[:m], counts[:m]

    def flush(self, pairs: NDArray[np.int64]) -> None:
        """Add the records' counts to `pairs` (int64, ``[state * V + emitted]``) and zero them."""
        if self.unflushed:
            self.module.state_flush(self.records, pairs, self.V, self.G, self.contexts)
            self.unflushed, self.flushed = 0, True


def packed_states(V: int, moves: ContextMoves, max_bytes: int = DEFAULT_TABLE_BYTES) -> PackedStates | None:
    """The states of `moves` as records to craft into, or None: no compiled ``state_counts``, V above
    `MAX_PACKED_V`, or a cache of `max_bytes` that would not hold every state, or records beyond it."""
    module = compiled_module()
    if module is None or not hasattr(module, "state_counts") or not module.PCG64 or V > MAX_PACKED_V:
        return None
    cache = TableCache(V, _no_source, max_bytes, moves.states)  # the G and the bound a stepper's cache would have
    if not cache.identity or moves.states * record_bytes(V, cache.G) > max_bytes:
        return None
    return PackedStates(V, moves, module, max_bytes)
