"""γ-token blocks on the compiled kernel (``thermospec.engine._blocks``): the same blocks as `engine.blocks`' loop.

The kernel runs a chunk's blocks on per-key dense tables held in slots (`BlockTables`:
draft CDF, ``p / q``, residual CDF and the target's CDF for the bonus token, as
`engine.blocks`' per-key tables), with the source's move written in C: the token
(bigram chain), the next position (a trace, teacher-forced) or the target's move table
(order N, `ContextSource.moves`; its states are the kernel's keys).  At a key without
tables it stops and says which; its tables are loaded here (the key's row and draft,
as the Python loop builds them) and the chunk resumes at the same block, which starts over.
The uniforms are the Python loop's (``rng.random((n, 2γ + 1))`` per chunk, the unused
rows of the last chunk discarded), so the blocks are the same, field for field (tested).

On a move table the contexts are interned in the order the blocks first reach their
states (the kernel lists them), which is the order in which `OrderTarget.next_context`
interns them on the Python loop: the context ids, hence the draft keys, are the same.

Slots are cleared all at once when full (a block needs at most γ + 1 keys, and there
are always γ + 2 slots).  Compact tables (large V, `SparseRows`) stay on the Python loop.
"""

from __future__ import annotations

import importlib
import os
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.core.sampling import last_positive
from thermospec.engine.chain import context_tables
from thermospec.engine.chunks import BlockChunk
from thermospec.engine.keys import ContextSource
from thermospec.engine.state_drafts import PsiSpec, StateMetrics, craft_blocks, worth_crafting
from thermospec.targets.bigram import RowSource
from thermospec.targets.order import ContextMoves
from thermospec.tsu.drafts import DraftSource
from thermospec.tsu.row_drafts import RowDrafts

__all__ = ["MOVE_POSITION", "MOVE_TABLE", "MOVE_TOKEN", "BlockTables", "CraftedBlockChunk", "KernelMove", "MoveWalk",
           "blocks_module", "compiled_blocks", "compiled_fixed_blocks", "craft_all", "kernel_move"]

MOVE_TOKEN, MOVE_POSITION, MOVE_TABLE = 0, 1, 2
"""The kernel's moves: the token is the next key; the next position; the move table."""


def blocks_module() -> ModuleType | None:
    """The compiled block kernel, or None when it is not built or disabled by ``THERMOSPEC_KERNEL=python``."""
    if os.environ.get("THERMOSPEC_KERNEL", "").lower() == "python":
        return None
    try:
        return importlib.import_module("thermospec.engine._blocks")
    except ImportError:
        return None


