"""Token trees on the compiled kernel (``thermospec.engine._blocks.trees``): `engine.trees.run_trees`' blocks.

Each level of a tree is one N-draft verifier step at its key (`engine.drafts.draft_step`) on the
key's verifier tables (`engine.draft_tables.DraftTableCache`'s slots, least recently used evicted),
its N children drawn from the key's draft CDF (`SimTSU`'s own inverse-CDF draws, whose reports are
``log F(ψ)`` by construction: nothing to check); the bonus token inverts the target's CDF of the
key after the path (`BonusTables`).  The keys move as in `engine.block_kernel` (the token, the
next position, an order-N move table whose states are interned in the order the blocks reach
them), and the kernel stops at a key without tables, which is loaded here before the block starts
over.  The uniforms are the Python loop's, so the chunks are the same, field for field (tested).
It applies when the first key's TSU is the simulator (`SimTSU`: every key's then is); another TSU
(fault-injected, THRML) draws its own tokens on the Python loop, each report checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import numpy as np
from numpy.typing import NDArray

from thermospec.core.sampling import last_positive
from thermospec.core.verifiers import table_layout
from thermospec.engine.block_kernel import MOVE_TABLE, MoveWalk, blocks_module, kernel_move
from thermospec.engine.chunks import TreeChunk
from thermospec.engine.draft_tables import DraftTableCache, draft_slot_bytes
from thermospec.engine.drafts import PlanSource, draft_table_source
from thermospec.engine.keys import ContextSource
from thermospec.targets.bigram import RowSource
from thermospec.tsu.drafts import DraftSource

__all__ = ["BonusTables", "compiled_trees"]

TREE_TABLE_BYTES = 256 * 1024 * 1024
"""Memory bound of the verifier tables' slots, raised to γ + 2 slots (a block needs up to γ + 1 keys' tables at
once; beyond 4 times the bound the Python loop runs)."""


class BonusTables:
    """Each key's target CDF for the bonus token, in slots cleared all at once when full."""

    def __init__(self, row: RowSource, V: int, keys: int, max_bytes: int) -> None:
        self.row = row
        self.capacity = max(1, min(keys, max_bytes // (8 * V)))
        self.cdf = np.empty((self.capacity, V), dtype=np.float64)
        self.totals = np.empty(self.capacity, dtype=np.float64)
        self.lasts = np.empty(self.capacity, dtype=np.int64)
        self.slot_of = np.full(keys, -1, dtype=np.int64)
        self.used = 0

    def load(self, key: int, name: int) -> None:
        """Load kernel key `key`'s CDF, from the row of source key `name`."""
        if self.used == self.capacity:
            self.slot_of.fill(-1)
            self.used = 0
        slot = self.used
        np.cumsum(self.row(name), out=self.cdf[slot])
        self.totals[slot] = self.cdf[slot, -1]
        self.lasts[slot] = last_positive(self.cdf[slot])
        self.slot_of[key] = slot
        self.used += 1


def compiled_trees(source: ContextSource, drafts: DraftSource, plans: PlanSource, verifier: str, n: int,
                   gamma: int, steps: int, x: int, rng: np.random.Generator, chunk: int
                   ) -> Iterator[TreeChunk] | None:
    """`run_trees`' chunks from first key `x` (drawn already) on the kernel; None (`rng` untouched) when it does
    not apply: no kernel, another TSU than the simulator, too few slots, a source whose moves it does not know."""
    module = blocks_module()
    tsu = drafts(x).tsu
    if module is None or not (tsu.samples_payload and tsu.reports_exactly) or not hasattr(module, "trees"):
        return None
    V = source.V
    move = kernel_move(source, V, x)
    if move is None:
        return None
    mode, keys, positions, x, moves = move
    table_bytes = max(TREE_TABLE_BYTES, (gamma + 2) * draft_slot_bytes(V, n, verifier))  # a block's keys fit
    if table_bytes > 4 * TREE_TABLE_BYTES:
        return None
    walk = MoveWalk(moves, chunk, gamma) if mode == MOVE_TABLE and moves is not None else None
    by_key = draft_table_source(drafts, plans)
    name = (lambda k: k) if walk is None else walk.moves.context
    cache = DraftTableCache(keys, V, n, verifier, lambda k: by_key(name(k)), table_bytes)
    bonus = BonusTables(source.row, V, keys, TREE_TABLE_BYTES // 4)
    return _chunks(module, cache, bonus, walk, (gamma, n, verifier, mode, positions), steps, x, rng, chunk)


def _chunks(module: ModuleType, cache: DraftTableCache, bonus: BonusTables, walk: MoveWalk | None,
            shape: tuple[int, int, str, int, int], steps: int, x: int, rng: np.random.Generator, chunk: int
            ) -> Iterator[TreeChunk]:
    gamma, n, verifier, mode, positions = shape
    levels, selection = table_layout(verifier, n)
    lay = cache.layout
    width = sum(n**d for d in range(1, gamma + 1)) + gamma * n + 1
    emitted = blocks_done = 0
    while emitted < steps:
        m = min(chunk, steps - emitted)
        u = rng.random((m, width))
        out = [np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64), np.empty((m, gamma), dtype=np.int64),
               np.empty((m, gamma), dtype=np.int64), np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64),
               np.empty((m, gamma, n), dtype=np.int64), np.empty((m, gamma), dtype=np.int64)]
        i = fresh = 0
        while True:
            i, x, emitted, missing, kind, fresh = module.trees(
                u, cache.floats, cache.ints, cache.totals, cache.lasts, cache.slot_of, cache.last_used,
                bonus.cdf, bonus.totals, bonus.lasts, bonus.slot_of,
                None if walk is None else walk.moves.next, None if walk is None else walk.seen,
                None if walk is None else walk.fresh, *out,
                gamma, n, lay.V, lay.G, levels, int(selection), m, i, x, emitted, steps, mode, positions, fresh,
                blocks_done)
            if walk is not None:
                walk.intern(fresh)
                fresh = 0
            if missing < 0:
                break
            if kind == 0:
                cache.load(missing)
            else:
                bonus.load(missing, missing if walk is None else walk.moves.context(missing))
        yield _tree_chunk(blocks_done, i, out, walk)
        blocks_done += i


def _tree_chunk(start: int, i: int, out: list[NDArray[np.int64]], walk: MoveWalk | None) -> TreeChunk:
    first_step, context, drafted, draft_keys, accepted_length, final, children, index = (a[:i] for a in out)
    if walk is not None:  # a move table's states: their context ids
        context = walk.moves.contexts(context)
        draft_keys = walk.moves.contexts(draft_keys.reshape(-1)).reshape(i, -1)
    return TreeChunk(start=start, first_step=first_step, context=context, drafted=drafted, draft_keys=draft_keys,
                     accepted_length=accepted_length, final=final, children=children, accepted_index=index)
