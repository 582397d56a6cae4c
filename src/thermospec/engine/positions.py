"""Teacher-forced runs over the positions of a trace: step s drafts and corrects at position ``s mod T``.

A trace target (`targets.trace`) is indexed by position, not by the previous
token: the emitted token never feeds back, there is no ``x0`` and no pi.  Step s
uses position ``t = s mod T``: the TSU programmed with ψ_t drafts ``y ~ F(ψ_t)``
and the exact accept/correct step emits a token distributed as ``p_t``.

Random stream layout, as M1's chain without its start uniform: exactly three
float64 uniforms per step, ``(u_draft, u_accept, u_residual)``, the residual one
consumed even when the draft is accepted.  `run_positions_reference` is the
plain per-step loop (``SimTSU.draw``, then `accept_correct_step` with ``q = F``
of the decoded payload); `run_positions` is the fast one and emits the same
tokens (the tests pin it):

- each position's ψ is crafted once (`targets.trace_rows.craft_position`: O(V), no sort,
  no V-sized float64 array), and kept with its metrics but no V-sized array (`PositionProposer`);
- since the position of every step is known in advance, a block of steps is
  processed position by position, vectorised: each position's step tables
  (`VectorCompactTables`: the draft CDF over the K ids, in closed form between them,
  and the residual's running sum over its positive entries) are built at most
  once per block and kept up to a byte bound; the acceptance ratio
  ``p(y) / q(y)`` reads the target row (the trace's own row cache);
- every value is the same IEEE operation on the same operands as in the dense
  tables (`engine.chain.context_tables`), so the same uniforms emit the same
  tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from thermospec.core.acceptance import accept_correct_step, residual
from thermospec.core.payload import EpsSpec, Payload, PayloadError
from thermospec.engine.chain import ReportError, ReportVerifier
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.compact import compact_tables
from thermospec.engine.step import VectorCompactTables, vector_compact_steps
from thermospec.targets.trace import PositionTarget
from thermospec.targets.trace_rows import RowValues, craft_position, p_at, residual_support, row_into
from thermospec.tsu.bounded import DRAFT_CACHE_BYTES, CompactTSU
from thermospec.tsu.drafts import ContextDraft, DraftSource, Proposer

__all__ = [
    "POSITION_TABLE_BYTES",
    "PositionChunk",
    "PositionProposer",
    "VectorCompactTables",
    "block_steps",
    "position_tables",
    "run_positions",
    "run_positions_reference",
]

DEFAULT_CHUNK = 1 << 16
"""Steps per yielded chunk (what telemetry formats at a time)."""
POSITION_TABLE_BYTES = 256 * 1024 * 1024
"""Memory bound of the cache of per-position step tables."""
MAX_BLOCK = 1 << 20
"""Most steps computed at once (their uniforms and outputs: about 50 MB)."""
STEPS_PER_POSITION = 1024
"""A block holds about this many steps of each position, so that building a position's tables is amortised."""
CRAFT_THREADS = min(4, os.cpu_count() or 1)
"""Threads crafting ψ of the positions ahead (`PositionProposer.craft_ahead`)."""
CRAFT_AHEAD = 64
"""Positions crafted at a time ahead of the steps that need them (at most half the draft cache: `craft_ahead`).
Each batch ends with the threads waiting for the last position; 64 rather than 16 pays that wait a quarter
as often (V = 131,072, 2 threads: ~5,400 -> ~6,300 positions/s)."""


@dataclass(frozen=True, eq=False)
class PositionChunk(ChainChunk):
    """Consecutive steps of a trace run: a `ChainChunk` whose context (`prev`) is each step's position."""

    @property
    def position(self) -> NDArray[np.int64]:
        """The position of each step, ``step mod T``."""
        return self.prev


