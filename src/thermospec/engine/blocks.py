"""γ-token speculative blocks (Leviathan et al. 2023, Algorithm 1) over any context source.

Written below for the bigram chain, where the key of a step is the previous
token; on order-N contexts and on a trace's positions (`engine.keys`) the same
block runs with "the context of the next draft" read as ``source.advance(key,
drafted token)`` (on a trace: the next position, teacher-forced).

A block starts at context ``x`` (the last emitted token).  The TSU drafts γ
tokens autoregressively: draft ``y_1`` from ψ(x), ``y_2`` from ψ(y_1), ...,
``y_γ`` from ψ(y_{γ-1}): each drafted token is the context of the next draft.
One target call then verifies the block: drafts are accepted in order with
probability ``min(1, p(y_i | c_i) / q(y_i | c_i))`` (``c_1 = x``,
``c_i = y_{i-1}``); at the first rejection a token is drawn from that
position's residual ``max(p - q, 0)`` and the block ends; if all γ drafts are
accepted, one bonus token is drawn from ``p(. | y_γ)``.  A block thus emits
``L + 1`` tokens, ``L`` the accepted length, and every emitted token is
distributed as ``p(. | previous token)``: the output is exactly the bigram chain.

Random stream layout (fixed; `run_blocks` and `run_blocks_reference` share it):
one uniform for ``x_0 ~ pi`` (`engine.start_token`), then exactly ``2γ + 1``
float64 uniforms per block, ``(u_draft_1 .. u_draft_γ, u_accept_1 .. u_accept_γ,
u_final)``, all consumed whatever the accepted length; ``u_final`` draws the
residual token on a rejection or the bonus token otherwise.  Tokens are drawn by
`sampling.inverse_cdf`, and a draft is accepted iff ``u_accept < p/q``
(strict), exactly as in the single-draft engine.

`run_blocks` runs a chunk's blocks on the compiled kernel (`engine.block_kernel`: the bigram chain,
a trace's positions, an order-N target's move table) on dense tables, and on the Python loop here
otherwise (compact tables at large V when not half the keys' dense tables fit, a source without a
move table, no compiler, or ``THERMOSPEC_KERNEL=python``): both consume the chunk's uniforms as
above and give the same blocks.

The exact expected accepted length along the chain, and the modelled speed-up,
are `core.expectation`'s; the block run's telemetry and summary are `runs.block_run`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import cast

import numpy as np
from numpy.typing import NDArray

from thermospec.core.acceptance import accept_correct_step
from thermospec.core.expectation import EXPECTATION_MAX_V
from thermospec.core.sampling import inverse_cdf
from thermospec.core.statistics import Chi2Result, context_chi2
from thermospec.engine.block_kernel import compiled_blocks, compiled_fixed_blocks
from thermospec.engine.chain import context_tables
from thermospec.engine.chunks import BlockChunk
from thermospec.engine.compact import CompactStepTables, CompactTables, SparseRows, compact_source
from thermospec.engine.keys import ContextSource, memoised_advance
from thermospec.engine.state_drafts import PsiSpec
from thermospec.engine.step import DenseStepTables, cdf_entry, correct_token, draw_token
from thermospec.targets.bigram import RowSource
from thermospec.tsu.drafts import ContextDraft, DraftSource

__all__ = [
    "BLOCKS_FILE",
    "MAX_GAMMA",
    "block_kernel_dense_limit",
    "block_transitions",
    "context_transition_counts",
    "fixed_context_blocks",
    "run_blocks",
    "run_blocks_reference",
]


BLOCKS_FILE = "m1_blocks.jsonl"
DEFAULT_BLOCK_CHUNK = 1 << 10
"""Blocks per chunk: the unit a signal keeps or drops, short at the loop's Python speed (about a second of work)."""
TABLE_CACHE_BYTES = 256 * 1024 * 1024
LIST_TABLE_MAX_V = 4096
MAX_GAMMA = 1024


def block_kernel_dense_limit() -> int:
    """Largest V for which `block_expectation` builds its dense V x V matrices."""
    return EXPECTATION_MAX_V


class _DenseBlockTable(DenseStepTables):
    """A context's step tables over all V tokens, and its target CDF for the bonus token."""

    def __init__(self, p: NDArray[np.float64], draft: ContextDraft, as_list: bool) -> None:
        tables = context_tables(p, draft)
        super().__init__(tables.draft_cdf, tables.ratio, tables.residual_cdf, as_list)
        self.bonus = cdf_entry(np.cumsum(p), as_list)

    def bonus_token(self, u: float) -> int:
        return draw_token(self.bonus, u)


