"""The order-N chain counted, not recorded (``run --order N --telemetry none``): no step array at all.

A run without telemetry needs only its counts: steps, accepted drafts and the
(context, emitted token) pairs.  `count_order_chain` steps the chain of
`thermospec.engine.contexts.run_order_chain` (same stream, same tokens) on the
compiled kernel's plain loop: over the states packed one record a state
(`thermospec.engine.packed_states`, ``state_counts``: each step counts into its
record) where they fit, else over the move table and table cache (``moving_counts``:
each step adds one to a dense ``states x V`` table of (state, emitted) pairs).
Nothing else is written, so there are no per-step arrays, no interning per chunk and
no pair merging.  `OrderCounts.pairs` turns the table into the (context, token,
count) triples `thermospec.engine.pairs.PairCounts.pairs` would give, the contexts
interned by increasing state (their ids differ from a recorded run's, which
interns them as met; every summary value is keyed by context, in exact sums).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.chain import ReportVerifier, start_token
from thermospec.engine.contexts import DEFAULT_CHUNK, MovingChain, moving_stepper
from thermospec.engine.kernels import (
    DEFAULT_TABLE_BYTES,
    ChainStepper,
    compiled_module,
    draws_pcg64,
    pcg64_state,
    set_pcg64_state,
)
from thermospec.engine.packed_states import PackedStates, packed_states
from thermospec.engine.state_drafts import PsiSpec, StateMetrics, craft_states, worth_crafting
from thermospec.targets.order import ORDER_MOVES_BYTES, ContextMoves, OrderTarget
from thermospec.tsu.drafts import DraftSource

__all__ = ["COUNT_CHUNK", "ContextTally", "OrderCounts", "count_order_chain"]

COUNT_CHUNK = 1 << 20
"""Steps per tally (the kernel runs them in one call, the GIL released)."""


class OrderCounts:
    """The counts of an order-N run stepped without records: every step's (state, emitted) pair, and the totals.

    Attributes
    ----------
    steps, accepted : int
        Steps counted and drafts accepted so far.
    metrics : StateMetrics or None
        Every state's draft metrics when they were all crafted at once (else ask the proposer).
    """

    def __init__(self, moves: ContextMoves, metrics: StateMetrics | None, packed: PackedStates | None = None) -> None:
        self.moves, self.metrics, self.packed = moves, metrics, packed
        self._taken: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None  # codes taken from the records
        self.V = int(moves.next.shape[0] // moves.states)
        self.table = np.zeros(moves.states * self.V, dtype=np.int64)  # [state * V + emitted]
        self.accepted_count = np.zeros(1, dtype=np.int64)
        self.steps = 0

    @property
    def accepted(self) -> int:
        """Drafts accepted so far."""
        return int(self.accepted_count[0])

    def add(self, states: NDArray[np.int64], emitted: NDArray[np.int64], accepted: NDArray[np.bool_]) -> None:
        """Count recorded steps (the fallback when the states were not all crafted at once)."""
        self.table += np.bincount(states * self.V + emitted, minlength=self.table.shape[0])
        self.accepted_count[0] += int(np.count_nonzero(accepted))
        self.steps += int(states.shape[0])

    def state_codes(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The codes ``state * V + token`` of every pair counted, increasing, and their counts (nothing interned)."""
        packed = self.packed
        if packed is not None and packed.unflushed:
            if self._taken is None and not packed.flushed:  # every count in the records: take them, no table
                self._taken = packed.take_codes()
            else:  # counts in the table too (a flush before an overflow, or taken before more steps): add up there
                if self._taken is not None:
                    self.table[self._taken[0]] += self._taken[1]
                    self._taken = None
                packed.flush(self.table)
        if self._taken is not None:
            return self._taken
        codes = np.flatnonzero(self.table)  # increasing: by state, then token
        return codes, self.table[codes]

    def pairs(self) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """(context, token, count) of every pair counted, sorted by context then token (as `PairCounts.pairs`).

        The states met and not interned yet are interned now, by increasing state.
        """
        codes, count = self.state_codes()
        states, token = codes // self.V, codes % self.V
        first = np.ones(states.shape[0], dtype=np.bool_)
        np.not_equal(states[1:], states[:-1], out=first[1:])
        met = states[first]
        self.moves.intern(met)
        ids = self.moves.contexts(met)
        context = np.repeat(ids, np.diff(np.flatnonzero(np.append(first, True))))
        if np.all(ids[1:] > ids[:-1]):  # ids increase with the states (interned here, or met in that order)
            return context, token, count
        order = np.argsort(context * self.V + token, kind="stable")
        return context[order], token[order], count[order]

    def states_of(self, contexts: NDArray[np.int64]) -> NDArray[np.int64]:
        """The state of each context id (interned through the move table)."""
        return self.moves.states_of(contexts)


@dataclass(frozen=True, eq=False)
class ContextTally:
    """Steps ``start .. start + steps - 1`` of an order-N chain, counted into `counts` (which holds the run's so far).

    Attributes
    ----------
    start, steps : int
        The first step and how many.
    accepted : int
        Drafts accepted among them.
    counts : OrderCounts
        The run's counts, these steps included.
    """

    start: int
    steps: int
    accepted: int
    counts: OrderCounts

    def __len__(self) -> int:
        return self.steps