class BlockTables:
    """Per-key dense block tables in slots, as the kernel reads them (layout in ``_blocks.c``).

    Parameters
    ----------
    row, drafts : callable
        A key's target row and draft (by the source's key: a token, a position, a context id).
    V : int
        Tokens.
    keys : int
        The kernel's keys are ``0 .. keys - 1`` (tokens, positions or move-table states).
    gamma : int
        Drafts per block: at least ``γ + 2`` slots are kept.
    max_bytes : int
        Memory bound of the slots (raised to γ + 2 slots).
    """

    def __init__(self, row: RowSource, drafts: DraftSource, V: int, keys: int, gamma: int, max_bytes: int) -> None:
        self.row, self.drafts, self.V = row, drafts, V
        self.capacity = max(gamma + 2, min(keys, max_bytes // (32 * V)))
        self.tables = np.empty((self.capacity, 4, V), dtype=np.float64)
        self.totals = np.empty((self.capacity, 3), dtype=np.float64)
        self.lasts = np.empty((self.capacity, 3), dtype=np.int64)
        self.slot_of = np.full(keys, -1, dtype=np.int64)
        self.used = 0

    def load(self, key: int, name: int) -> None:
        """Load kernel key `key`'s tables, built from the row and draft of source key `name`."""
        if self.used == self.capacity:  # full: every slot is free again
            self.slot_of.fill(-1)
            self.used = 0
        slot = self.used
        p = self.row(name)
        built = context_tables(p, self.drafts(name))
        tables = self.tables[slot]
        tables[0], tables[1], tables[2] = built.draft_cdf, built.ratio, built.residual_cdf
        tables[3] = np.cumsum(p)
        for at, which in enumerate((0, 2, 3)):
            self.totals[slot, at] = tables[which, -1]
            self.lasts[slot, at] = last_positive(tables[which])
        self.slot_of[key] = slot
        self.used += 1


def fits(V: int, gamma: int, max_bytes: int) -> bool:
    """Whether γ + 2 slots of dense tables stay within `max_bytes` (else the Python loop's caches run)."""
    return (gamma + 2) * 32 * V <= max(max_bytes, 1 << 26)


class MoveWalk:
    """A move table's states as the kernel's keys: the states reached first, interned in that order."""

    def __init__(self, moves: ContextMoves, chunk: int, gamma: int) -> None:
        self.moves = moves
        self.seen = (moves.contexts(np.arange(moves.states, dtype=np.int64)) >= 0).astype(np.uint8)
        self.fresh = np.empty(chunk * (gamma + 1) + 1, dtype=np.int64)
        self.metrics: StateMetrics | None = None  # every state's, when all were crafted at once

    def intern(self, count: int) -> None:
        """Intern the first `count` fresh states, in the order the blocks reached them."""
        if count:
            self.moves.intern(self.fresh[:count].copy())


@dataclass(frozen=True, eq=False)
class CraftedBlockChunk(BlockChunk):
    """Blocks on an order-N move table whose states were all crafted at once: what their drafts say, by state.

    Attributes
    ----------
    metrics : StateMetrics
        Every state's draft metrics (bit for bit its context's `ContextDraft`'s).
    moves : ContextMoves
        The move table (`ContextMoves.states_of` gives a context id's state).
    """

    metrics: StateMetrics
    moves: ContextMoves


def craft_all(moves: ContextMoves, psi: PsiSpec, drafts: DraftSource, tables: BlockTables) -> StateMetrics | None:
    """Craft every state's ψ in blocks (`state_drafts.craft_blocks`, bit for bit the per-context drafts) into
    slot = state, with each state's target CDF for the bonus token.

    None when that does not apply: the drafts' TSU is not the simulator drawing from F(ψ) of its payload, a
    row is not positive, or state 0's tables differ from its own draft's.
    """

    def load(keys: NDArray[np.int64], rows: NDArray[np.float64], crafted: RowDrafts) -> None:
        a, b = int(keys[0]), int(keys[-1]) + 1
        block = tables.tables[a:b]
        block[:, 0], block[:, 1], block[:, 2] = crafted.draft_cdf, crafted.ratio, crafted.residual_cdf
        np.cumsum(rows, axis=1, out=block[:, 3])
        for at, which in enumerate((0, 2, 3)):
            cdf = block[:, which]
            tables.totals[a:b, at] = cdf[:, -1]
            tables.lasts[a:b, at] = np.argmax(cdf >= cdf[:, -1:], axis=1)  # `last_positive`

    metrics = craft_blocks(moves, psi, drafts, load)
    if metrics is not None:
        tables.slot_of[:] = np.arange(moves.states, dtype=np.int64)
        tables.used = tables.capacity
    return metrics


def compiled_blocks(source: ContextSource, drafts: DraftSource, gamma: int, steps: int, x: int,
                    rng: np.random.Generator, chunk: int, table_bytes: int, psi: PsiSpec | None = None,
                    compact: bool = False) -> Iterator[BlockChunk] | None:
    """`engine.blocks.run_blocks`' chunks from first key `x` (drawn already), on the kernel; None when it does not
    apply (no kernel, tables too large, a source without a move the kernel knows), `rng` then untouched.

    On a move table, with `psi` (the proposer's ψ from the target's rows) and a run that meets a good share of
    the states, every state is crafted at once (`craft_all`) and the chunks are `CraftedBlockChunk`s.  With
    `compact` (the rows have compact tables too) the kernel's dense tables are used only when half the keys'
    fit in `table_bytes`: beyond, rebuilding O(V) tables costs more than the Python loop on compact ones
    (V = 4096 synthetic rows: 2.2 s against 18.3 s for 20,000 steps; V = 8192: 6.7 s against 5.0 s).
    """
    setup = _setup(source, source.row, drafts, source.V, gamma, steps, x, chunk, table_bytes, psi, compact)
    if setup is None:
        return None
    module, tables, walk, mode, positions, x = setup
    return _chunks(module, tables, walk, (gamma, mode, positions), steps, x, rng, chunk)


_Setup = tuple[ModuleType, BlockTables, "MoveWalk | None", int, int, int]
"""The kernel, the tables, the move table's walk (or None), the move, the positions and the first key."""


KernelMove = tuple[int, int, int, int, ContextMoves | None]
"""How the kernel moves between a source's keys: the move (`MOVE_TOKEN`, `MOVE_POSITION`, `MOVE_TABLE`), how
many keys, the positions a trace cycles through (else 0), the first key as the kernel numbers it, the move table."""


def kernel_move(source: ContextSource | None, V: int, x: int) -> KernelMove | None:
    """The kernel's move over `source`'s keys from first key `x` (None: the bigram chain's); None where the
    kernel does not know the source's moves (no move table, or one it cannot read, or `x` not a state of it)."""
    if source is None or source.keys_are_tokens:
        return MOVE_TOKEN, V, 0, x, None
    if source.token_free:
        return MOVE_POSITION, source.positions, source.positions, x, None
    moves = source.moves()
    if moves is None or moves.next.dtype != np.int32 or not moves.next.flags.c_contiguous:
        return None
    state = source.move_state(x)
    return None if state < 0 else (MOVE_TABLE, moves.states, 0, state, moves)


def _setup(source: ContextSource | None, row: RowSource, drafts: DraftSource, V: int, gamma: int, steps: int, x: int,
           chunk: int, table_bytes: int, psi: PsiSpec | None, compact: bool = False) -> _Setup | None:
    """What the kernel runs on for `source`'s keys (None: the bigram chain's keys, rows `row`); None where it
    does not apply (with `compact`: where not half the keys' tables fit)."""
    module = blocks_module()
    if module is None or not fits(V, gamma, table_bytes):
        return None
    move = kernel_move(source, V, x)
    if move is None:
        return None
    mode, keys, positions, x, moves = move
    if compact and 2 * min(keys, table_bytes // (32 * V)) < keys:
        return None
    walk = MoveWalk(moves, chunk, gamma) if mode == MOVE_TABLE and moves is not None else None
    tables = BlockTables(row, drafts, V, keys, gamma, table_bytes)
    if walk is not None and psi is not None and worth_crafting(walk.moves, steps) and tables.capacity == keys:
        walk.metrics = _crafted(walk.moves, psi, drafts, tables)
    return module, tables, walk, mode, positions, x


_CRAFTED: weakref.WeakKeyDictionary[ContextMoves, tuple[PsiSpec, tuple[NDArray[Any], ...], StateMetrics]] = (
    weakref.WeakKeyDictionary())
"""Each move table's states crafted at once (ψ, the slots' arrays, the metrics), kept while the table lives: B
chains of a run share one copy (the slots are never written again once every state has one)."""


def _crafted(moves: ContextMoves, psi: PsiSpec, drafts: DraftSource, tables: BlockTables) -> StateMetrics | None:
    """`craft_all` into `tables`, or the arrays another chain crafted with the same ψ (the drafts checked alike)."""
    found = _CRAFTED.get(moves)
    if found is not None and found[0] == psi and _same_draft(moves, drafts, found[1][0][0]):
        tables.tables, tables.totals, tables.lasts, tables.slot_of = found[1]
        tables.used = tables.capacity
        return found[2]
    metrics = craft_all(moves, psi, drafts, tables)
    if metrics is not None:
        _CRAFTED[moves] = (psi, (tables.tables, tables.totals, tables.lasts, tables.slot_of), metrics)
    return metrics


def _same_draft(moves: ContextMoves, drafts: DraftSource, crafted: NDArray[np.float64]) -> bool:
    """Whether state 0's draft is the simulator's and its tables are `crafted`'s (draft CDF, ratio, residual CDF)."""
    first = drafts(moves.context(0))
    if not (first.tsu.samples_payload and first.tsu.reports_exactly):
        return False
    own = context_tables(moves.rows(np.zeros(1, dtype=np.int64))[0], first)
    return (np.array_equal(own.draft_cdf, crafted[0]) and np.array_equal(own.ratio, crafted[1])
            and np.array_equal(own.residual_cdf, crafted[2]))


def _chunks(module: ModuleType, tables: BlockTables, walk: MoveWalk | None, shape: tuple[int, int, int], steps: int,
            x: int, rng: np.random.Generator, chunk: int) -> Iterator[BlockChunk]:
    gamma, mode, positions = shape
    emitted = blocks_done = 0
    width = 2 * gamma + 1
    while emitted < steps:
        n = min(chunk, steps - emitted)  # each block emits at least one token
        u = rng.random((n, width))
        out = _Outputs(n, gamma)
        i, x, emitted = _resume(module, tables, walk, u, out, (gamma, mode, positions, False), x, emitted, steps)
        made = out.chunk(blocks_done, i, walk.moves.contexts if walk is not None else None)
        if walk is not None and walk.metrics is not None:
            made = CraftedBlockChunk(**vars(made), metrics=walk.metrics, moves=walk.moves)
        yield made
        blocks_done += i


class _Outputs:
    """A chunk's block arrays, written by the kernel."""

    def __init__(self, n: int, gamma: int) -> None:
        self.first_step = np.empty(n, dtype=np.int64)
        self.context = np.empty(n, dtype=np.int64)
        self.drafted = np.empty((n, gamma), dtype=np.int64)
        self.draft_keys = np.empty((n, gamma), dtype=np.int64)
        self.accepted_length = np.empty(n, dtype=np.int64)
        self.final = np.empty(n, dtype=np.int64)

    def arrays(self) -> tuple[NDArray[np.int64], ...]:
        return (self.first_step, self.context, self.drafted, self.draft_keys, self.accepted_length, self.final)

    def chunk(self, start: int, n: int, names: Callable[[NDArray[np.int64]], NDArray[np.int64]] | None
              ) -> BlockChunk:
        """The first `n` blocks, keys named by `names` (a move table's states: their context ids)."""
        context, keys = self.context[:n], self.draft_keys[:n]
        if names is not None:
            context, keys = names(context), names(keys.reshape(-1)).reshape(n, -1)
        return BlockChunk(start=start, first_step=self.first_step[:n], context=context, drafted=self.drafted[:n],
                          accepted_length=self.accepted_length[:n], final=self.final[:n], draft_keys=keys)


def _resume(module: ModuleType, tables: BlockTables, walk: MoveWalk | None, u: NDArray[np.float64], out: _Outputs,
            how: tuple[int, int, int, bool], x: int, emitted: int, steps: int) -> tuple[int, int, int]:
    """Run the kernel over `u` from block 0, loading each key it stops at: (blocks run, next key, tokens emitted)."""
    gamma, mode, positions, fixed = how
    n = u.shape[0]
    i = fresh = 0
    while True:
        i, x, emitted, missing, fresh = module.run(
            u, tables.tables, tables.totals, tables.lasts, tables.slot_of,
            None if walk is None else walk.moves.next, None if walk is None else walk.seen,
            None if walk is None else walk.fresh, *out.arrays(),
            gamma, tables.V, n, i, x, emitted, steps, mode, positions, fresh, fixed)
        if walk is not None:
            walk.intern(fresh)
            fresh = 0
        if missing < 0:
            return i, x, emitted
        tables.load(missing, missing if walk is None else walk.moves.context(missing))


def compiled_fixed_blocks(row: RowSource, drafts: DraftSource, V: int, x: int, gamma: int, n: int,
                          rng: np.random.Generator, table_bytes: int, source: ContextSource | None = None,
                          psi: PsiSpec | None = None) -> BlockChunk | None:
    """`engine.blocks.fixed_context_blocks` on the kernel: `n` blocks from key `x` of `source` (None: the bigram
    chain's keys, rows `row`); None (`rng` untouched) where the kernel does not apply."""
    setup = _setup(source, row, drafts, V, gamma, n, x, n, table_bytes, psi)
    if setup is None:
        return None
    module, tables, walk, mode, positions, start = setup
    u = rng.random((n, 2 * gamma + 1))
    out = _Outputs(n, gamma)
    _resume(module, tables, walk, u, out, (gamma, mode, positions, True), start, 0, 0)  # first_step: the sums
    return out.chunk(0, n, walk.moves.contexts if walk is not None else None)
