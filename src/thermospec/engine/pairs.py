"""Counts of (context, emitted token) pairs in memory proportional to the distinct pairs seen.

A trace run's positions or an order-N run's context ids are too many for a
``contexts x V`` table (1,000 positions of V = 131,072 would take 1 GB), but a
run of n steps sees at most n distinct pairs: they are kept as sorted codes
``context * V + token`` with their counts, merged chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

__all__ = ["PairCounts"]

MERGE_AT = 1 << 20
"""Pending codes merged once they exceed this (or twice the merged ones)."""
DENSE_SPAN = 4
"""Codes are counted in a dense array (`np.bincount`, no sort) when their span is at most this many times theirs."""


class PairCounts:
    """Counts of (context, token) pairs over a vocabulary of `vocab_size` tokens.

    Parameters
    ----------
    vocab_size : int
        V: tokens are in ``[0, V)``; contexts are any non-negative ints.
    """

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._codes = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending: list[NDArray[np.int64]] = []  # each step's code, merged in bulk
        self._pending_size = 0

    @classmethod
    def of_pairs(cls, vocab_size: int, context: NDArray[np.int64], token: NDArray[np.int64],
                 count: NDArray[np.int64]) -> PairCounts:
        """The counts of distinct pairs already counted, sorted by context then token (as `pairs` gives them)."""
        counts = cls(vocab_size)
        counts._codes = (context * vocab_size + token).astype(np.int64, copy=False)
        counts._counts = count.astype(np.int64, copy=False)
        return counts

    def add(self, context: NDArray[np.int64], token: NDArray[np.int64]) -> None:
        """Count one pair per step: ``(context[i], token[i])``."""
        if not context.shape[0]:
            return
        self._pending.append((context * self.vocab_size + token).astype(np.int64, copy=False))
        self._pending_size += context.shape[0]
        if self._pending_size > max(MERGE_AT, 2 * self._codes.shape[0]):
            self._merge()

    def _merge(self) -> None:
        """Fold the pending codes into the sorted distinct codes and their counts."""
        if not self._pending:
            return
        pending = np.concatenate(self._pending)
        self._pending, self._pending_size = [], 0
        span = int(max(int(pending.max()), int(self._codes[-1]) if self._codes.shape[0] else 0)) + 1
        if span <= DENSE_SPAN * (pending.shape[0] + self._codes.shape[0]):  # dense enough: count without a sort
            dense = np.bincount(pending, minlength=span)
            dense[self._codes] += self._counts
            self._codes = np.flatnonzero(dense)
            self._counts = dense[self._codes]
            return
        codes, counts = np.unique(pending, return_counts=True)
        codes = np.concatenate([self._codes, codes])
        counts = np.concatenate([self._counts, counts.astype(np.int64)])
        self._codes, inverse = np.unique(codes, return_inverse=True)
        self._counts = np.bincount(inverse, weights=counts, minlength=self._codes.shape[0]).astype(np.int64)

    def pairs(self) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """(context, token, count) of every pair seen, sorted by context then token."""
        self._merge()
        return self._codes // self.vocab_size, self._codes % self.vocab_size, self._counts

    def contexts(self) -> Iterator[tuple[int, NDArray[np.float64]]]:
        """Each context seen, in increasing order, with its dense vector of emitted counts (float64, V)."""
        context, token, count = self.pairs()
        if not context.shape[0]:
            return
        starts = np.flatnonzero(np.diff(context, prepend=-1))
        ends = np.append(starts[1:], context.shape[0])
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            dense = np.zeros(self.vocab_size, dtype=np.float64)
            dense[token[a:b]] = count[a:b]
            yield int(context[a]), dense