def count_order_chain(target: OrderTarget, drafts: DraftSource, steps: int, rng: np.random.Generator,
                      psi: PsiSpec | None, chunk: int = COUNT_CHUNK, max_table_bytes: int | None = None,
                      max_moves_bytes: int = ORDER_MOVES_BYTES,
                      on_crafted: Callable[[ContextMoves, PsiSpec], None] | None = None
                      ) -> Iterator[ContextTally] | None:
    """The order-N chain of `run_order_chain` (same arguments, same stream), counted only: one tally per `chunk`.

    None, with `rng` untouched, when it does not apply (then run `run_order_chain`): no move
    table within `max_moves_bytes`, no `psi`, no compiled kernel drawing `rng` itself (a plain
    PCG64 generator), or a run too short for crafting every state at once to pay.  When the
    states cannot be crafted at once after all (another TSU), the steps are recorded, checked
    against the drafts' reports and counted chunk by chunk instead.  `on_crafted` (moves, psi)
    is called once every state was crafted, before the kernel's first step (the tallies' counts
    are then keyed by the move table's states: ``counts.metrics`` is not None).

    Raises
    ------
    ReportError
        As `run_order_chain` (a draft whose reported ``log q`` is not ``log F(ψ)``).
    """
    moves = target.moves(max_moves_bytes)
    module = compiled_module()
    if (moves is None or psi is None or not draws_pcg64(module, rng) or not hasattr(module, "moving_counts")
            or not worth_crafting(moves, steps)):
        return None
    packed = packed_states(target.V, moves, max_table_bytes or DEFAULT_TABLE_BYTES)
    crafted = craft_states(moves, psi, drafts, packed) if packed is not None else None
    if packed is not None and crafted is not None:  # every state packed: the kernel counts in their records
        counts = OrderCounts(moves, crafted, packed)
        x = start_token(target.pi, rng)
        if on_crafted is not None:
            on_crafted(moves, psi)
        return _packed(packed, counts, rng, x, steps, chunk)
    verifier = ReportVerifier(drafts)
    stepper, metrics = moving_stepper(target, moves, drafts, verifier, "auto", max_table_bytes, psi, steps)
    counts = OrderCounts(moves, metrics)
    x = start_token(target.pi, rng)
    if metrics is None:
        return _recorded(MovingChain(moves, stepper, verifier, rng, x, None), counts, steps, min(chunk, DEFAULT_CHUNK))
    if on_crafted is not None:
        on_crafted(moves, psi)
    return _counted(stepper, moves, counts, rng, x, steps, chunk)


def _counted(stepper: ChainStepper, moves: ContextMoves, counts: OrderCounts, rng: np.random.Generator, x: int,
             steps: int, chunk: int) -> Iterator[ContextTally]:
    """Tallies of the kernel's plain loop over the move table (every state crafted and loaded)."""
    cache = stepper.cache
    module = stepper.module
    assert module is not None and cache is not None

    def run(state: NDArray[np.uint64], n: int, x: int) -> int:
        _, after = module.moving_counts(cache.tables, cache.totals, cache.lasts, cache.slot_of, cache.guides,
                                        moves.next, state, counts.accepted_count, counts.table, cache.V, cache.G, n, x)
        return int(after)

    return _tallies(run, counts, rng, x, steps, chunk)


def _packed(states: PackedStates, counts: OrderCounts, rng: np.random.Generator, x: int, steps: int,
            chunk: int) -> Iterator[ContextTally]:
    """Tallies of the kernel's loop over the packed states (`PackedStates.counts`)."""

    def run(state: NDArray[np.uint64], n: int, x: int) -> int:
        return states.counts(state, counts.accepted_count, counts.table, n, x)

    return _tallies(run, counts, rng, x, steps, chunk)


def _tallies(run: Callable[[NDArray[np.uint64], int, int], int], counts: OrderCounts, rng: np.random.Generator,
             x: int, steps: int, chunk: int) -> Iterator[ContextTally]:
    """A counting kernel's chunks: ``run(pcg64 state, n, x)`` steps n from x (counting into `counts`, advancing
    the state) and returns the state after them."""
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        before = counts.accepted
        with rng.bit_generator.lock:
            state = pcg64_state(rng)
            x = run(state, n, x)
            set_pcg64_state(rng, state)
        counts.steps += n
        yield ContextTally(start=done, steps=n, accepted=counts.accepted - before, counts=counts)
        done += n


def _recorded(chain: MovingChain, counts: OrderCounts, steps: int, chunk: int) -> Iterator[ContextTally]:
    """Tallies of recorded chunks (each checked by the verifier), counted by state."""
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        (states, proposed, emitted, accepted), chain.state = chain.stepper.draw_steps(chain.rng, n, chain.state)
        chain.wrap(done, states, proposed, emitted, accepted)  # checks the reports, interns the contexts as met
        counts.add(states, emitted, accepted)
        yield ContextTally(start=done, steps=n, accepted=int(np.count_nonzero(accepted)), counts=counts)
        done += n
