"""``run --corpus PATH --order N`` (N > 2): the order-N corpus chain (the engine is `engine.contexts`).

The context of a step is the last N - 1 emitted characters, backed off to the
longest suffix the corpus has seen followed by a character; the chain starts
from ``x0 ~ pi`` of the bigram chain (SPEC §8).  N = 2 is M1's corpus run and
goes through `ChainMode`, byte for byte.

Telemetry (``m1_metrics.jsonl``, or none): the guide's 12 fields, ``prev_token``
being the last emitted token, then ``context``: the text of the context the step
drafted in (its effective suffix, oldest character first).

Summary: M1's aggregates, each context weighted by its visits, and the
transition χ² over the visited contexts (each context's emitted counts against
``n_c p(. | c)``, summed: calibrated whatever the chain's correlations).  M1's
stationary χ² against ``N pi`` is left null: pi is the bigram chain's law, not
the order-N chain's.

Without telemetry one chain is counted by the kernel (`engine.context_counts`): its keys are then the move
table's states, no context is interned, and when its steps outlast it every state's loss split is computed
on another thread while the kernel counts (`LOSSES_ON_THE_SIDE`); every summary value is an exact sum over
the keys, so it is the recorded run's whatever their ids.

``--chains B``: B chains in lock step (`run_order_chains`: chain b on its own
stream, chain 0 the single-chain run step for step), laid out as ``--chains``
lays out M1's: with JSONL, ``chain_<b>/m1_metrics.jsonl`` and
``chain_<b>/summary.json`` per chain; ``summary.json`` pools every chain's counts
(the transition χ² over all of them) and gives the spread of their acceptance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.core.statistics import pairs_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.context_counts import ContextTally, OrderCounts, count_order_chain
from thermospec.engine.contexts import ContextChunk, run_order_chain, run_order_chains, run_order_reference
from thermospec.engine.pairs import PairCounts
from thermospec.engine.state_drafts import PsiSpec, StateMetrics
from thermospec.runs.counted import CountedMode, KeyMetrics, chi2_fields, visit_aggregates
from thermospec.runs.losses import Visits, row_losses
from thermospec.runs.prepare import PreparedRun, order_of
from thermospec.runs.schema import layout
from thermospec.runs.telemetry import step_arrays, step_columns
from thermospec.targets.order import ContextMoves, OrderTarget
from thermospec.tsu.drafts import CraftedRecord, DraftRecord

__all__ = ["ORDER", "OrderMode", "order_lines", "order_statistics"]

ORDER = layout("context")
"""The records of order-N single-draft steps: the guide's 12 fields, then ``context``."""

_EMPTY = ("accept_rate", "mean_overlap", "mean_ce_gap", "chi2_stat", "chi2_dof", "p_value",
          "transition_chi2_stat", "transition_chi2_dof", "transition_p_value")

LOSSES_ON_THE_SIDE = 16
"""Steps per state from which every state's loss split is computed while the kernel counts (a step takes
~0.1 us there, a state's split ~2 us): below it, only the visited states', afterwards."""

Rows = Callable[[NDArray[np.int64]], NDArray[np.float64]]
"""The target rows of an array of contexts, shape ``(contexts, V)``."""


def order_lines(chunk: ContextChunk, tails: dict[int, str]) -> str:
    """The JSONL records of a chunk: the 12 fields, then ``context`` (`tails`: each context's `ORDER.key_tail`)."""
    return ORDER.lines(chunk.start, step_columns(chunk), list(map(tails.__getitem__, chunk.context.tolist())))


def _crafted_records(metrics: StateMetrics, states: NDArray[np.int64]) -> list[DraftRecord]:
    """The records of `states` crafted at once: what each one's `ContextDraft` says, bit for bit."""
    columns = (metrics.eps[states].tolist(), metrics.topk_mass[states].tolist(),
               metrics.overlap_mass[states].tolist(), metrics.ce_gap_nats[states].tolist())
    return [CraftedRecord(K=metrics.K, tau=metrics.tau, eps_used=eps, psi_bytes=metrics.psi_bytes, topk_mass=topk,
                          overlap_mass=overlap, ce_gap_nats=gap)
            for eps, topk, overlap, gap in zip(*columns, strict=True)]


def _contexts(chunk: ChainChunk) -> NDArray[np.int64]:
    """The context id each step of an order-N chunk drafted in."""
    return cast(ContextChunk, chunk).context


