"""Every state of an order-N move table drafted at once: tables straight into the stepper's cache.

Crafting ψ one context at a time (`Proposer.draft`: a few dozen NumPy calls) costs
more than everything else an order-N run does.  `craft_states` crafts every state
of a `ContextMoves` in blocks (`draft_rows`, bit for bit the per-context drafts),
loads their tables into a `TableCache` with a slot per state, and keeps the
per-state metrics a run's summary needs (`StateMetrics`); the chain then never
stops for a table.  It is worth it when the run visits a good share of the
states (`worth_crafting`), and applies only to drafts whose TSU is the
simulator itself (`SimTSU`: it draws from F(ψ) of its payload and reports
``log F(ψ)``), which it checks on one state against the proposer's own draft.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from thermospec.core.payload import EpsSpec
from thermospec.engine.chain import context_tables
from thermospec.engine.kernels import TableCache
from thermospec.targets.order import ContextMoves
from thermospec.tsu.drafts import ContextDraft, DraftSource
from thermospec.tsu.row_drafts import RowDrafts, draft_rows

__all__ = ["STATES_PER_BLOCK", "PsiSpec", "StateMetrics", "craft_blocks", "craft_states", "worth_crafting"]

STATES_PER_BLOCK = 4096
"""States crafted per block (bounds the temporaries: ~20 float64 arrays of block x V)."""

PsiSpec = tuple[int, float, EpsSpec]
"""The proposer's ψ parameters ``(K, tau, eps)``."""


@dataclass(frozen=True, eq=False)
class StateMetrics:
    """What the summary and telemetry say of each state's draft (`thermospec.tsu.drafts.ContextDraft`'s fields).

    Attributes
    ----------
    topk_mass, overlap_mass, ce_gap_nats, eps : ndarray of float64, shape (states,)
    K, psi_bytes : int
    tau : float
    """

    topk_mass: NDArray[np.float64]
    overlap_mass: NDArray[np.float64]
    ce_gap_nats: NDArray[np.float64]
    eps: NDArray[np.float64]
    K: int
    psi_bytes: int
    tau: float

    def of(self, state: int) -> tuple[float, float, int, int]:
        """``(overlap_mass, ce_gap_nats, psi_bytes, K)`` of a state."""
        return float(self.overlap_mass[state]), float(self.ce_gap_nats[state]), self.psi_bytes, self.K


def worth_crafting(moves: ContextMoves, steps: int) -> bool:
    """Whether crafting every state beats crafting those met (~20 times cheaper a state; at most one new a step)."""
    return moves.states <= 10 * steps


def craft_states(moves: ContextMoves, psi: PsiSpec, drafts: DraftSource, cache: TableCache) -> StateMetrics | None:
    """Craft every state's ψ, load its tables into `cache` (a slot per state), and return the metrics.

    None (nothing loaded) when that does not apply: `cache` has no slot per state or no
    compiled kernel, the rows are not all positive, or the proposer's draft of state 0's
    context is not the simulator's own (another TSU, other parameters).
    """
    if not cache.identity or cache.contexts != moves.states or not _finishes(cache):
        return None

    def load(keys: NDArray[np.int64], rows: NDArray[np.float64], crafted: RowDrafts) -> None:
        cache.load_rows(keys, crafted.draft_cdf, crafted.ratio, crafted.residual_cdf)

    return craft_blocks(moves, psi, drafts, load)


def craft_blocks(moves: ContextMoves, psi: PsiSpec, drafts: DraftSource,
                 load: Callable[[NDArray[np.int64], NDArray[np.float64], RowDrafts], None]) -> StateMetrics | None:
    """Craft every state's ψ in blocks on threads (`draft_rows`), hand each block to ``load(states, rows,
    crafted)`` in order, and return the states' metrics.

    None when the crafting does not apply (the drafts' TSU is not the simulator drawing from F(ψ) of its
    payload, a row is not positive, or state 0's crafted draft is not the proposer's own: F(ψ), its tables
    and every recorded field); blocks handed on before a later block fails are left to the caller.
    """
    first = drafts(moves.context(0))
    if not (first.tsu.samples_payload and first.tsu.reports_exactly):
        return None
    K, tau, eps = psi
    parts: list[tuple[NDArray[np.float64], ...]] = []
    shape: tuple[int, int, float] | None = None
    blocks = [np.arange(a, min(a + STATES_PER_BLOCK, moves.states), dtype=np.int64)
              for a in range(0, moves.states, STATES_PER_BLOCK)]
    workers = max(1, min(os.cpu_count() or 1, len(blocks)))

    def craft(keys: NDArray[np.int64]) -> tuple[NDArray[np.float64], RowDrafts | None]:
        rows = moves.rows(keys)
        return rows, draft_rows(rows, K, tau, eps)

    with ThreadPoolExecutor(max_workers=workers) as pool:  # NumPy's passes release the GIL
        waiting = iter(blocks)
        in_flight = deque((keys, pool.submit(craft, keys)) for keys in itertools.islice(waiting, workers))
        while in_flight:  # a block loads while the next ones are crafted (`workers` in flight: bounded memory)
            keys, future = in_flight.popleft()
            rows, crafted = future.result()
            following = next(waiting, None)
            if following is not None:
                in_flight.append((following, pool.submit(craft, following)))
            if crafted is None or (keys[0] == 0 and not _same_as(first, rows[0], crafted)):
                for _, pending in in_flight:
                    pending.cancel()
                return None
            load(keys, rows, crafted)
            parts.append((crafted.topk_mass, crafted.overlap_mass, crafted.ce_gap_nats, crafted.eps))
            shape = (crafted.K, crafted.psi_bytes, crafted.tau)
    assert shape is not None
    topk, overlap, gap, eps_used = (np.concatenate(column) for column in zip(*parts, strict=True))
    return StateMetrics(topk_mass=topk, overlap_mass=overlap, ce_gap_nats=gap, eps=eps_used, K=shape[0],
                        psi_bytes=shape[1], tau=shape[2])


def _same_as(draft: ContextDraft, p: NDArray[np.float64], crafted: RowDrafts) -> bool:
    """Whether row 0 of `crafted` is the proposer's own `draft` of the row `p`: F(ψ), its tables and every
    recorded field."""
    own = context_tables(p, draft)
    return (np.array_equal(own.draft_cdf, crafted.draft_cdf[0]) and np.array_equal(own.ratio, crafted.ratio[0])
            and np.array_equal(own.residual_cdf, crafted.residual_cdf[0])
            and np.array_equal(draft.tsu.q, crafted.q[0]) and np.array_equal(draft.tsu.cdf, crafted.draft_cdf[0])
            and draft.K == crafted.K and draft.tau == crafted.tau and draft.eps_used == float(crafted.eps[0])
            and draft.psi_bytes == crafted.psi_bytes and draft.topk_mass == float(crafted.topk_mass[0])
            and draft.overlap_mass == float(crafted.overlap_mass[0])
            and draft.ce_gap_nats == float(crafted.ce_gap_nats[0]))


def _finishes(cache: TableCache) -> bool:
    """Whether the cache fills its slots with the compiled kernel (`TableCache.load_rows` needs it)."""
    try:
        cache.load_rows(np.zeros(0, dtype=np.int64), *(np.zeros((0, cache.V)),) * 3)
    except ValueError:
        return False
    return True
