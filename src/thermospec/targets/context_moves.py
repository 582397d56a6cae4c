"""An order-N target's contexts as a finite automaton (`ContextMoves`), built by `OrderTarget.moves`.

The chain steps on its move table (one look-up a step); its states' target ids are
interned as a chain meets them, and their rows are built a block at a time.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["ContextMoves", "MovesTarget", "count_followers"]


class MovesTarget(Protocol):
    """What a move table reads of its target (`thermospec.targets.order.OrderTarget`)."""

    @property
    def V(self) -> int:
        """Tokens."""
        ...

    @property
    def followers(self) -> NDArray[Any]:
        """The token after each indexed corpus position, in index order."""
        ...

    def intern_contexts(self, length: list[int], lo: list[int], hi: list[int]) -> list[int]:
        """The target ids of contexts (length and index range), new ones interned in this order."""
        ...

    def token_rows(self, tokens: NDArray[np.int64]) -> NDArray[np.float64]:
        """The rows of one-token contexts."""
        ...


class ContextMoves:
    """An order-N target's contexts as a finite automaton: ``next[s * V + y]`` is the state after y in state s.

    The context after emitting y depends only on the context and y: if ``w + y`` is a
    seen suffix of ``h + y`` then w is a seen suffix of h no longer than h's effective
    one.  So every context of the corpus (each distinct suffix of 1 .. N - 1 tokens it
    holds followed by a token) is a state: states ``0 .. V-1`` are the one-token
    contexts (the token), then the longer ones by falling corpus frequency.  A state's
    target id (`context`) is interned on first use, so the ids keep the order in which a
    chain meets its contexts, as `OrderTarget.next_context` step by step would.
    Build it with `OrderTarget.moves`.

    Attributes
    ----------
    next : ndarray of int32, shape (states * V,)
        The move table.
    states : int
        Number of states.
    """

    def __init__(self, target: MovesTarget, table: NDArray[np.int32], length: NDArray[np.int64],
                 lo: NDArray[np.int64], hi: NDArray[np.int64],
                 followers: Future[NDArray[np.integer[Any]]] | None = None) -> None:
        self.target = target
        self.next = table
        self.states = int(length.shape[0])
        self.length, self.lo, self.hi = length, lo, hi
        self._length, self._lo, self._hi = length.tolist(), lo.tolist(), hi.tolist()
        self._ids = np.full(self.states, -1, dtype=np.int64)
        self._ids[:target.V] = np.arange(target.V)
        self._interned = target.V  # states interned so far (ids >= 0): `states_of` rebuilds its map when it grows
        self._inverse: tuple[int, NDArray[np.int64]] | None = None
        self._counts: NDArray[np.integer[Any]] | None = None
        self._aside = followers  # `count_followers` of these states, counted on another thread
        self._counting = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of the move table."""
        return int(self.next.nbytes)

    def context(self, state: int) -> int:
        """The target's id of a state's context (interned on first use)."""
        cid = int(self._ids[state])
        if cid < 0:
            cid = self._ids[state] = self.target.intern_contexts([self._length[state]], [self._lo[state]],
                                                                 [self._hi[state]])[0]
            self._interned += 1
        return cid

    def intern(self, states: NDArray[np.int64]) -> None:
        """Intern the contexts of distinct `states` not interned yet, in this order (`context` of each in turn)."""
        fresh = states[self._ids[states] < 0]
        if fresh.shape[0]:
            self._ids[fresh] = self.target.intern_contexts(self.length[fresh].tolist(), self.lo[fresh].tolist(),
                                                       self.hi[fresh].tolist())
            self._interned += int(fresh.shape[0])

    def rows(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """The target rows of `states` (shape (m, V)), bit for bit `OrderTarget.row` of their contexts.

        A longer context's row is Laplace on its followers' counts: ``(counts + 1) / (n + V)``,
        ``n + V`` being the exact float64 sum of the smoothed counts `OrderTarget.row` divides by.
        """
        target, V = self.target, self.target.V
        states = np.asarray(states, dtype=np.int64)
        out = np.empty((states.shape[0], V), dtype=np.float64)
        short = self.length[states] == 1
        longer = states[~short]
        if longer.shape[0] == states.shape[0]:  # no one-token state (every block but the first): in place
            np.add(self._follower_counts()[longer - V], 1.0, out=out)
            out /= (self.hi[longer] - self.lo[longer] + V).astype(np.float64)[:, None]
            return out
        out[short] = target.token_rows(states[short])
        smoothed = self._follower_counts()[longer - V] + 1.0
        out[~short] = smoothed / (self.hi[longer] - self.lo[longer] + V).astype(np.float64)[:, None]
        return out

    def _follower_counts(self) -> NDArray[np.integer[Any]]:
        """How often each token follows each longer state's context in the corpus, shape (states - V, V), built once
        (under a lock: `craft_states` asks for rows from several threads), or counted aside as the table was built."""
        with self._counting:
            if self._counts is None:
                self._counts = (self._aside.result() if self._aside is not None
                                else count_followers(self.target.V, self.target.followers, self.length, self.lo,
                                                     self.hi))
                self._aside = None
            return self._counts

    def states_of(self, contexts: NDArray[np.int64]) -> NDArray[np.int64]:
        """The state of each target id (-1 for an id not interned through this table)."""
        if self._inverse is None or self._inverse[0] != self._interned:  # the map of ids to states, kept
            interned = np.flatnonzero(self._ids >= 0)
            inverse = np.full(int(self._ids.max()) + 1, -1, dtype=np.int64)
            inverse[self._ids[interned]] = interned
            self._inverse = (self._interned, inverse)
        inverse = self._inverse[1]
        found: NDArray[np.int64] = np.full(contexts.shape[0], -1, dtype=np.int64)
        inside = contexts < inverse.shape[0]
        found[inside] = inverse[contexts[inside]]
        return found

    def contexts(self, states: NDArray[np.int64]) -> NDArray[np.int64]:
        """The target's ids of states whose contexts were interned (by `context`), as one gather."""
        ids: NDArray[np.int64] = self._ids[states]
        return ids


def count_followers(V: int, followers: NDArray[Any], length: NDArray[np.int64], lo: NDArray[np.int64],
                    hi: NDArray[np.int64]) -> NDArray[np.integer[Any]]:
    """How often each token follows each longer state's context (`ContextMoves` of these states' lengths and index
    ranges), shape (states - V, V): the states of one length own disjoint ranges of the index, so the followers of
    every length are counted in one `np.bincount` of ``state * V + follower``."""
    ends, states = followers.shape[0], length.shape[0]
    lengths = np.unique(length[V:]).tolist()
    codes = np.empty(len(lengths) * ends, dtype=np.int64)  # per length: (state - V + 1) * V + follower
    for i, L in enumerate(lengths):
        own = V + np.flatnonzero(length[V:] == L)
        owner = np.zeros(ends + 1, dtype=np.int64)  # state - V + 1 on the state's range, 0 elsewhere
        owner[lo[own]] = own - V + 1
        stop = np.zeros(ends + 1, dtype=np.int64)
        stop[hi[own]] = own - V + 1
        owner -= stop
        np.cumsum(owner, out=owner)
        part = codes[i * ends:(i + 1) * ends]
        np.multiply(owner[:ends], V, out=part)
        part += followers
    counts = np.bincount(codes, minlength=(states - V + 1) * V)[V:]  # row 0: positions owned by none
    top = int(counts.max()) if counts.shape[0] else 0
    table: NDArray[np.integer[Any]] = counts.astype(np.min_scalar_type(top) if top < 2**31 else np.int64)
    return table.reshape(states - V, V)
