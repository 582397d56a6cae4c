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
worker threads, or, without it, a vectorised NumPy binary search steps all
chains at once (`numpy_batch_steps`).  Both need every context's table
resident (true up to V of several thousand with the default memory bound);
otherwise each chain runs through the sequential stepper.
"""

from __future__ import annotations

import io
import itertools
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from thermospec.compact import COMPACT_TABLE_BYTES, CompactStepper, SparseRows, compact_source
from thermospec.config import Stream, random_stream
from thermospec.engine import ChainChunk, DraftSource, RowSource, _table_source
from thermospec.kernels import DEFAULT_TABLE_BYTES, Backend, ChainStepper, TableCache, resolve_backend
from thermospec.sampling import inverse_cdf
from thermospec.summary import TRANSITION_MAX_V, RunTally, summarise_run
from thermospec.telemetry import PARQUET_FILE, JsonlWriter, ParquetWriter, TelemetryFormat

if TYPE_CHECKING:
    from thermospec.runs import PreparedRun

__all__ = [
    "BATCH_CHUNK_TOKENS",
    "BatchChunk",
    "BatchTally",
    "chain_dir",
    "chain_stream",
    "execute_batch",
    "numpy_batch_steps",
    "run_batch",
]

BATCH_CHUNK_TOKENS = 1 << 20
"""Tokens (chains x steps) per chunk: bounds the uniforms and outputs held at once (~50 MB)."""

BATCH_RNG_GROUP = 32
"""Chains whose uniforms a worker thread draws at once before stepping them (a cache-sized block)."""


def chain_stream(seed: int, b: int) -> np.random.Generator:
    """The random stream of chain `b`: chain 0 is the single-chain run's stream."""
    if b < 0:
        raise ValueError(f"chain index must be >= 0, got {b}")
    return random_stream(seed, Stream.CHAIN) if b == 0 else random_stream(seed, Stream.CHAIN, b)


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


def _vector_bisect_right(
    flat: NDArray[np.float64], base: NDArray[np.int64], n: int, target: NDArray[np.float64]
) -> NDArray[np.int64]:
    """``bisect_right(flat[base[i] : base[i] + n], target[i])`` for every i, vectorised."""
    lo = np.zeros(base.shape[0], dtype=np.int64)
    length = np.full(base.shape[0], n, dtype=np.int64)
    while True:
        live = length > 0
        if not live.any():
            return lo
        half = length >> 1
        mid = lo + half
        go = live & (flat[base + np.minimum(mid, n - 1)] <= target)
        lo = np.where(go, mid + 1, lo)
        length = np.where(go, length - half - 1, np.where(live, half, 0))