class PositionProposer(Proposer):
    """ψ per position, crafted in O(V) (`targets.trace_rows.craft_position`), kept with its metrics, no V-sized array.

    The payload bytes are those `craft_payload` would craft from the whole row;
    ``topk_mass``, ``overlap_mass`` and ``ce_gap_nats`` are `core.metrics` of the
    row and of F(ψ) of the decoded payload, exactly as `draft_for_row` computes
    them.  Drafts live in a least-recently-used cache of about `max_bytes`.
    """

    def __init__(self, target: PositionTarget, K: int, tau: float, eps: EpsSpec,
                 max_bytes: int = DRAFT_CACHE_BYTES, K_of: Callable[[int], int] | None = None) -> None:
        super().__init__(target.row, K, tau, eps, K_of=K_of)
        self.target = target
        self.capacity = max(16, max_bytes // (1024 + 20 * min(K, target.V)))
        self._drafts = lru_cache(maxsize=self.capacity)(self.craft)
        self._pool: ThreadPoolExecutor | None = None

    def craft_ahead(self, positions: Sequence[int]) -> None:
        """Craft the drafts of `positions` into the cache on `CRAFT_THREADS` threads (the passes over V free the GIL).

        The threads take the positions from one shared iterator, each the next one left when it is done
        with its last (a thread the system holds back does not hold the others up).  Each draft is the
        one `draft` would craft; only when they are made changes.
        """
        positions = positions[: max(1, self.capacity // 2)]  # crafted ahead, still cached when the steps come
        if len(positions) < 2 or CRAFT_THREADS < 2:
            for t in positions:
                self.draft(t)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(CRAFT_THREADS, thread_name_prefix="thermospec-craft")
        pending = iter(positions)  # next() on it is one step under the GIL: each position is taken once
        for _ in self._pool.map(self._craft_from, [pending] * min(CRAFT_THREADS, len(positions))):
            pass

    def _craft_from(self, pending: Iterator[int]) -> None:
        for t in pending:
            self.draft(t)

    def craft(self, context: int) -> ContextDraft:
        """Craft position `context`'s draft (no cache): `targets.trace_rows.craft_position` on its row."""
        try:
            K = self.K if self.K_of is None else self.K_of(context)  # --psi-budget: K per position
            made = craft_position(self.target.row_values(context), K, self.tau, self.eps)
        except PayloadError as exc:
            raise PayloadError(f"ψ of position {context}: {exc}") from None
        return ContextDraft(context=context, payload_bytes=made.wire, tsu=CompactTSU(made.payload),
                            topk_mass=made.topk_mass, overlap_mass=made.overlap_mass, ce_gap_nats=made.ce_gap_nats)


def position_tables(p: NDArray[np.float64] | RowValues, payload: Payload) -> VectorCompactTables:
    """Build one position's tables from its target row and the decoded payload its TSU runs on.

    A float16 trace row (`targets.trace_rows.RowValues`) is read by its codes, without its dense p:
    the same tables (`targets.trace_rows.residual_support` is the pass below, in C).
    """
    ids_sorted = np.sort(np.asarray(payload.ids, dtype=np.int64))
    if isinstance(p, RowValues):
        draft = compact_tables(ids_sorted, p_at(p, ids_sorted), payload)
        found = residual_support(p, draft.eps, draft.ids, draft.q)
        if found is None:
            return position_tables(p.p, payload)
        tokens, at = found
        return VectorCompactTables(
            vocab_size=payload.vocab_size, ids=draft.ids, id_cdf=draft.id_cdf, explicit_cum=draft.explicit_cum,
            eps=draft.eps, draft_total=draft.draft_total, draft_last=draft.draft_last, q_ids=draft.q,
            residual_tokens=tokens, residual_cum=at, residual_last=int(np.searchsorted(at, at[-1], side="left")),
        )
    draft = compact_tables(ids_sorted, p[ids_sorted], payload)  # its draft half; ids have p > 0
    # The residual p - min(p, q) is exactly 0 where q >= p and positive where p > q, and np.cumsum
    # accumulates in order, so its running sum over the tokens of p > q is the dense one's there.
    above = p > draft.eps
    above[draft.ids] = p[draft.ids] > draft.q
    tokens = np.flatnonzero(above)
    q = np.full(tokens.shape[0], draft.eps)
    sent = np.searchsorted(tokens, draft.ids)
    on_id = sent < tokens.shape[0]
    on_id[on_id] = tokens[sent[on_id]] == draft.ids[on_id]
    q[sent[on_id]] = draft.q[on_id]
    at = np.cumsum(residual(p[tokens], q)) if tokens.shape[0] else np.zeros(0)
    if not (at.shape[0] and at[-1] > 0):  # p = q to rounding: a rejection has probability ~0; draw from p
        tokens = np.flatnonzero(p)
        at = np.cumsum(p[tokens])
    tokens = tokens.astype(np.int64)
    return VectorCompactTables(
        vocab_size=payload.vocab_size, ids=draft.ids, id_cdf=draft.id_cdf, explicit_cum=draft.explicit_cum,
        eps=draft.eps, draft_total=draft.draft_total, draft_last=draft.draft_last, q_ids=draft.q,
        residual_tokens=tokens, residual_cum=at, residual_last=int(np.searchsorted(at, at[-1], side="left")),
    )


class _TableCache:
    """Per-position tables up to `max_bytes`; beyond, the others are built each time they are needed.

    A run visits positions cyclically, so evicting the least recently used table
    would never hit once T tables exceed the bound: the tables already held are kept.
    """

    def __init__(self, target: PositionTarget, drafts: DraftSource, max_bytes: int) -> None:
        self.target, self.drafts, self.max_bytes = target, drafts, max_bytes
        self.tables: dict[int, VectorCompactTables] = {}
        self.nbytes = 0
        self.builds = 0

    def get(self, t: int) -> VectorCompactTables:
        found = self.tables.get(t)
        if found is not None:
            return found
        draft = self.drafts(t)
        if not type(draft.tsu).samples_payload:
            raise TypeError(f"position {t}: {type(draft.tsu).__name__} does not sample F(ψ); use the reference")
        found = position_tables(self.target.row_values(t), draft.tsu.payload)
        self.builds += 1
        if self.nbytes + found.nbytes <= self.max_bytes:
            self.tables[t] = found
            self.nbytes += found.nbytes
        return found


def block_steps(positions: int, chunk: int = DEFAULT_CHUNK) -> int:
    """Steps computed at once: about `STEPS_PER_POSITION` per position, at least `chunk`, at most `MAX_BLOCK`."""
    return max(chunk, min(MAX_BLOCK, positions * STEPS_PER_POSITION))


def run_positions(
    target: PositionTarget,
    drafts: DraftSource,
    steps: int,
    rng: np.random.Generator,
    chunk: int = DEFAULT_CHUNK,
    max_table_bytes: int = POSITION_TABLE_BYTES,
    ahead: Callable[[Sequence[int]], None] | None = None,
) -> Iterator[PositionChunk]:
    """Run `steps` teacher-forced steps (step s at position ``s mod T``), yielding chunks of `chunk` steps.

    Parameters
    ----------
    target : PositionTarget
        The trace.
    drafts : callable
        ``drafts(t)``: position t's (cached) draft; its TSU must sample F(ψ) of its payload.
    steps : int
        Emitted tokens.
    rng : numpy.random.Generator
        The run's stream: three uniforms per step, in step order.
    chunk : int
        Steps per yielded chunk.
    max_table_bytes : int
        Memory bound of the per-position table cache.
    ahead : callable, optional
        ``ahead(positions)``: craft these positions' drafts now, together (`PositionProposer.craft_ahead`);
        the tokens are the same with or without it.

    Raises
    ------
    ReportError
        A draft whose reported ``log q`` is not ``log F(ψ)`` (checked before a chunk leaves).
    """
    T = target.positions
    cache = _TableCache(target, drafts, max_table_bytes)
    verifier = ReportVerifier(drafts)
    block = block_steps(T, chunk)
    dense = np.empty(target.V, dtype=np.float64)  # each position's row, written in turn (no fresh V-sized array)
    done = 0
    while done < steps:
        n = min(block, steps - done)
        u = rng.random((n, 3))
        position = (np.arange(done, done + n, dtype=np.int64)) % T
        proposed = np.empty(n, dtype=np.int64)
        emitted = np.empty(n, dtype=np.int64)
        accepted = np.empty(n, dtype=np.bool_)
        for i in range(min(T, n)):
            t = (done + i) % T
            if ahead is not None and i % CRAFT_AHEAD == 0:
                ahead([(t + j) % T for j in range(min(CRAFT_AHEAD, min(T, n) - i))])
            tables = cache.get(t)
            row = row_into(target.row_values(t), dense)
            proposed[i::T], emitted[i::T], accepted[i::T] = vector_compact_steps(tables, row, u[i::T])
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            produced = PositionChunk(start=done + start, prev=position[part], proposed=proposed[part],
                                     emitted=emitted[part], accepted=accepted[part])
            verifier.verify(produced)
            yield produced
        done += n


def run_positions_reference(
    target: PositionTarget, drafts: DraftSource, steps: int, rng: np.random.Generator
) -> PositionChunk:
    """The teacher-forced run step by step: the tests pin `run_positions` to it.

    Each step: the TSU of position ``s mod T`` draws ``y`` and reports ``log q(y)``;
    the host checks the report against F(ψ), then calls `accept_correct_step`
    with the row and the q the draft really came from.
    """
    T = target.positions
    proposed, emitted, accepted = [], [], []
    for step in range(steps):
        t = step % T
        tsu = drafts(t).tsu
        y, log_q = tsu.draw(rng)
        q = tsu.q
        with np.errstate(divide="ignore"):
            expected = float(np.log(q[y]))
        if log_q != expected or not q[y] > 0:
            raise ReportError(step, t, y, log_q, expected)
        e, a = accept_correct_step(target.row(t), q, y, rng)
        proposed.append(y)
        emitted.append(e)
        accepted.append(a)
    return PositionChunk(
        start=0, prev=np.arange(steps, dtype=np.int64) % T, proposed=np.array(proposed, dtype=np.int64),
        emitted=np.array(emitted, dtype=np.int64), accepted=np.array(accepted, dtype=np.bool_),
    )
