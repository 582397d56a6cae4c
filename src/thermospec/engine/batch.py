"""Many independent chains at once: ``run --chains B``.

Chain b is the M1 chain on its own random stream: chain 0 uses exactly the
stream of the single-chain run (``random_stream(seed, Stream.CHAIN)``), so chain
0 of a batch is, token for token and byte for byte, the run without
``--chains``; chain b >= 1 uses ``random_stream(seed, Stream.CHAIN, b)``.  Each
chain keeps the one layout of every engine path: one uniform for ``x_0 ~ pi``,
then ``(u_draft, u_accept, u_residual)`` per step.  So chain b of a batch equals
``engine.run_chain`` on chain b's stream, whatever the thread count or chunking.

The chains advance in lock step, a chunk of steps at a time: the compiled
kernel (``thermospec._kernels.batch``, GIL released) runs slices of chains on
worker threads, drawing each chain's uniforms itself from its PCG64 state, or,
without it, a vectorised NumPy binary search steps all chains at once
(`numpy_batch_steps`, on `thermospec.engine.step.vector_steps`).  Both need every context's table
resident (true up to V of several thousand with the default memory bound);
otherwise each chain runs through the sequential stepper.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numpy as np
from numpy.typing import NDArray

from thermospec.core.sampling import inverse_cdf
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import table_source
from thermospec.engine.chain_seeds import chain_starts
from thermospec.engine.chunks import BatchChunk
from thermospec.engine.compact import COMPACT_TABLE_BYTES, CompactStepper, SparseRows, compact_source
from thermospec.engine.kernels import (
    DEFAULT_TABLE_BYTES,
    Backend,
    ChainStepper,
    TableCache,
    draws_pcg64,
    pcg64_state,
    resolve_backend,
)
from thermospec.engine.step import vector_steps
from thermospec.engine.tally import BatchTally
from thermospec.targets.bigram import RowSource
from thermospec.tsu.drafts import DraftSource

__all__ = [
    "BATCH_CHUNK_TOKENS",
    "chain_stream",
    "numpy_batch_steps",
    "run_batch",
]


BATCH_CHUNK_TOKENS = 1 << 20
"""Tokens (chains x steps) per chunk: bounds the uniforms and outputs held at once (~50 MB)."""


BATCH_RNG_GROUP = 32
"""Chains whose uniforms a worker thread draws at once before stepping them (a cache-sized block), when the
kernel does not draw them itself."""


BATCH_PART = 64
"""Chains per unit of work a worker thread takes: threads take parts as they free up, so a thread that the
machine's other work delays holds the others back by one part at most, not by its whole share."""


def chain_stream(seed: int, b: int) -> np.random.Generator:
    """The random stream of chain `b`: chain 0 is the single-chain run's stream."""
    if b < 0:
        raise ValueError(f"chain index must be >= 0, got {b}")
    return random_stream(seed, Stream.CHAIN) if b == 0 else random_stream(seed, Stream.CHAIN, b)


def numpy_batch_steps(
    cache: TableCache, u: NDArray[np.float64], x: NDArray[np.int64], moves: NDArray[np.int32] | None = None,
) -> tuple[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]], NDArray[np.int64]]:
    """Step B chains in lock step with NumPy (the fallback of the compiled batch kernel).

    Parameters
    ----------
    cache : TableCache
        Every context loaded.
    u : ndarray of float64, shape (B, n, 3)
        Each chain's uniforms.
    x : ndarray of int64, shape (B,)
        Each chain's context before the first step.
    moves : ndarray of int32, shape (contexts * V,), optional
        A move table: the next context is ``moves[x * V + emitted]`` (else the emitted token).

    Returns
    -------
    (prev, proposed, emitted, accepted), x
        (B, n) arrays, and each chain's context after the last step.
    """
    B, n, _ = u.shape
    V = cache.V
    flat = cache.tables.reshape(-1)
    prev = np.empty((B, n), dtype=np.int64)
    proposed = np.empty((B, n), dtype=np.int64)
    emitted = np.empty((B, n), dtype=np.int64)
    accepted = np.empty((B, n), dtype=np.bool_)
    x = x.copy()
    for t in range(n):
        s = cache.slot_of[x]
        prev[:, t] = x
        proposed[:, t], y, accepted[:, t] = vector_steps(flat, s * (3 * V), V, cache.totals[s], cache.lasts[s], u[:, t])
        emitted[:, t] = y
        x = y if moves is None else moves[x * V + y].astype(np.int64)
    return (prev, proposed, emitted, accepted), x