class _CompactBlockTable(CompactStepTables):
    """The same draws on compact tables (`thermospec.engine.compact`): the same tokens, O(K + s) per context."""

    def __init__(self, tables: CompactTables, probs: NDArray[np.float64]) -> None:
        super().__init__(tables)
        self.bonus = cdf_entry(np.cumsum(probs))  # the target row's running sum over its support: the dense sums

    def bonus_token(self, u: float) -> int:
        return self.support[draw_token(self.bonus, u)]


_BlockTable = _DenseBlockTable | _CompactBlockTable


class _TableCache:
    """Per-context block tables with a memory bound (least recently used entries go first; with `cyclic`, the
    first keys met are kept).

    With `sparse` (large V, `thermospec.runs.sparse_rows`) the tables are compact.
    """

    def __init__(self, row: RowSource, drafts: DraftSource, V: int, max_bytes: int,
                 sparse: SparseRows | None = None, cyclic: bool = False) -> None:
        self.row = row
        self.drafts = drafts
        self.sparse = sparse
        self.compact = None if sparse is None else (sparse.tables or compact_source(sparse.support, drafts))
        self.as_list = V <= LIST_TABLE_MAX_V
        if sparse is not None:
            per_entry = 64 * (2 * sparse.max_ids + 4 * sparse.max_support) + 1024
        else:
            per_entry = 4 * V * (32 if self.as_list else 8)
        self.capacity = max(8, max_bytes // per_entry)
        self._tables = lru_cache(maxsize=self.capacity)(self.build)
        self._kept: dict[int, _BlockTable] | None = {} if cyclic else None

    def build(self, x: int) -> _BlockTable:
        """The block tables of context x (no cache)."""
        if self.sparse is not None and self.compact is not None:
            return _CompactBlockTable(self.compact(x), self.sparse.support(x)[1])
        return _DenseBlockTable(self.row(x), self.drafts(x), self.as_list)

    def __call__(self, x: int) -> _BlockTable:
        if self._kept is None:
            return self._tables(x)
        # Keys visited in a cycle (a trace's positions) would evict each other from an LRU before their next
        # visit: the cache keeps the first keys it meets instead, and builds the others each time.
        found = self._kept.get(x)
        if found is None:
            found = self.build(x)
            if len(self._kept) < self.capacity:
                self._kept[x] = found
        return found


def _token_is_key(key: int, token: int) -> int:
    """The bigram chain's move: the emitted token is the next context."""
    return token


def _block(table: Callable[[int], _BlockTable], advance: Callable[[int, int], int], x: int, u: list[float],
           gamma: int) -> tuple[list[int], list[int], int, int]:
    """One block from key x with its ``2γ + 1`` uniforms: (drafts, their keys, accepted length, final token).

    Draft i is drawn in key ``c_i`` (``c_0 = x``, ``c_{i+1} = advance(c_i, y_i)``) and verified there; the
    bonus token is drawn in ``advance(c_{γ-1}, y_γ)``.
    """
    ys, keys = [], []
    c = x
    for i in range(gamma):
        y = table(c).draft_token(u[i])
        ys.append(y)
        keys.append(c)
        c = advance(c, y)
    for i in range(gamma):  # the step rule on each draft in turn: the first rejection ends the block
        z, accepted = correct_token(table(keys[i]), ys[i], u[gamma + i], u[2 * gamma])
        if not accepted:
            return ys, keys, i, z
    return ys, keys, gamma, table(c).bonus_token(u[2 * gamma])


def _chunk(start: int, first_step: list[int], context: list[int], drafted: list[list[int]], keys: list[list[int]],
           accepted_length: list[int], final: list[int], gamma: int) -> BlockChunk:
    n = len(context)
    return BlockChunk(
        start=start,
        first_step=np.array(first_step, dtype=np.int64),
        context=np.array(context, dtype=np.int64),
        drafted=np.array(drafted, dtype=np.int64).reshape(n, gamma),
        accepted_length=np.array(accepted_length, dtype=np.int64),
        final=np.array(final, dtype=np.int64),
        draft_keys=np.array(keys, dtype=np.int64).reshape(n, gamma),
    )


def fixed_context_blocks(
    row: RowSource, drafts: DraftSource, V: int, x: int, gamma: int, n: int, rng: np.random.Generator,
    sparse: SparseRows | None = None, advance: Callable[[int, int], int] = _token_is_key,
    psi: PsiSpec | None = None, source: ContextSource | None = None,
) -> BlockChunk:
    """`n` independent blocks, each started at key `x` (same per-block layout as the chain).

    `advance` is a context source's move (`engine.keys`); by default the bigram chain's (the token).  Given
    the `source` itself (its ``advance`` is then the move) the blocks run on the compiled kernel (`psi`: as
    `run_blocks`' on an order-N move table), as they do on the bigram chain.
    """
    if source is not None:
        advance = source.advance
    if sparse is None and (advance is _token_is_key or source is not None):
        compiled = compiled_fixed_blocks(row, drafts, V, x, gamma, n, rng, TABLE_CACHE_BYTES, source, psi)
        if compiled is not None:
            return compiled
    table = _TableCache(row, drafts, V, TABLE_CACHE_BYTES, sparse)
    drafted, keys, accepted_length, final = [], [], [], []
    for u in rng.random((n, 2 * gamma + 1)).tolist():
        ys, cs, n_acc, z = _block(table, advance, x, u, gamma)
        drafted.append(ys)
        keys.append(cs)
        accepted_length.append(n_acc)
        final.append(z)
    lengths = np.array(accepted_length, dtype=np.int64)
    first_step = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64).tolist()
    return _chunk(0, first_step, [x] * n, drafted, keys, accepted_length, final, gamma)


