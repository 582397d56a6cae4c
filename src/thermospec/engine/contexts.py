"""The order-N corpus chain: the context of a step is the last N - 1 emitted tokens (SPEC §8).

The chain starts from ``x0 ~ pi`` of the bigram chain and ``x0`` is the first
context; after each step the context becomes ``next_context(c, y)`` of the
`OrderTarget` (the longest suffix of the last N - 1 tokens the corpus has seen
followed by a token).  Drafts are one ψ per context id; the random stream is
M1's: one uniform for ``x0``, then ``(u_draft, u_accept, u_residual)`` per step.
At N = 2 every context is its last token and the chain is M1's, step for step.

`run_order_reference` is the per-step loop (``SimTSU.draw``, then
`accept_correct_step`); `run_order_chain` steps on per-context dense tables
(``V`` is a corpus' characters: tens to thousands) held as Python lists in a
bounded cache, with the context moves memoised; the tests pin one to the other.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from thermospec.core.acceptance import accept_correct_step
from thermospec.core.payload import EpsSpec
from thermospec.core.sampling import last_positive
from thermospec.engine.chain import ReportError, ReportVerifier, context_tables, start_token
from thermospec.engine.chunks import ChainChunk
from thermospec.targets.order import OrderTarget
from thermospec.tsu.drafts import DraftSource, Proposer

__all__ = ["ORDER_TABLE_BYTES", "ContextChunk", "ContextProposer", "run_order_chain", "run_order_reference"]

DEFAULT_CHUNK = 1 << 16
ORDER_DRAFT_BYTES = 128 * 1024 * 1024
"""Memory bound of the drafts of an order-N run (each keeps F(ψ) and its CDF: 16 V bytes)."""
ORDER_TABLE_BYTES = 128 * 1024 * 1024
"""Memory bound of the per-context list tables (about 100 bytes per entry: 3 V entries a context)."""
MAX_MOVES = 1 << 21
"""Memoised context moves kept at most (the memo is cleared beyond)."""

_ListTables = tuple[list[float], float, int, list[float], list[float], float, int]


@dataclass(frozen=True, eq=False)
class ContextChunk(ChainChunk):
    """Steps of an order-N chain: `prev` is the last emitted token, `context` the context id each step drafted in."""

    context: NDArray[np.int64]


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


def run_order_chain(
    target: OrderTarget,
    drafts: DraftSource,
    steps: int,
    rng: np.random.Generator,
    chunk: int = DEFAULT_CHUNK,
    max_table_bytes: int = ORDER_TABLE_BYTES,
) -> Iterator[ContextChunk]:
    """Run the order-N chain for `steps` steps, yielding chunks (the same tokens as `run_order_reference`).

    Raises
    ------
    ReportError
        A draft whose reported ``log q`` is not ``log F(ψ)`` (checked before a chunk leaves).
    """
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
