"""What a run counts: per-context visits, accepted drafts and emitted tokens, for one chain, many, or blocks.

Tallies are updated chunk by chunk (or by the compiled batch kernel in its
worker threads) and read by the summaries; their memory is O(V) (O(V²) with
transition counts), whatever the run length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.chunks import BatchChunk, BlockChunk, ChainChunk


@dataclass
class RunTally:
    """Running counts of a chain, updated chunk by chunk in constant memory.

    With ``track_transitions`` (and V <= 1024, so the V x V counts stay small),
    the counts of every (context, emitted token) pair are kept too, for the
    transition χ² of `summarise_run`.
    """

    vocab_size: int
    track_transitions: bool = False
    steps: int = 0
    accepted: int = 0
    context_counts: NDArray[np.int64] = field(init=False)
    emitted_counts: NDArray[np.int64] = field(init=False)
    transitions: NDArray[np.int64] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.context_counts = np.zeros(self.vocab_size, dtype=np.int64)
        self.emitted_counts = np.zeros(self.vocab_size, dtype=np.int64)
        if self.track_transitions and self.vocab_size <= TRANSITION_MAX_V:
            self.transitions = np.zeros(self.vocab_size * self.vocab_size, dtype=np.int64)

    def update(self, chunk: ChainChunk) -> None:
        """Add one chunk of steps."""
        self.steps += len(chunk)
        self.accepted += int(np.count_nonzero(chunk.accepted))
        self.context_counts += np.bincount(chunk.prev, minlength=self.vocab_size)
        self.emitted_counts += np.bincount(chunk.emitted, minlength=self.vocab_size)
        if self.transitions is not None:
            pairs = chunk.prev * self.vocab_size + chunk.emitted
            self.transitions += np.bincount(pairs, minlength=self.transitions.shape[0])


def batch_of(chunks: Sequence[ChainChunk]) -> BatchChunk:
    """B chains' chunks of the same steps as one `BatchChunk` (``chunks[b]``: chain b's)."""
    return BatchChunk(start=chunks[0].start, prev=np.stack([c.prev for c in chunks]),
                      proposed=np.stack([c.proposed for c in chunks]), emitted=np.stack([c.emitted for c in chunks]),
                      accepted=np.stack([c.accepted for c in chunks]))


class BatchTally:
    """Per-chain counts of B chains in lock step (``--chains B``, ``--drafts N``), pooled on demand (`pooled`),
    updated chunk by chunk with one `bincount` per array.

    Only the accepted drafts and the emitted tokens are counted; the contexts are derived.  A
    chain's context at step t is its emitted token at step t - 1, and at step 0 its start token,
    so over consecutive steps its contexts are its emitted tokens, plus its first context
    (`start`), minus its latest emitted token (`last`).  Steps added after a break (a chunk whose
    first context is not the chain's `last`, e.g. a tally shared by two runs) are kept exact by a
    correction, allocated only then.

    Attributes
    ----------
    steps : int
        Steps of each chain so far.
    accepted : ndarray of int64, shape (chains,)
    emitted_counts : ndarray of int64, shape (chains, vocab_size)
    start, last : ndarray of int64, shape (chains,)
        Each chain's first context and its context after the latest step (equal before any step).
    transitions : ndarray of int64, shape (vocab_size ** 2,), or None
        With ``track_transitions`` (and V <= `TRANSITION_MAX_V`): every chain's (context, emitted)
        pairs pooled, ``[x * V + y]``, for the calibrated transition χ² of the pooled summary.
    per_chain : bool
        Whether each chain's token counts are kept.  ``per_chain=False`` (with the transitions
        tracked) keeps only each chain's accepted drafts and the pooled transitions, from which the
        pooled counts follow: one count per step less, for runs that write no per-chain summary.
    """

    def __init__(self, chains: int, vocab_size: int, track_transitions: bool = False, per_chain: bool = True) -> None:
        self.chains = chains
        self.vocab_size = vocab_size
        self.transitions: NDArray[np.int64] | None = (
            np.zeros(vocab_size * vocab_size, dtype=np.int64)
            if track_transitions and vocab_size <= TRANSITION_MAX_V else None
        )
        self.per_chain = per_chain or self.transitions is None  # the pooled counts need one or the other
        self.steps = 0
        self.accepted = np.zeros(chains, dtype=np.int64)
        self.emitted_counts = np.zeros((chains, vocab_size), dtype=np.int64)
        self.start = np.zeros(chains, dtype=np.int64)
        self.last = np.zeros(chains, dtype=np.int64)
        self._breaks: NDArray[np.int64] | None = None  # (chains, vocab_size) correction, after a break

    def _need_per_chain(self) -> None:
        if not self.per_chain:
            raise ValueError("this tally keeps no per-chain token counts (per_chain=False)")

    @property
    def context_counts(self) -> NDArray[np.int64]:
        """Each chain's contexts so far, shape (chains, vocab_size): a fresh array, derived."""
        self._need_per_chain()
        counts = self.emitted_counts.copy()
        rows = np.arange(self.chains)
        counts[rows, self.last] -= 1  # one (row, token) pair per chain: no repeated index
        counts[rows, self.start] += 1
        if self._breaks is not None:
            counts += self._breaks
        return counts

    def begin(self, first: NDArray[np.int64]) -> None:
        """Note each chain's context before the steps about to be added (``first``, shape (chains,))."""
        if self.steps == 0:
            self.start[:] = first
        else:
            broken = np.flatnonzero(first != self.last)
            if broken.size:  # the steps do not continue the chain: close the segment, open another
                if self._breaks is None:
                    self._breaks = np.zeros((self.chains, self.vocab_size), dtype=np.int64)
                self._breaks[broken, first[broken]] += 1
                self._breaks[broken, self.last[broken]] -= 1
        self.last[:] = first

    def _counts(self, tokens: NDArray[np.int64]) -> NDArray[np.int64]:
        offsets = (np.arange(self.chains, dtype=np.int64) * self.vocab_size)[:, None]
        flat = np.bincount((tokens + offsets).ravel(), minlength=self.chains * self.vocab_size)
        counts: NDArray[np.int64] = flat.reshape(self.chains, self.vocab_size)
        return counts

    def update(self, chunk: BatchChunk) -> None:
        """Add one chunk of every chain."""
        if len(chunk) == 0:
            return
        self.begin(chunk.prev[:, 0])
        self.steps += len(chunk)
        self.accepted += np.count_nonzero(chunk.accepted, axis=1)
        if self.per_chain:
            self.emitted_counts += self._counts(chunk.emitted)
        self.last[:] = chunk.emitted[:, -1]
        if self.transitions is not None:
            V = self.vocab_size
            self.transitions += np.bincount((chunk.prev * V + chunk.emitted).ravel(), minlength=V * V)

    def update_chains(self, chunks: Sequence[ChainChunk]) -> None:
        """Add the same steps of every chain, given chain by chain (``chunks[b]``: chain b's)."""
        self.update(batch_of(chunks))

    def chain(self, b: int) -> RunTally:
        """Chain b's counts as a `thermospec.engine.tally.RunTally`."""
        self._need_per_chain()
        tally = RunTally(self.vocab_size)
        tally.steps = self.steps
        tally.accepted = int(self.accepted[b])
        contexts = self.emitted_counts[b].copy()  # chain b's row of `context_counts`, derived alone
        contexts[self.last[b]] -= 1
        contexts[self.start[b]] += 1
        if self._breaks is not None:
            contexts += self._breaks[b]
        tally.context_counts = contexts
        tally.emitted_counts = self.emitted_counts[b].copy()
        return tally

    def pooled(self) -> RunTally:
        """All chains' steps as one tally (each chain starts from pi, so pooled counts still expect N pi)."""
        tally = RunTally(self.vocab_size)
        tally.steps = self.steps * self.chains
        tally.accepted = int(self.accepted.sum())
        if self.per_chain:
            tally.context_counts = self.context_counts.sum(axis=0)
            tally.emitted_counts = self.emitted_counts.sum(axis=0)
        else:  # every pair (x, y) is one step of context x emitting y
            assert self.transitions is not None
            pairs = self.transitions.reshape(self.vocab_size, self.vocab_size)
            tally.context_counts = pairs.sum(axis=1)
            tally.emitted_counts = pairs.sum(axis=0)
        if self.transitions is not None:
            tally.transitions = self.transitions.copy()
        return tally


