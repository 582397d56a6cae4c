"""The step arrays a chain stepper writes (``prev, proposed, emitted, accepted``): fresh, pooled, or not recorded.

A run writing telemetry takes each chunk's arrays from an `OutputPool` (the same pages
chunk after chunk); a run that keeps only counts gets `unrecorded` views, which cost
nothing and say so (every entry -1).
"""

from __future__ import annotations

import functools
import sys

import numpy as np

from thermospec.engine.step import StepArrays

__all__ = ["OutputPool", "new_outputs", "unrecorded"]


def new_outputs(n: int) -> StepArrays:
    """Fresh, uninitialised arrays for n steps."""
    return np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.empty(n, bool)


@functools.lru_cache(maxsize=4)
def unrecorded(n: int) -> StepArrays:
    """The step arrays of n steps that were not recorded: read-only, every entry -1 (False for ``accepted``)."""
    none = np.broadcast_to(np.int64(-1), (n,))
    return none, none, none, np.broadcast_to(np.False_, (n,))


class OutputPool:
    """The step arrays of chunk after chunk, a set handed out again once nothing else refers to it.

    A fresh set of arrays per chunk costs a page fault per 4 KB written (~7 ns a step at
    64K-step chunks); a consumer that drops each chunk before asking for the one after next
    (a run writing its telemetry) gets the same pages back.  A set still referred to, by
    a chunk kept in a list or by any view or buffer of its arrays, is never reused.
    """

    KEPT = 3

    def __init__(self) -> None:
        self._sets: list[StepArrays] = []

    @staticmethod
    def _references(arrays: StepArrays) -> int:
        return max(sys.getrefcount(a) for a in arrays)  # CPython's count: a view or buffer holds its base

    def take(self, n: int) -> StepArrays:
        """Arrays for an n-step chunk: a free set of that size, or a fresh one."""
        for arrays in self._sets:
            if arrays[0].shape[0] == n and self._references(arrays) <= _FREE:
                break
        else:
            arrays = new_outputs(n)
            self._sets.append(arrays)
            del self._sets[:-self.KEPT]
        prev, proposed, emitted, accepted = arrays
        return prev, proposed, emitted, accepted  # a tuple of its own: holding it holds the arrays


_pool = OutputPool()
_FREE = OutputPool._references(_pool.take(1)) - 1  # what `take` sees of a set only the pool holds
del _pool