def run_blocks(
    source: ContextSource,
    drafts: DraftSource,
    gamma: int,
    steps: int,
    rng: np.random.Generator,
    chunk: int = DEFAULT_BLOCK_CHUNK,
    table_bytes: int = TABLE_CACHE_BYTES,
    sparse: SparseRows | None = None,
    psi: PsiSpec | None = None,
) -> Iterator[BlockChunk]:
    """Run γ-token speculative blocks until at least `steps` tokens are emitted.

    Parameters
    ----------
    source : ContextSource
        The keys (`engine.keys`): the bigram chain, order-N contexts or a trace's positions.
    drafts : callable
        ``drafts(key)`` gives the `ContextDraft` of a key.
    gamma : int
        Drafts per block, >= 1.
    steps : int
        Blocks run until the chain holds at least this many tokens; the last
        block is kept whole, so up to ``gamma`` more tokens may be emitted.
    rng : numpy.random.Generator
        The chain's random stream (layout in the module docstring; a trace starts without a uniform).
    chunk : int
        Blocks per yielded chunk; memory stays flat in `steps`.
    table_bytes : int
        Memory bound of the per-key table cache.
    sparse : SparseRows, optional
        The target's rows by their supports (`thermospec.runs.sparse_rows`): compact tables,
        O(K + s) per key instead of O(V), the same tokens.
    psi : (K, tau, eps), optional
        The proposer's ψ parameters when ψ is crafted from the target's rows (`Proposer.psi_spec`): on an
        order-N move table every state may then be crafted at once (`engine.block_kernel.craft_all`).

    Yields
    ------
    BlockChunk
    """
    if not 1 <= gamma <= MAX_GAMMA:
        raise ValueError(f"--gamma: must be an integer in 1 .. {MAX_GAMMA}, got {gamma}")
    x = source.start(rng)
    compiled = compiled_blocks(source, drafts, gamma, steps, x, rng, chunk, table_bytes, psi, sparse is not None)
    if compiled is not None:
        yield from compiled
        return
    table = _TableCache(source.row, drafts, source.V, table_bytes, sparse, cyclic=source.token_free)
    advance = _token_is_key if source.keys_are_tokens else memoised_advance(source)
    emitted_total = 0
    blocks_done = 0
    width = 2 * gamma + 1
    while emitted_total < steps:
        n = min(chunk, steps - emitted_total)  # each block emits at least one token
        uniforms = rng.random((n, width)).tolist()
        first_step: list[int] = []
        context: list[int] = []
        drafted: list[list[int]] = []
        keys: list[list[int]] = []
        accepted_length: list[int] = []
        final: list[int] = []
        for u in uniforms:
            if emitted_total >= steps:
                break
            ys, cs, n_acc, z = _block(table, advance, x, u, gamma)
            first_step.append(emitted_total)
            context.append(x)
            drafted.append(ys)
            keys.append(cs)
            accepted_length.append(n_acc)
            final.append(z)
            emitted_total += n_acc + 1
            # the block emitted its accepted drafts, then z, from the key its last accepted draft led to
            x = advance(cs[n_acc], z) if n_acc < gamma else advance(advance(cs[-1], ys[-1]), z)
        yield _chunk(blocks_done, first_step, context, drafted, keys, accepted_length, final, gamma)
        blocks_done += len(context)


class _PresetUniforms:
    """Hands out given uniforms through ``random(n)``, so the public per-step API can run on a block's layout."""

    def __init__(self, values: NDArray[np.float64]) -> None:
        self.values = values
        self.used = 0

    def random(self, n: int) -> NDArray[np.float64]:
        out = self.values[self.used : self.used + n]
        if out.shape[0] != n:
            raise ValueError("the block's uniforms are exhausted")
        self.used += n
        return out