@dataclass
class BlockTally:
    """Running counts of a block run, updated chunk by chunk."""

    vocab_size: int
    gamma: int
    blocks: int = 0
    tokens: int = 0
    emitted_counts: NDArray[np.int64] = field(init=False)
    length_counts: NDArray[np.int64] = field(init=False)
    draft_context_counts: NDArray[np.int64] = field(init=False)
    lengths: list[NDArray[np.int16]] = field(init=False)

    def __post_init__(self) -> None:
        self.emitted_counts = np.zeros(self.vocab_size, dtype=np.int64)
        self.length_counts = np.zeros(self.gamma + 1, dtype=np.int64)
        self.draft_context_counts = np.zeros(self.vocab_size, dtype=np.int64)
        self.lengths = []

    def update(self, chunk: BlockChunk) -> None:
        """Add one chunk of blocks."""
        self.blocks += len(chunk)
        self.tokens += int(chunk.accepted_length.sum()) + len(chunk)
        self.emitted_counts += np.bincount(chunk.emitted_tokens(), minlength=self.vocab_size)
        self.length_counts += np.bincount(chunk.accepted_length, minlength=self.gamma + 1)
        starts = np.bincount(chunk.context, minlength=self.draft_context_counts.shape[0])
        if starts.shape[0] > self.draft_context_counts.shape[0]:  # keys beyond V: order-N context ids
            starts[: self.draft_context_counts.shape[0]] += self.draft_context_counts
            self.draft_context_counts = starts
        else:
            self.draft_context_counts += starts
        self.lengths.append(chunk.accepted_length.astype(np.int16))  # γ <= MAX_GAMMA fits

    def accepted_lengths(self) -> NDArray[np.float64]:
        """Accepted length of every block so far."""
        if not self.lengths:
            return np.zeros(0)
        return np.concatenate(self.lengths).astype(np.float64)


TRANSITION_MAX_V = 1024
