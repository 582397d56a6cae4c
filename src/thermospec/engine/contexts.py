"""The order-N corpus chain: the context of a step is the last N - 1 emitted tokens (SPEC §8).

The chain starts from ``x0 ~ pi`` of the bigram chain and ``x0`` is the first
context; after each step the context becomes ``next_context(c, y)`` of the
`OrderTarget` (the longest suffix of the last N - 1 tokens the corpus has seen
followed by a token).  Drafts are one ψ per context id; the random stream is
M1's: one uniform for ``x0``, then ``(u_draft, u_accept, u_residual)`` per step.
At N = 2 every context is its last token and the chain is M1's, step for step.

`run_order_reference` is the per-step loop (``SimTSU.draw``, then
`accept_correct_step`).  `run_order_chain` runs M1's stepper (`ChainStepper`:
the compiled kernel, or its fallback) over the states of the target's move
table (`OrderTarget.moves`: the next context is ``next[state * V + token]``, one
look-up), loading a state's tables when the chain first meets it; when the move
table would exceed its memory bound it steps on per-context list tables with the
moves memoised.  `run_order_chains` runs B chains in lock step, chain b on its own
stream (`chain_stream`: chain 0 is the single-chain run).  The tests pin all of
them to the reference.
"""

from __future__ import annotations

import itertools
import os
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.core.acceptance import accept_correct_step
from thermospec.core.payload import EpsSpec
from thermospec.core.sampling import last_positive
from thermospec.engine.batch import BATCH_CHUNK_TOKENS, chain_stream
from thermospec.engine.chain import ReportError, ReportVerifier, context_tables, start_token, table_source
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.kernels import DEFAULT_TABLE_BYTES, Backend, ChainStepper, TableCache
from thermospec.engine.pcg import draws_pcg64, pcg64_state
from thermospec.engine.state_drafts import PsiSpec, StateMetrics, craft_states, worth_crafting
from thermospec.targets.order import ORDER_MOVES_BYTES, ContextMoves, OrderTarget
from thermospec.tsu.drafts import DraftSource, Proposer

__all__ = ["ORDER_TABLE_BYTES", "ContextChunk", "ContextProposer", "MovingChain", "moving_stepper", "run_order_chain",
           "run_order_chains", "run_order_reference"]

DEFAULT_CHUNK = 1 << 16
_NO_UNIFORMS = np.empty((0, 3), dtype=np.float64)
ORDER_DRAFT_BYTES = 128 * 1024 * 1024
"""Memory bound of the drafts of an order-N run (each keeps F(ψ) and its CDF: 16 V bytes)."""
ORDER_TABLE_BYTES = 128 * 1024 * 1024
"""Memory bound of the per-context list tables (about 100 bytes per entry: 3 V entries a context)."""
MAX_MOVES = 1 << 21
"""Memoised context moves kept at most (the memo is cleared beyond)."""

_ListTables = tuple[list[float], float, int, list[float], list[float], float, int]


@dataclass(frozen=True, eq=False)
class ContextChunk(ChainChunk):
    """Steps of an order-N chain: `prev` is the last emitted token, `context` the context id each step drafted in.

    On a move table crafted at once (`craft_states`), `state` is each step's state and
    `metrics` every state's draft metrics (else both None: ask the proposer).
    """

    context: NDArray[np.int64]
    state: NDArray[np.int64] | None = None
    metrics: StateMetrics | None = None