def run_blocks_reference(
    source: ContextSource,
    drafts: DraftSource,
    gamma: int,
    steps: int,
    rng: np.random.Generator,
) -> BlockChunk:
    """Algorithm 1 written block by block with the public per-step API: the tests pin `run_blocks` to it.

    Each draft is ``SimTSU.draw`` of its key's TSU (whose reported ``log q``
    is checked against F(ψ)); the drafts are verified in order by
    `accept_correct_step` fed ``(u_accept_i, u_final)``, which on a rejection
    returns the residual draw that ends the block; if all are accepted the bonus
    token is drawn from the row of the key after the last draft with ``u_final``.
    """
    x = source.start(rng)
    first_step, context, drafted, keys, accepted_length, final = [], [], [], [], [], []
    emitted_total = 0
    while emitted_total < steps:
        u = rng.random(2 * gamma + 1)
        ys: list[int] = []
        cs: list[int] = []
        qs: list[NDArray[np.float64]] = []
        c = x
        for i in range(gamma):
            tsu = drafts(c).tsu
            y, log_q = tsu.draw(cast(np.random.Generator, _PresetUniforms(u[i : i + 1])))
            if log_q != float(np.log(tsu.q[y])):
                raise ValueError(f"TSU reported log q = {log_q!r} for token {y}; F(ψ) says {np.log(tsu.q[y])!r}")
            ys.append(y)
            cs.append(c)
            qs.append(tsu.q)
            c = source.advance(c, y)
        n_acc = 0
        z = -1
        for i in range(gamma):
            feed = _PresetUniforms(np.array([u[gamma + i], u[2 * gamma]]))
            e, accepted = accept_correct_step(source.row(cs[i]), qs[i], ys[i], cast(np.random.Generator, feed))
            if not accepted:
                z = e
                break
            n_acc += 1
        if n_acc == gamma:
            z = int(inverse_cdf(np.cumsum(source.row(c)), u[2 * gamma :])[0])
        first_step.append(emitted_total)
        context.append(x)
        drafted.append(ys)
        keys.append(cs)
        accepted_length.append(n_acc)
        final.append(z)
        emitted_total += n_acc + 1
        x = source.advance(cs[n_acc] if n_acc < gamma else c, z)
    return _chunk(0, first_step, context, drafted, keys, accepted_length, final, gamma)


def block_transitions(chunk: BlockChunk, advance: Callable[[int, int], int] = _token_is_key
                      ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Every (key, emitted token) pair of the chunk's blocks, each block from its own first key.

    An accepted draft and a residual token are emitted in the key their draft was verified in; a
    bonus token in ``advance(last draft's key, last draft)`` (on the bigram chain: the last draft).
    Unlike `context_transition_counts` this does not assume the blocks are consecutive.
    """
    g = chunk.gamma
    full = np.flatnonzero(chunk.accepted_length == g)
    bonus_key = np.array([advance(int(chunk.draft_keys[i, -1]), int(chunk.drafted[i, -1])) for i in full.tolist()],
                         dtype=np.int64)
    keys = np.concatenate([chunk.draft_keys, np.zeros((len(chunk), 1), dtype=np.int64)], axis=1)
    keys[full, g] = bonus_key
    keep = np.arange(g + 1)[None, :] <= chunk.accepted_length[:, None]
    prev: NDArray[np.int64] = keys[keep]
    return prev, chunk.emitted_tokens()


def context_transition_counts(chunk: BlockChunk, contexts: list[int], V: int) -> NDArray[np.int64]:
    """Counts of the tokens emitted right after each of `contexts`, shape ``(len(contexts), V)``.

    Covers every emitted token of the chunk, whatever its position in its block
    (the first token of a block follows the block's context).
    """
    tokens = chunk.emitted_tokens()
    prev = np.empty_like(tokens)
    if tokens.size:
        starts = chunk.first_step - chunk.first_step[0]
        prev[1:] = tokens[:-1]
        prev[starts] = chunk.context
    counts = np.zeros((len(contexts), V), dtype=np.int64)
    for i, x in enumerate(contexts):
        counts[i] = np.bincount(tokens[prev == x], minlength=V)
    return counts


def block_transition_chi2(chunk: BlockChunk, row: RowSource, V: int,
                          advance: Callable[[int, int], int] = _token_is_key) -> Chi2Result:
    """χ² of every emitted token against its key's row ``p(. | key)``, summed over keys (`context_chi2`)."""
    prev, emitted = block_transitions(chunk, advance)
    return context_chi2(
        ((c, np.bincount(emitted[prev == c], minlength=V).astype(np.float64)) for c in np.unique(prev).tolist()), row
    )
