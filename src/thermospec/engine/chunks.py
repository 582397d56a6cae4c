"""What the engine emits: chunks of consecutive steps as parallel arrays.

A single chain emits `ChainChunk`, B chains in lock step `BatchChunk`, γ-token
blocks `BlockChunk` (of any context source).  Telemetry, tallies and summaries read nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, eq=False)
class ChainChunk:
    """Consecutive steps of a run, as parallel arrays.

    Attributes
    ----------
    start : int
        Index of the first step.
    prev, proposed, emitted : ndarray of int64, shape (n,)
        Context, draft and emitted token of each step.
    accepted : ndarray of bool, shape (n,)
        Whether each draft was accepted.
    """

    start: int
    prev: NDArray[np.int64]
    proposed: NDArray[np.int64]
    emitted: NDArray[np.int64]
    accepted: NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.prev.shape[0])


@dataclass(frozen=True, eq=False)
class BatchChunk:
    """The same steps of B chains, as (B, n) arrays.

    Attributes
    ----------
    start : int
        Index of the first step (the same for every chain).
    prev, proposed, emitted : ndarray of int64, shape (B, n)
    accepted : ndarray of bool, shape (B, n)
        (Shape (B, 0) when `run_batch` ran with ``record=False``: then only `steps` says n.)
    steps : int, optional
        n, when the arrays are not recorded.
    """

    start: int
    prev: NDArray[np.int64]
    proposed: NDArray[np.int64]
    emitted: NDArray[np.int64]
    accepted: NDArray[np.bool_]
    steps: int | None = None

    @property
    def chains(self) -> int:
        """B."""
        return int(self.prev.shape[0])

    def __len__(self) -> int:
        return self.steps if self.steps is not None else int(self.prev.shape[1])

    def chain(self, b: int) -> ChainChunk:
        """Chain b's steps as a `ChainChunk`."""
        return ChainChunk(
            start=self.start, prev=self.prev[b], proposed=self.proposed[b],
            emitted=self.emitted[b], accepted=self.accepted[b],
        )


@dataclass(frozen=True, eq=False)
class BlockChunk:
    """Consecutive blocks of a run, as parallel arrays.

    Attributes
    ----------
    start : int
        Index of the first block.
    first_step : ndarray of int64, shape (n,)
        Index in the emitted chain of each block's first emitted token.
    context : ndarray of int64, shape (n,)
        The context each block starts from (the previous emitted token).
    drafted : ndarray of int64, shape (n, γ)
        The γ drafted tokens.
    accepted_length : ndarray of int64, shape (n,)
        Number of drafts accepted, 0 .. γ; the block emits ``accepted_length + 1`` tokens.
    final : ndarray of int64, shape (n,)
        The residual token (rejection) or the bonus token (all accepted) that ends the block.
    draft_keys : ndarray of int64, shape (n, γ)
        The key each draft was drafted and verified in (`engine.keys`; on the bigram chain the
        block's context, then its drafts but the last).
    """

    start: int
    first_step: NDArray[np.int64]
    context: NDArray[np.int64]
    drafted: NDArray[np.int64]
    accepted_length: NDArray[np.int64]
    final: NDArray[np.int64]
    draft_keys: NDArray[np.int64]

    def verified(self) -> NDArray[np.bool_]:
        """Which drafts were verified, shape (n, γ): those up to and including the first rejection."""
        return np.arange(self.gamma)[None, :] <= np.minimum(self.accepted_length, self.gamma - 1)[:, None]

    def __len__(self) -> int:
        return int(self.context.shape[0])

    @property
    def gamma(self) -> int:
        """Drafts per block."""
        return int(self.drafted.shape[1])

    def emitted(self, i: int) -> list[int]:
        """The tokens block ``start + i`` emitted: its accepted drafts, then its final token."""
        n = int(self.accepted_length[i])
        return [*self.drafted[i, :n].tolist(), int(self.final[i])]

    def emitted_tokens(self) -> NDArray[np.int64]:
        """All emitted tokens of the chunk, in chain order."""
        g = self.gamma
        keep = np.arange(g + 1)[None, :] <= self.accepted_length[:, None]
        grid = np.concatenate([self.drafted, self.final[:, None]], axis=1)
        grid[np.arange(len(self)), self.accepted_length] = self.final
        tokens: NDArray[np.int64] = grid[keep]
        return tokens


@dataclass(frozen=True, eq=False)
class DraftsChunk(ChainChunk):
    """Steps with N drafts each (``--drafts N``): `proposed` is the first draft of each step.

    Attributes
    ----------
    drafts_used : ndarray of int64, shape (n,)
        TSU draws each step needed (`VerifierPlan.draws_used`).
    accepted_index : ndarray of int64, shape (n,)
        Index (0-based) of the accepted draft, -1 where the residual was drawn.
    """

    drafts_used: NDArray[np.int64]
    accepted_index: NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class TreeChunk(BlockChunk):
    """Blocks of token trees: `drafted` holds the path (the accepted child of each level; at the rejecting level
    its first child), `draft_keys` the path's keys.

    Attributes
    ----------
    children : ndarray of int64, shape (n, γ, N)
        The N children of each verified node (the path's nodes); -1 below the rejecting level.
    accepted_index : ndarray of int64, shape (n, γ)
        Which child each level accepted (0-based); -1 at the rejecting level and below.
    """

    children: NDArray[np.int64]
    accepted_index: NDArray[np.int64]