_NO_UNIFORMS = np.empty((0, 3), dtype=np.float64)


def _slices(B: int, parts: int) -> list[slice]:
    edges = np.linspace(0, B, parts + 1).round().astype(int).tolist()
    return [slice(a, b) for a, b in itertools.pairwise(edges) if b > a]


_Outputs = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]


def run_batch(
    row: RowSource,
    pi: NDArray[np.float64],
    drafts: DraftSource,
    steps: int,
    seed: int,
    chains: int,
    chunk_tokens: int = BATCH_CHUNK_TOKENS,
    backend: Backend = "auto",
    threads: int | None = None,
    max_table_bytes: int | None = None,
    tally: BatchTally | None = None,
    reuse_outputs: bool = False,
    sparse: SparseRows | None = None,
    record: bool = True,
    moves: NDArray[np.int32] | None = None,
) -> Iterator[BatchChunk]:
    """Run `chains` independent chains of `steps` steps each, yielding chunks of steps.

    Parameters
    ----------
    row, pi, drafts
        As in `thermospec.engine.run_chain`.
    steps : int
        Steps per chain.
    seed : int
        The run's seed; chain b draws from `chain_stream` (seed, b).
    chains : int
        B >= 1.
    chunk_tokens : int
        Chains x steps per yielded chunk (memory bound).
    backend : {"auto", "compiled", "python"}
        "python" uses the vectorised NumPy stepper.
    threads : int, optional
        Worker threads for the compiled kernel (default: the CPU count).
    max_table_bytes : int, optional
        Memory bound of the shared table cache (default `DEFAULT_TABLE_BYTES`, or `COMPACT_TABLE_BYTES`
        with `sparse`).
    tally : BatchTally, optional
        Per-chain counts of (`chains`, V), to which every chunk is added before it is yielded
        (on the compiled path by the worker threads, as they step, which count the accepted drafts
        and emitted tokens only, the contexts following from them; otherwise with `BatchTally.update`).
    reuse_outputs : bool
        Let the chunks share their arrays: each yielded chunk's arrays may be overwritten by the
        next chunk, so copy what must outlive the iteration.  Saves allocating (and faulting in the
        pages of) ~25 bytes per token every chunk; the default yields fresh arrays.
    sparse : SparseRows, optional
        The target's rows by their supports (large V, `thermospec.runs.sparse_rows`): the chains
        then run in turn on one shared cache of compact tables (`thermospec.engine.compact`), the same
        tokens as the dense tables without their O(V) work per context.
    record : bool
        False (with a `tally`): the compiled kernel only counts, and the chunks carry no step
        arrays (shape (B, 0), `BatchChunk.steps` says how many steps): what a run without
        telemetry needs, ~20 % less kernel time.  Other paths record the arrays anyway.
    moves : ndarray of int32, shape (contexts * V,), optional
        A move table (order-N contexts, `thermospec.targets.order.ContextMoves`): a chain's next
        context is ``moves[x * V + emitted]``; `row` and `drafts` are then keyed by those contexts
        (the states; ``0 .. V-1`` are the one-token ones, where ``x0 ~ pi`` starts), and ``prev``
        holds each step's state.  Not with `tally` or `sparse` (their counts are over tokens).

    Yields
    ------
    BatchChunk
    """
    if chains < 1:
        raise ValueError(f"--chains: must be an integer >= 1, got {chains}")
    V = int(pi.shape[0])
    if not record and tally is None:
        raise ValueError("run_batch: record=False needs a tally (the counts are all that is kept)")
    if tally is not None and (tally.chains, tally.vocab_size) != (chains, V):
        raise ValueError(f"tally counts ({tally.chains}, {tally.vocab_size}) chains x tokens, need ({chains}, {V})")
    if moves is not None and (tally is not None or sparse is not None):
        raise ValueError("run_batch: a move table's contexts are not tokens: no tally or compact tables with it")
    contexts = V if moves is None else moves.shape[0] // V
    source = table_source(row, drafts)
    module = resolve_backend(backend)
    n_chunk = max(1, min(steps, chunk_tokens // chains))
    stepper: ChainStepper | CompactStepper
    if sparse is not None:  # compact tables: every chain in turn through one sequential stepper
        resident = False
        stepper = CompactStepper(V, sparse.tables or compact_source(sparse.support, drafts), sparse.max_ids,
                                 sparse.max_support, backend, max_table_bytes or COMPACT_TABLE_BYTES)
    else:
        cache = TableCache(V, source, max_table_bytes or DEFAULT_TABLE_BYTES, contexts)
        resident = cache.load_all()
        if not resident:  # tables do not all fit: every chain in turn through one sequential, evicting stepper
            stepper = ChainStepper(V, source, backend, max_table_bytes or DEFAULT_TABLE_BYTES, moves)  # one cache
    compiled = module if resident else None  # the kernel, when every table is resident
    workers = max(1, min(threads or os.cpu_count() or 1, chains))
    parts = _slices(chains, max(workers, min(chains // BATCH_PART, 8 * workers)))
    # The kernel draws each chain's uniforms from its PCG64 state, found without building the streams.
    starts = chain_starts(seed, chains, pi) if compiled is not None and getattr(compiled, "PCG64", False) else None
    rngs: list[np.random.Generator] = []
    if starts is not None:
        x, states = starts
    else:
        rngs = [chain_stream(seed, b) for b in range(chains)]
        # x_0 of every chain: one uniform each, inverted on one cumulative pi (what `start_token` does per chain).
        x = inverse_cdf(np.cumsum(pi), np.array([rng.random() for rng in rngs], dtype=np.float64))
        states = None
    if compiled is not None:
        if states is None and all(draws_pcg64(compiled, rng) for rng in rngs):
            # The kernel draws each chain's uniforms from its PCG64 state (the rngs are not used again).
            states = np.stack([pcg64_state(rng) for rng in rngs])
        tracked = tally is not None and tally.transitions is not None
        scratch = _Scratch(0 if states is not None else BATCH_RNG_GROUP * n_chunk * 3, V * V if tracked else 0)
    else:
        u = np.empty((chains, n_chunk, 3), dtype=np.float64)
    kept: _Outputs | None = None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = 0
        while done < steps:
            n = min(n_chunk, steps - done)
            if compiled is not None:
                if kept is None or not reuse_outputs:
                    kept = _empty_outputs(chains * n_chunk if record else 0)
                outputs = _outputs_view(kept, chains, n if record else 0)
                if tally is not None:
                    tally.begin(x)
                _compiled_chunk(compiled, cache, rngs, scratch, x, outputs, parts, pool, tally, n, states, moves)
                if tally is not None and tally.transitions is not None:
                    for counted in scratch.pairs:
                        tally.transitions += counted
                        counted[:] = 0
            else:
                uc = u[:, :n] if n == n_chunk else np.empty((chains, n, 3), dtype=np.float64)
                for b, rng in enumerate(rngs):
                    rng.random(out=uc[b])
                if resident:
                    outputs, x = numpy_batch_steps(cache, uc, x, moves)
                else:
                    per_chain = []
                    for b in range(chains):
                        arrays, xb = stepper.steps(uc[b], int(x[b]))
                        x[b] = xb
                        per_chain.append(arrays)
                    outputs = tuple(np.stack(a) for a in zip(*per_chain, strict=True))  # type: ignore[assignment]
            prev, proposed, emitted, accepted = outputs
            chunk = BatchChunk(start=done, prev=prev, proposed=proposed, emitted=emitted, accepted=accepted,
                               steps=n if prev.shape[1] != n else None)
            if tally is not None:
                if compiled is not None:  # the kernel counted the tokens
                    tally.steps += n
                    tally.last[:] = x
                else:
                    tally.update(chunk)
            yield chunk
            done += n


def _empty_outputs(size: int) -> _Outputs:
    """Flat prev, proposed, emitted and accepted arrays of `size` tokens."""
    return (np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64),
            np.empty(size, dtype=np.bool_))


def _outputs_view(flat: _Outputs, chains: int, n: int) -> _Outputs:
    """The leading ``chains * n`` tokens of flat outputs as C-contiguous (chains, n) arrays."""
    prev, proposed, emitted, accepted = flat
    size = chains * n
    return (prev[:size].reshape(chains, n), proposed[:size].reshape(chains, n), emitted[:size].reshape(chains, n),
            accepted[:size].reshape(chains, n))


class _Scratch:
    """Each worker thread's own buffers: its uniforms (when the kernel does not draw them) and its
    transition counts (V x V, added to the tally after each chunk, `pairs`)."""

    def __init__(self, uniforms: int, transitions: int) -> None:
        self.uniforms, self.transitions = uniforms, transitions
        self.pairs: list[NDArray[np.int64]] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def mine(self) -> tuple[NDArray[np.float64], NDArray[np.int64] | None]:
        """The calling thread's uniforms buffer and transition counts (None when not counted)."""
        found: tuple[NDArray[np.float64], NDArray[np.int64] | None] | None = getattr(self._local, "found", None)
        if found is None:
            pairs = np.zeros(self.transitions, dtype=np.int64) if self.transitions else None
            if pairs is not None:
                with self._lock:
                    self.pairs.append(pairs)
            found = self._local.found = (np.empty(self.uniforms, dtype=np.float64), pairs)
        return found


def _compiled_chunk(
    module: ModuleType,
    cache: TableCache,
    rngs: list[np.random.Generator],
    scratch: _Scratch,
    x: NDArray[np.int64],
    outputs: _Outputs,
    parts: list[slice],
    pool: ThreadPoolExecutor,
    tally: BatchTally | None,
    n: int,
    states: NDArray[np.uint64] | None = None,
    moves: NDArray[np.int32] | None = None,
) -> None:
    """One chunk of every chain on the compiled kernel, into `outputs`; updates `x` and `tally`'s counts.

    The kernel adds to ``tally.accepted`` and ``tally.emitted_counts`` only: the caller brackets
    it with ``tally.begin(x)`` and ``tally.last[:] = x`` so the contexts follow from them.  When
    the tally tracks transitions, each thread also counts its steps' (context, emitted) pairs in
    its `scratch` array, which the caller adds to the tally.

    The worker threads take the `parts` (slices of chains) as they free up.  With `states` ((B, 4)
    PCG64 states, `pcg64_state`), the kernel runs once on a part, drawing its chains' uniforms
    itself and advancing their states.  Otherwise a thread steps the part `BATCH_RNG_GROUP` chains
    at a time: it draws their uniforms into its scratch buffer (which stays in cache) and runs the
    kernel on them.  A part's chains have their own rows of `x`, the outputs, the counts and the
    states.  Outputs of shape (B, 0) mean the steps are counted, not recorded (`tally` required).
    """
    prev, proposed, emitted, accepted = outputs
    record = prev.shape[1] == n

    def run(g0: int, g1: int, u: NDArray[np.float64], rng: NDArray[np.uint64] | None,
            pairs: NDArray[np.int64] | None) -> None:
        counts = (None, None, True) if tally is None else (
            tally.accepted[g0:g1], tally.emitted_counts[g0:g1] if tally.per_chain else None, record,
        )
        module.batch(
            cache.tables, cache.totals, cache.lasts, cache.slot_of, cache.guides, u, x[g0:g1],
            prev[g0:g1], proposed[g0:g1], emitted[g0:g1], accepted[g0:g1], cache.V, cache.G, g1 - g0, n, *counts,
            pairs, rng, moves,
        )

    def work(part: slice) -> None:
        buffer, pairs = scratch.mine()
        if states is not None:
            run(part.start, part.stop, _NO_UNIFORMS, states[part], pairs)
            return
        for g0 in range(part.start, part.stop, BATCH_RNG_GROUP):
            g1 = min(g0 + BATCH_RNG_GROUP, part.stop)
            block = buffer[: (g1 - g0) * n * 3].reshape(g1 - g0, n, 3)
            for j, b in enumerate(range(g0, g1)):
                rngs[b].random(out=block[j])  # numpy fills without holding the GIL
            run(g0, g1, block, None, pairs)

    for _ in pool.map(work, parts):
        pass