class ContextProposer(Proposer):
    """Drafts of an order-N target's context ids: M1's (`SimTSU`, F(ψ) kept), in a least-recently-used cache.

    Context ids are met on demand and never end, so the cache is bounded (about
    `max_bytes`); an evicted context is crafted again to the same bytes.
    """

    def __init__(
        self, target: OrderTarget, K: int, tau: float, eps: EpsSpec, max_bytes: int = ORDER_DRAFT_BYTES
    ) -> None:
        super().__init__(target.row, K, tau, eps)
        self.capacity = max(16, max_bytes // (1024 + 16 * target.V + 20 * min(K, target.V)))
        self._drafts = lru_cache(maxsize=self.capacity)(self.craft)


def _list_tables(target: OrderTarget, drafts: DraftSource, c: int) -> _ListTables:
    tables = context_tables(target.row(c), drafts(c))
    draft, residual = tables.draft_cdf, tables.residual_cdf
    return (draft.tolist(), float(draft[-1]), last_positive(draft), tables.ratio.tolist(),
            residual.tolist(), float(residual[-1]), last_positive(residual))


class MovingChain:
    """One order-N chain on a shared `ChainStepper` over a move table's states: chunk by chunk."""

    def __init__(self, moves: ContextMoves, stepper: ChainStepper, verifier: ReportVerifier,
                 rng: np.random.Generator, x: int, metrics: StateMetrics | None) -> None:
        self.moves, self.stepper, self.verifier, self.rng = moves, stepper, verifier, rng
        self.token = self.state = x  # one-token contexts are states 0 .. V-1
        self.metrics = metrics

    def chunk(self, start: int, n: int) -> ContextChunk:
        """The next `n` steps (checked by the verifier unless every state was crafted at once)."""
        (states, proposed, emitted, accepted), self.state = self.stepper.draw_steps(self.rng, n, self.state)
        return self.wrap(start, states, proposed, emitted, accepted)

    def wrap(self, start: int, states: NDArray[np.int64], proposed: NDArray[np.int64], emitted: NDArray[np.int64],
             accepted: NDArray[np.bool_]) -> ContextChunk:
        """The chunk of these steps (`states`: each step's state), its contexts interned as met."""
        n = states.shape[0]
        last = self.token
        prev = np.empty(n, dtype=np.int64)
        prev[0] = last
        prev[1:] = emitted[:-1]
        self.token = int(emitted[-1])
        context = self.moves.contexts(states)
        fresh = np.flatnonzero(context < 0) if self.metrics is not None else None
        if fresh is not None and fresh.size:  # states met here first: intern them in the order met
            met, first = np.unique(states[fresh], return_index=True)
            self.moves.intern(met[np.argsort(first)])
            context = self.moves.contexts(states)
        produced = ContextChunk(start=start, prev=prev, proposed=proposed, emitted=emitted, accepted=accepted,
                                context=context, state=states if self.metrics is not None else None,
                                metrics=self.metrics)
        if self.metrics is None:  # crafted at once only for the simulator, which reports log F(psi) itself
            self.verifier.verify(_by_context(produced))
        return produced


def moving_stepper(target: OrderTarget, moves: ContextMoves, drafts: DraftSource, verifier: ReportVerifier,
                    backend: Backend, max_table_bytes: int | None, psi: PsiSpec | None,
                    steps: int) -> tuple[ChainStepper, StateMetrics | None]:
    """A stepper over the move table's states, and their metrics when every state was crafted at once.

    A state's tables are its context's (interned when first met): loaded then, or all at
    once (`craft_states`) given the proposer's `psi` when the run's `steps` make it worth it.
    """
    source = verifier.watched(table_source(target.row, drafts))

    def state_tables(state: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        return source(moves.context(state))

    stepper = ChainStepper(target.V, state_tables, backend, max_table_bytes or DEFAULT_TABLE_BYTES, moves=moves.next)
    if psi is None or stepper.cache is None or not worth_crafting(moves, steps):
        return stepper, None
    return stepper, craft_states(moves, psi, drafts, stepper.cache)


def run_order_chain(
    target: OrderTarget,
    drafts: DraftSource,
    steps: int,
    rng: np.random.Generator,
    chunk: int = DEFAULT_CHUNK,
    max_table_bytes: int | None = None,
    backend: Backend = "auto",
    max_moves_bytes: int = ORDER_MOVES_BYTES,
    psi: PsiSpec | None = None,
) -> Iterator[ContextChunk]:
    """Run the order-N chain for `steps` steps, yielding chunks (the same tokens as `run_order_reference`).

    Parameters
    ----------
    target, drafts, steps, rng
        As `run_order_reference`.
    chunk : int
        Steps per chunk.
    max_table_bytes : int, optional
        Memory bound of the per-context tables (default: the stepper's, or `ORDER_TABLE_BYTES` for lists).
    backend : {"auto", "compiled", "python"}
        The stepper's backend (on the move table).
    max_moves_bytes : int
        Memory bound of the move table; above it, the per-step Python loop on list tables.
    psi : (K, tau, eps), optional
        The drafts' ψ parameters: given, every state may be crafted at once (`craft_states`;
        the chunks then carry the states' metrics).

    Raises
    ------
    ReportError
        A draft whose reported ``log q`` is not ``log F(ψ)`` (checked before a chunk leaves).
    """
    moves = target.moves(max_moves_bytes)
    if moves is None:
        return _list_chain(target, drafts, steps, rng, chunk, max_table_bytes or ORDER_TABLE_BYTES)
    return _moving_chain(target, moves, drafts, steps, rng, chunk, backend, max_table_bytes, psi)


def _moving_chain(target: OrderTarget, moves: ContextMoves, drafts: DraftSource, steps: int,
                  rng: np.random.Generator, chunk: int, backend: Backend,
                  max_table_bytes: int | None, psi: PsiSpec | None) -> Iterator[ContextChunk]:
    verifier = ReportVerifier(drafts)
    stepper, metrics = moving_stepper(target, moves, drafts, verifier, backend, max_table_bytes, psi, steps)
    chain = MovingChain(moves, stepper, verifier, rng, start_token(target.pi, rng), metrics)
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        yield chain.chunk(done, n)
        done += n


def run_order_chains(
    target: OrderTarget,
    drafts: DraftSource,
    steps: int,
    seed: int,
    chains: int,
    chunk: int = DEFAULT_CHUNK,
    max_table_bytes: int | None = None,
    backend: Backend = "auto",
    max_moves_bytes: int = ORDER_MOVES_BYTES,
    psi: PsiSpec | None = None,
) -> Iterator[list[ContextChunk]]:
    """Run `chains` order-N chains in lock step, chunk by chunk: one list of per-chain chunks per chunk.

    Chain b draws from `chain_stream` (seed, b), its ``x0`` first, so chain 0 is the
    single-chain run on ``random_stream(seed, CHAIN)`` step for step.  The chains share
    one table cache and move table; each runs its chunk on the sequential stepper in turn
    (its tables load as it meets new contexts).

    Raises
    ------
    ValueError
        `chains` < 1.
    ReportError
        As `run_order_chain`.
    """
    if chains < 1:
        raise ValueError(f"--chains: must be an integer >= 1, got {chains}")
    rngs = [chain_stream(seed, b) for b in range(chains)]
    moves = target.moves(max_moves_bytes)
    if moves is None:  # too many contexts for a move table: each chain on list tables
        runs = [_list_chain(target, drafts, steps, rng, chunk, max_table_bytes or ORDER_TABLE_BYTES)
                for rng in rngs]
        yield from (list(chunks) for chunks in zip(*runs, strict=True))
        return
    verifier = ReportVerifier(drafts)
    stepper, metrics = moving_stepper(target, moves, drafts, verifier, backend, max_table_bytes, psi,
                                       steps * chains)
    walkers = [MovingChain(moves, stepper, verifier, rng, start_token(target.pi, rng), metrics) for rng in rngs]
    module, cache = stepper.module, stepper.cache
    if metrics is not None and module is not None and cache is not None and all(draws_pcg64(module, r) for r in rngs):
        # Every state's tables are loaded: the batch kernel steps the chains in lock step, on worker threads.
        yield from _lock_step(walkers, module, cache, metrics, steps, min(chunk, max(1, BATCH_CHUNK_TOKENS // chains)))
        return
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        yield [walker.chunk(done, n) for walker in walkers]
        done += n


def _lock_step(walkers: list[MovingChain], module: ModuleType, cache: TableCache, metrics: StateMetrics,
               steps: int, chunk: int) -> Iterator[list[ContextChunk]]:
    """The chains of `walkers` (each at its start) on the batch kernel, each drawing from its own PCG64 state."""
    moves, B = walkers[0].moves, len(walkers)
    states = np.stack([pcg64_state(w.rng) for w in walkers])
    x = np.array([w.state for w in walkers], dtype=np.int64)
    workers = max(1, min(os.cpu_count() or 1, B))
    edges = np.linspace(0, B, workers + 1).round().astype(int).tolist()
    parts = [slice(a, b) for a, b in itertools.pairwise(edges) if b > a]
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        done = 0
        while done < steps:
            n = min(chunk, steps - done)
            out = (np.empty((B, n), dtype=np.int64), np.empty((B, n), dtype=np.int64),
                   np.empty((B, n), dtype=np.int64), np.empty((B, n), dtype=np.bool_))

            def work(part: slice, n: int = n, out: tuple[NDArray[Any], ...] = out) -> None:
                module.batch(cache.tables, cache.totals, cache.lasts, cache.slot_of, cache.guides, _NO_UNIFORMS,
                             x[part], *(a[part] for a in out), cache.V, cache.G, part.stop - part.start, n,
                             None, None, 1, None, states[part], moves.next)

            list(pool.map(work, parts))
            produced = []
            for b, walker in enumerate(walkers):  # in chain order: contexts are interned as the chains meet them
                produced.append(walker.wrap(done, out[0][b], out[1][b], out[2][b], out[3][b]))
                walker.state = int(x[b])
            yield produced
            done += n


def _list_chain(
    target: OrderTarget,
    drafts: DraftSource,
    steps: int,
    rng: np.random.Generator,
    chunk: int,
    max_table_bytes: int,
) -> Iterator[ContextChunk]:
    """The chain on per-context Python list tables, the moves memoised (when the move table is too large)."""
    V = target.V
    capacity = max(16, max_table_bytes // (100 * 3 * V + 200))
    tables: OrderedDict[int, _ListTables] = OrderedDict()
    moves: dict[int, int] = {}
    verifier = ReportVerifier(drafts)
    x = start_token(target.pi, rng)
    c = target.context_id([x])
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        prev, context, proposed, emitted, accepted = [0] * n, [0] * n, [0] * n, [0] * n, [False] * n
        for i, (u_draft, u_accept, u_residual) in enumerate(rng.random((n, 3)).tolist()):
            tb = tables.get(c)
            if tb is None:
                tb = tables[c] = _list_tables(target, drafts, c)
                if len(tables) > capacity:
                    tables.popitem(last=False)
            draft, draft_total, draft_last, ratio, res, res_total, res_last = tb
            y = min(bisect_right(draft, u_draft * draft_total), draft_last)
            prev[i], context[i], proposed[i] = x, c, y
            if u_accept < ratio[y]:
                accepted[i] = True
                x = y
            else:
                x = min(bisect_right(res, u_residual * res_total), res_last)
            emitted[i] = x
            key = c * V + x
            nxt = moves.get(key)
            if nxt is None:
                if len(moves) >= MAX_MOVES:
                    moves.clear()
                nxt = moves[key] = target.next_context(c, x)
            c = nxt
        produced = ContextChunk(
            start=done, prev=np.array(prev, dtype=np.int64), proposed=np.array(proposed, dtype=np.int64),
            emitted=np.array(emitted, dtype=np.int64), accepted=np.array(accepted, dtype=np.bool_),
            context=np.array(context, dtype=np.int64),
        )
        verifier.verify(_by_context(produced))
        yield produced
        done += n


def _by_context(chunk: ContextChunk) -> ChainChunk:
    """The chunk keyed by context id, as `ReportVerifier` reads it."""
    return ChainChunk(start=chunk.start, prev=chunk.context, proposed=chunk.proposed, emitted=chunk.emitted,
                      accepted=chunk.accepted)


def run_order_reference(
    target: OrderTarget, drafts: DraftSource, steps: int, rng: np.random.Generator
) -> ContextChunk:
    """The order-N chain step by step: ``x0 ~ pi``; per step the TSU of the context drafts, the host corrects."""
    x = start_token(target.pi, rng)
    c = target.context_id([x])
    prev, context, proposed, emitted, accepted = [], [], [], [], []
    for step in range(steps):
        tsu = drafts(c).tsu
        y, log_q = tsu.draw(rng)
        with np.errstate(divide="ignore"):
            expected = float(np.log(tsu.q[y]))
        if log_q != expected or not tsu.q[y] > 0:
            raise ReportError(step, c, y, log_q, expected)
        e, a = accept_correct_step(target.row(c), tsu.q, y, rng)
        prev.append(x)
        context.append(c)
        proposed.append(y)
        emitted.append(e)
        accepted.append(a)
        x = e
        c = target.next_context(c, e)
    return ContextChunk(
        start=0, prev=np.array(prev, dtype=np.int64), proposed=np.array(proposed, dtype=np.int64),
        emitted=np.array(emitted, dtype=np.int64), accepted=np.array(accepted, dtype=np.bool_),
        context=np.array(context, dtype=np.int64),
    )
