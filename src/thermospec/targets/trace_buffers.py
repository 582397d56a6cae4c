"""Each thread's reusable buffers for the compiled passes over trace rows (`targets.trace_rows`).

A fresh array costs its page faults on every first write (on a virtual machine, about a microsecond
a 4 KiB page), so a thread keeps its per-code tables and the codes of the row it read last (a wide
trace row keeps none of its own).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["CODES", "SCRATCH_ITEMS", "Buffers", "buffers"]

CODES = 1 << 16
"""Distinct float16 bit patterns."""
SCRATCH_ITEMS = 1 << 18
"""Largest V-sized buffer a thread keeps between rows (2 MiB of float64; V = 262,144)."""


class Buffers:
    """One thread's buffers: per-code tables, kept, and V-sized ones, kept up to `SCRATCH_ITEMS` items so that
    a thread holds a few MiB however wide the rows.

    Attributes
    ----------
    held, held_for : ndarray of uint16, object
        The codes of the row ``held_for`` (a row that keeps none: valid until this thread reads another's).
    """

    def __init__(self) -> None:
        self.present = np.empty(CODES, dtype=np.uint16)
        self.d = np.empty(CODES, dtype=np.float64)
        self.logp = np.empty(CODES, dtype=np.float64)
        self.table = np.empty(CODES, dtype=np.float64)
        self.seen = np.zeros(CODES, dtype=np.uint8)  # the compiled passes leave the marks 0
        self.mark = np.zeros(CODES, dtype=np.uint8)
        self.jmap = np.empty(CODES, dtype=np.int32)
        self.count = np.empty(2 * CODES, dtype=np.int64)
        self.pairs = np.empty(2 * CODES, dtype=np.float64)
        self._wide: dict[str, NDArray[Any]] = {}
        self.held_for: object | None = None
        self.held: NDArray[np.uint16] = np.zeros(0, dtype=np.uint16)
        self._crafting_for: tuple[int, int, bool] | None = None
        self._crafting: tuple[NDArray[Any], ...] = ()

    def crafting(self, k: int, V: int, full: bool) -> tuple[NDArray[Any], ...]:
        """The buffers ``_trace_rows.craft_all`` writes for ψ of k ids on a row of V tokens (``full``: every p > 0):
        chosen, order, ids, top, d, q, log_q, on_ids, terms (the set last asked for is kept)."""
        if self._crafting_for != (k, V, full):
            self._crafting = (
                self.wide("chosen", V, np.uint32), self.wide("order", V, np.uint32), self.wide("ids", k, np.int64),
                self.wide("top", k, np.float64), self.wide("d", k, np.float64), self.wide("q", k + 1, np.float64),
                self.wide("log_q", k + 1, np.float64), self.wide("on_ids", 2 * k, np.float64),
                self.wide("terms", 1 if full else V, np.float64),
            )
            self._crafting_for = (k, V, full)
        return self._crafting

    def wide(self, name: str, size: int, dtype: type[np.generic]) -> NDArray[Any]:
        """A buffer of `size` items (kept if at most `SCRATCH_ITEMS`)."""
        if size > SCRATCH_ITEMS:
            return np.empty(size, dtype=dtype)
        held = self._wide.get(name)
        if held is None or held.shape[0] < size:
            held = self._wide[name] = np.empty(size, dtype=dtype)
        return held[:size]


_LOCAL = threading.local()


def buffers() -> Buffers:
    """This thread's buffers."""
    held: Buffers | None = getattr(_LOCAL, "buffers", None)
    if held is None:
        held = _LOCAL.buffers = Buffers()
    return held