def numpy_batch_steps(
    cache: TableCache, u: NDArray[np.float64], x: NDArray[np.int64]
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
        base = s * (3 * V)
        y = _vector_bisect_right(flat, base, V, u[:, t, 0] * cache.totals[s, 0])
        np.minimum(y, cache.lasts[s, 0], out=y)
        ok = u[:, t, 1] < flat[base + V + y]
        r = _vector_bisect_right(flat, base + 2 * V, V, u[:, t, 2] * cache.totals[s, 1])
        np.minimum(r, cache.lasts[s, 1], out=r)
        prev[:, t] = x
        proposed[:, t] = y
        accepted[:, t] = ok
        x = np.where(ok, y, r)
        emitted[:, t] = x
    return (prev, proposed, emitted, accepted), x


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
        then run in turn on one shared cache of compact tables (`thermospec.compact`), the same
        tokens as the dense tables without their O(V) work per context.
    record : bool
        False (with a `tally`): the compiled kernel only counts, and the chunks carry no step
        arrays (shape (B, 0), `BatchChunk.steps` says how many steps): what a run without
        telemetry needs, ~20 % less kernel time.  Other paths record the arrays anyway.

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
    rngs = [chain_stream(seed, b) for b in range(chains)]
    # x_0 of every chain: one uniform each, inverted on one cumulative pi (what `start_token` does per chain).
    x = inverse_cdf(np.cumsum(pi), np.array([rng.random() for rng in rngs], dtype=np.float64))
    source = _table_source(row, drafts)
    module = resolve_backend(backend)
    n_chunk = max(1, min(steps, chunk_tokens // chains))
    stepper: ChainStepper | CompactStepper
    if sparse is not None:  # compact tables: every chain in turn through one sequential stepper
        resident = False
        stepper = CompactStepper(V, sparse.tables or compact_source(sparse.support, drafts), sparse.max_ids,
                                 sparse.max_support, backend, max_table_bytes or COMPACT_TABLE_BYTES)
    else:
        cache = TableCache(V, source, max_table_bytes or DEFAULT_TABLE_BYTES)
        resident = cache.load_all()
        if not resident:  # tables do not all fit: every chain in turn through one sequential, evicting stepper
            stepper = ChainStepper(V, source, backend, max_table_bytes or DEFAULT_TABLE_BYTES)  # one shared cache
    compiled = module if resident else None  # the kernel, when every table is resident
    workers = max(1, min(threads or os.cpu_count() or 1, chains))
    parts = _slices(chains, workers)
    if compiled is not None:  # each thread fills its uniforms a group of chains at a time, in a buffer of its own
        u_flat = [np.empty(min(BATCH_RNG_GROUP, p.stop - p.start) * n_chunk * 3, dtype=np.float64) for p in parts]
        # and counts the transitions of its chains in an array of its own, added to the tally after each chunk
        tracked = tally is not None and tally.transitions is not None
        pairs = [np.zeros(V * V, dtype=np.int64) for _ in parts] if tracked else None
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
                    tally._begin(x)
                _compiled_chunk(compiled, cache, rngs, u_flat, x, outputs, parts, pool, tally, n, pairs)
                if pairs is not None and tally is not None and tally.transitions is not None:
                    for counted in pairs:
                        tally.transitions += counted
                        counted[:] = 0
            else:
                uc = u[:, :n] if n == n_chunk else np.empty((chains, n, 3), dtype=np.float64)
                for b, rng in enumerate(rngs):
                    rng.random(out=uc[b])
                if resident:
                    outputs, x = numpy_batch_steps(cache, uc, x)
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


def _compiled_chunk(
    module: ModuleType,
    cache: TableCache,
    rngs: list[np.random.Generator],
    u_flat: list[NDArray[np.float64]],
    x: NDArray[np.int64],
    outputs: _Outputs,
    parts: list[slice],
    pool: ThreadPoolExecutor,
    tally: BatchTally | None,
    n: int,
    pairs: list[NDArray[np.int64]] | None = None,
) -> None:
    """One chunk of every chain on the compiled kernel, into `outputs`; updates `x` and `tally`'s counts.

    The kernel adds to ``tally.accepted`` and ``tally.emitted_counts`` only: the caller brackets
    it with ``tally._begin(x)`` and ``tally.last[:] = x`` so the contexts follow from them.  With
    `pairs` (one V x V array per thread) the kernel also counts each step's (context, emitted) pair.

    Thread i steps the chains of ``parts[i]``, `BATCH_RNG_GROUP` at a time: it draws their
    uniforms into ``u_flat[i]`` (which stays in cache) and runs the kernel on them.  Each thread
    writes only its own chains' rows of `x`, the outputs and the counts.  Outputs of
    shape (B, 0) mean the steps are counted, not recorded (`tally` required).
    """
    prev, proposed, emitted, accepted = outputs
    record = prev.shape[1] == n

    def work(i: int) -> None:
        part = parts[i]
        for g0 in range(part.start, part.stop, BATCH_RNG_GROUP):
            g1 = min(g0 + BATCH_RNG_GROUP, part.stop)
            block = u_flat[i][: (g1 - g0) * n * 3].reshape(g1 - g0, n, 3)
            for j, b in enumerate(range(g0, g1)):
                rngs[b].random(out=block[j])  # numpy fills without holding the GIL
            counts = () if tally is None else (
                tally.accepted[g0:g1], tally.emitted_counts[g0:g1] if tally.per_chain else None, record,
                None if pairs is None else pairs[i],
            )
            module.batch(
                cache.tables, cache.totals, cache.lasts, cache.slot_of, cache.guides, block, x[g0:g1],
                prev[g0:g1], proposed[g0:g1], emitted[g0:g1], accepted[g0:g1], cache.V, cache.G, g1 - g0, n, *counts,
            )

    for future in [pool.submit(work, i) for i in range(len(parts))]:
        future.result()


class BatchTally:
    """Per-chain counts of a batch, updated chunk by chunk with one `bincount` per array.

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

    def _begin(self, first: NDArray[np.int64]) -> None:
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
        self._begin(chunk.prev[:, 0])
        self.steps += len(chunk)
        self.accepted += np.count_nonzero(chunk.accepted, axis=1)
        if self.per_chain:
            self.emitted_counts += self._counts(chunk.emitted)
        self.last[:] = chunk.emitted[:, -1]
        if self.transitions is not None:
            V = self.vocab_size
            self.transitions += np.bincount((chunk.prev * V + chunk.emitted).ravel(), minlength=V * V)

    def chain(self, b: int) -> RunTally:
        """Chain b's counts as a `thermospec.summary.RunTally`."""
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


def chain_dir(run_dir: Path, b: int) -> Path:
    """Folder of chain b's telemetry and summary."""
    return run_dir / f"chain_{b:04d}"


def execute_batch(
    run: PreparedRun,
    run_dir: Path,
    chains: int,
    telemetry: TelemetryFormat = "jsonl",
    threads: int | None = None,
) -> dict[str, Any]:
    """Run `chains` chains of ``run.config.steps`` steps each; write telemetry and summaries.

    Files: with ``--telemetry jsonl``, ``chain_<b>/m1_metrics.jsonl`` and
    ``chain_<b>/summary.json`` per chain (chain 0's JSONL is byte for byte the
    single-chain run's); with ``parquet``, one ``m1_metrics.parquet`` with a
    leading ``chain`` column, and per-chain summaries; with ``none``, only the
    batch summary.  ``summary.json`` holds the pooled statistics of all chains
    (χ² of the pooled emitted counts against ``B N pi``), the spread of the
    per-chain acceptance, and the throughput.

    Returns
    -------
    dict
        The batch summary, as written.
    """
    from thermospec.interrupts import interruption_guard, signal_name
    from thermospec.runs import (
        METRICS_FILE,
        SUMMARY_FILE,
        software_versions,
        sparse_rows,
        target_description,
        write_json_atomic,
    )

    config, target = run.config, run.target
    drafts = run.proposer.draft
    started = time.perf_counter()
    tally = BatchTally(chains, target.V, track_transitions=True, per_chain=telemetry != "none")
    formatter = JsonlWriter(io.StringIO())
    parquet: ParquetWriter | None = None
    if telemetry != "none":
        for b in range(chains):
            chain_dir(run_dir, b).mkdir()
    if telemetry == "jsonl":
        for b in range(chains):
            (chain_dir(run_dir, b) / METRICS_FILE).touch()
    elif telemetry == "parquet":
        parquet = ParquetWriter(run_dir / PARQUET_FILE, chain_column=True)
    # A signal only stops the loop once every chain's records of the chunk in hand are written.
    with interruption_guard() as stop:
        try:
            # The writers below keep no reference to a chunk's arrays, so the chunks can share them.
            for chunk in run_batch(target.row, target.pi, drafts, config.steps, config.seed, chains, threads=threads,
                                   tally=tally, reuse_outputs=True, sparse=sparse_rows(run),
                                   record=telemetry != "none"):
                if telemetry == "jsonl":
                    for b in range(chains):
                        with (chain_dir(run_dir, b) / METRICS_FILE).open("a", encoding="utf-8", newline="\n") as out:
                            out.write(formatter.format(chunk.chain(b), drafts))
                elif parquet is not None:
                    for b in range(chains):
                        parquet.write(chunk.chain(b), drafts, chain=b)
                if stop.requested:
                    break
        finally:
            if parquet is not None:
                parquet.close()
    interrupted = {
        "interrupted": stop.signum is not None,
        "interrupted_by": signal_name(stop.signum) if stop.signum is not None else None,
        "versions": software_versions(),
    }
    if tally.steps == 0:  # stopped before the first chunk: nothing to aggregate
        empty = {"steps": 0, "chains": chains, "config": {**config.as_dict(), "K_used": run.K_used, "chains": chains},
                 "target": target_description(run), "telemetry": telemetry, **interrupted}
        write_json_atomic(run_dir / SUMMARY_FILE, empty)
        return empty
    engine_elapsed = time.perf_counter() - started
    if telemetry != "none":
        for b in range(chains):
            chain_summary = summarise_run(tally.chain(b), drafts, target.pi)
            chain_summary["chain"] = b
            write_json_atomic(chain_dir(run_dir, b) / SUMMARY_FILE, chain_summary)
    pooled = summarise_run(tally.pooled(), drafts, target.pi, row=target.row)
    rates = tally.accepted / tally.steps
    elapsed = time.perf_counter() - started
    summary: dict[str, Any] = {
        **pooled,
        "chains": chains,
        "steps_per_chain": tally.steps,
        "chain_accept_rate_min": float(rates.min()),
        "chain_accept_rate_mean": float(rates.mean()),
        "chain_accept_rate_max": float(rates.max()),
        "elapsed_s": elapsed,
        "tokens_per_s": tally.steps * chains / engine_elapsed if engine_elapsed > 0 else None,
        "config": {**config.as_dict(), "K_used": run.K_used, "chains": chains},
        "target": target_description(run),
        "telemetry": telemetry,
        "streams": "chain 0: random_stream(seed, CHAIN) (the single-chain run); chain b: random_stream(seed, CHAIN, b)",
        **interrupted,
    }
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    return summary