def order_statistics(target: OrderTarget, counts: CountedMode, metrics: KeyMetrics, rows: Rows,
                     tests: bool) -> dict[str, Any]:
    """The aggregates of one set of order-N counts, each context weighted by its visits (`metrics`: each
    context's); `tests`: the transition χ² over the visited contexts (`rows`: theirs)."""
    context, token, count = counts.pairs.pairs()
    visits = np.bincount(context, weights=count)
    visited = np.flatnonzero(visits)
    transition = pairs_chi2(context, token, count, target.V, rows) if tests else None
    return visit_aggregates(counts.steps, counts.accepted, visits[visited].astype(np.float64), metrics.of(visited),
                            chi2_fields(None) | chi2_fields(transition, "transition_"),
                            {"contexts_visited": int(visited.shape[0]), "order": target.order})


def context_rows(target: OrderTarget, crafted: bool = False) -> Rows:
    """The target's rows of an array of contexts: from the move table after a crafted run, else one by one."""
    moves = target.moves() if crafted else None

    def rows(contexts: NDArray[np.int64]) -> NDArray[np.float64]:
        if moves is None:
            return np.stack([target.row(c) for c in contexts.tolist()])
        states = moves.states_of(contexts)
        known = states >= 0
        out = np.empty((contexts.shape[0], target.V), dtype=np.float64)
        out[known] = moves.rows(states[known])
        for i in np.flatnonzero(~known).tolist():
            out[i] = target.row(int(contexts[i]))
        return out

    return rows


class OrderMode(CountedMode):
    """``--order N`` (N > 2): one order-N chain or `chains` in lock step, JSONL telemetry (or none).

    `run_dir` None runs in memory (one chain).  The mode's own counts pool every chain.
    """

    def __init__(self, run: PreparedRun, run_dir: Path | None, telemetry: str, chains: int = 1) -> None:
        target = order_of(run)
        if target is None:
            raise ValueError("OrderMode: the run's target is not an order-N target with N > 2")
        super().__init__(run, run_dir, telemetry, target.V, chains, ORDER, target.context_text)
        self.target = target
        self._crafted = False  # whether the engine crafted every context at once (rows at once too, then)
        self._counting = False  # whether the engine counts (telemetry none): `chunks` then yields tallies
        self._tallied: OrderCounts | None = None  # counts the engine kept, not yet taken
        self._records: dict[int, DraftRecord] = {}  # contexts met, crafted at once: what their records say
        self._states: ContextMoves | None = None  # the move table whose states are the keys (counted by the kernel)
        self._state_losses: Future[NDArray[np.float64] | None] | None = None  # every state's loss split, if computed
        self._psi: PsiSpec | None = None  # the drafts' ψ parameters, when the kernel counts crafted states

    @property
    def counted_by_engine(self) -> bool:
        """With no telemetry one chain may be counted by the kernel into a tally it keeps (`chunks`): a chunk in
        the making is then finished, never cut, or the tally would hold steps the summary does not."""
        return self.telemetry == "none" and self.chains == 1 and self.run.proposer.samples_payload

    def chunks(self) -> Iterator[list[ContextChunk]] | Iterator[list[ContextTally]]:
        """Each chain's next chunk, in lock step (one chain: a list of one)."""
        config, proposer = self.run.config, self.run.proposer
        drafts, psi = proposer.draft, proposer.psi_spec  # None: ψ not from the target's rows, crafted one by one
        if self.chains > 1:
            return run_order_chains(self.target, drafts, config.steps, config.seed, self.chains, psi=psi)
        rng = random_stream(config.seed, Stream.CHAIN)
        if not proposer.samples_payload:  # a faulty TSU draws itself, step by step
            return iter([[run_order_reference(self.target, drafts, config.steps, rng)]])
        if self.telemetry == "none":  # counts only: the kernel counts the pairs, no step array
            tallies = count_order_chain(self.target, drafts, config.steps, rng, psi, on_crafted=self._while_counting)
            if tallies is not None:
                self._counting = True
                return ([tally] for tally in tallies)
        return ([chunk] for chunk in run_order_chain(self.target, drafts, config.steps, rng, psi=psi))

    def _while_counting(self, moves: ContextMoves, psi: PsiSpec) -> None:
        """Every state crafted, the kernel about to count (the GIL released): when its steps take longer than
        every state's loss split (`LOSSES_ON_THE_SIDE`), that split meanwhile on another thread (a long run's
        visited states are most of them); else the visited states' split once they are known."""
        self._psi = psi
        if self.run.config.steps < LOSSES_ON_THE_SIDE * moves.states:
            return
        K, tau, eps = psi
        pool = ThreadPoolExecutor(max_workers=1)
        self._state_losses = pool.submit(row_losses, moves.rows, np.arange(moves.states), K, tau, eps)
        pool.shutdown(wait=False)  # its thread ends with its one task

    def record(self, chunks: Sequence[ContextChunk] | Sequence[ContextTally]) -> int:
        """Keep the metrics of the contexts met first, then write and count every chain's chunk (a tally: its
        steps; its pairs are taken once, when the statistics are asked for)."""
        if self._counting:  # the engine's tallies (`chunks`), not chunks of steps
            tally = cast(ContextTally, chunks[0])
            self._tallied = tally.counts
            self.steps += tally.steps
            self.accepted += tally.accepted
            return tally.steps
        chunks = cast(Sequence[ContextChunk], chunks)
        for part in chunks:
            self._crafted |= part.metrics is not None
            if part.metrics is not None and part.state is not None:  # crafted at once: no draft objects
                known = self.metrics.known(int(part.context.max()) + 1)
                fresh = np.flatnonzero(~known[part.context])  # steps in contexts not seen before
                met, first = np.unique(part.context[fresh], return_index=True)
                metrics, states = part.metrics, part.state[fresh[first]]
                if self.telemetry == "none":
                    self.metrics.keep(met, metrics.overlap_mass[states], metrics.ce_gap_nats[states],
                                      metrics.psi_bytes, metrics.K)
                else:  # the records' key fields too, from the crafted metrics
                    records = _crafted_records(metrics, states)
                    self._records.update(zip(met.tolist(), records, strict=True))
                    self.keep_records(met, records)
            else:
                self.learn(part.context, self.run.proposer.draft)
        return self.write_and_count(chunks, lambda part: order_lines(cast(ContextChunk, part), self.tails),
                                    _contexts, step_arrays, self._record_of)

    def _record_of(self, context: int) -> DraftRecord:
        """What the records say of a context's draft: its crafted metrics, or the proposer's draft."""
        crafted = self._records.get(context)
        return crafted if crafted is not None else self.run.proposer.draft(context)

    def nothing_counted(self) -> dict[str, Any]:
        return {**dict.fromkeys(_EMPTY), "steps": 0} | ({"chains": self.chains} if self.chains > 1 else {})

    def _take_tallied(self) -> None:
        """Make the engine's counts (telemetry none) the mode's pairs, emitted counts and key metrics.

        When every state was crafted at once the keys are the move table's states (no context is interned:
        every summary value is a sum over the keys, exact whatever their ids), else context ids.
        """
        counts, self._tallied = self._tallied, None
        if counts is None:
            return
        if counts.metrics is not None:
            codes, count = counts.state_codes()
            V, metrics = self.target.V, counts.metrics
            states, token = codes // V, codes % V
            self.pairs = PairCounts.of_pairs(V, states, token, count)
            self.emitted_counts = np.bincount(token, weights=count, minlength=V).astype(np.int64)
            first = np.ones(states.shape[0], dtype=np.bool_)
            np.not_equal(states[1:], states[:-1], out=first[1:])
            visited = states[first]
            self._crafted, self._states = True, counts.moves
            self.metrics.known(counts.moves.states)
            self.metrics.keep(visited, metrics.overlap_mass[visited], metrics.ce_gap_nats[visited],
                              metrics.psi_bytes, metrics.K)
            return
        context, token, count = counts.pairs()  # recorded chunks, their contexts interned as met
        self.pairs = PairCounts.of_pairs(self.target.V, context, token, count)
        self.emitted_counts = np.bincount(token, weights=count, minlength=self.target.V).astype(np.int64)
        self.learn(np.unique(context), self.run.proposer.draft)

    def counted_statistics(self, counts: CountedMode, tests: bool) -> dict[str, Any]:
        """The aggregates of one set of counts (one chain's, or the pooled ones)."""
        self._take_tallied()
        return order_statistics(self.target, counts, self.metrics, self._rows(), tests)

    def _rows(self) -> Rows:
        """The target rows of the mode's keys: states' from the move table, else contexts'."""
        return self._states.rows if self._states is not None else context_rows(self.target, self._crafted)

    def key_visits(self) -> Visits:
        """The keys the steps were in (every chain's), with their rows from the move table, and their losses
        when computed while the kernel counted; states turned into contexts when those are not at hand."""
        self._take_tallied()
        visits = replace(super().key_visits(), rows=self._rows())
        if self._states is None:
            return visits
        if self._state_losses is not None:  # every state's, computed while the kernel counted
            every = self._state_losses.result()
            if every is not None:
                return replace(visits, losses=lambda keys: every[keys])
        elif self._psi is not None:  # the visited states' now
            K, tau, eps = self._psi
            visited = row_losses(self._states.rows, visits.keys, K, tau, eps)
            if visited is not None:
                return replace(visits, losses=lambda keys: visited[np.searchsorted(visits.keys, keys)])
        moves = self._states  # the per-key path reads drafts, by context id: intern the states met
        moves.intern(visits.keys)
        return replace(visits, keys=moves.contexts(visits.keys), rows=context_rows(self.target, True))
