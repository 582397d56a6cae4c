"""``run --drafts N`` on order-N contexts (``--corpus F --order N``) and on a trace (``--trace F``).

The engine is `engine.keyed_drafts`: each step drafts N tokens from ψ of its key
(an order-N context, a trace position), the key's verifier emits one token, and
the next key is the source's (the context after the token; position t + 1).

Telemetry (``m1_metrics.jsonl``): the guide's 12 fields as the source's
single-draft records have them, then its key as those records carry it
(``context``: the context's text; ``position``), then ``drafts_used`` and
``accepted_index`` as ``--drafts N`` writes them on the bigram chain;
``overlap_mass`` is the key's exact acceptance under the verifier.  With
``--telemetry parquet`` the same fields are the columns of ``m1_metrics.parquet``
(`runs.schema.RecordParquet`); ``--chains B`` lays the chains out as on the bigram chain
(chain b on ``chain_stream(seed, b)``; chain 0 is the single-chain run).  A TSU
whose draws are its own (``--tsu thrml``) runs the per-step reference, each
chain with its own TSUs (`runs.chain_tsus`).

Summary: the fields of the source's single-draft summary (order N: the
transition χ² per context; trace: `trace_statistics`' two χ²), the overlap being
the verifier's exact acceptance at each key, and the N-draft fields of the bigram
run, visit-weighted over the keys drafted in: ``single_draft_acceptance``,
``acceptance_bound``, ``acceptance_optimum``, ``gain_fraction``,
``mean_drafts_used`` (the optimum null beyond `OPTIMUM_MAX_ENTRIES`).  With B
chains, each chain's summary is beside its records.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.core.row_transport import acceptance_bounds, acceptance_optima
from thermospec.core.transport import acceptance_bound, acceptance_optimum
from thermospec.core.verifiers import VerifierPlan
from thermospec.engine.batch import chain_stream
from thermospec.engine.chain import DEFAULT_CHUNK
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.crafted_drafts import CraftedDrafts
from thermospec.engine.drafts import plan_source
from thermospec.engine.keyed_drafts import KeyedDraftsChunk, run_keyed_drafts_chains
from thermospec.engine.keys import ContextSource
from thermospec.runs.chain_tsus import chain_drafts
from thermospec.runs.counted import CountedMode
from thermospec.runs.crafted_losses import crafted_losses
from thermospec.runs.drafts_run import drafts_extras
from thermospec.runs.losses import Visits
from thermospec.runs.order_run import context_rows, order_statistics
from thermospec.runs.prepare import PreparedRun, context_source, order_of, trace_of
from thermospec.runs.schema import Layout, layout
from thermospec.runs.telemetry import step_arrays, step_columns
from thermospec.runs.trace_run import observed_before, trace_statistics
from thermospec.targets.trace import TraceShrankError
from thermospec.tsu.drafts import ContextDraft, CraftedRecord, DraftRecord, DraftSource

__all__ = ["KEYED", "KeyedDraftsMode", "keyed_drafts_lines"]

KEYED = {"context": layout("context", drafts=True), "position": layout("position", drafts=True)}
"""The records of N-draft steps on order-N contexts and on a trace: the guide's 12 fields, the key,
``drafts_used`` and ``accepted_index``."""
ROWS_PER_BLOCK = 4096
"""Visited states whose rows the summary reads at once (every state crafted at once)."""
OPTIMUM_MAX_ENTRIES = 1 << 24
"""The summary's ``acceptance_optimum`` (O(V log V) a key) is computed while visited keys x V stay within this;
above it (a long trace at a large V: ~50 ms a position at V = 50,257) it and ``gain_fraction`` are null."""


def keyed_drafts_lines(chunk: KeyedDraftsChunk, fields: Layout, prev_token: NDArray[np.int64],
                       tails: dict[int, str]) -> str:
    """The JSONL records of a chunk: the 12 fields, the key (in `tails`), ``drafts_used``, ``accepted_index``.

    `fields` is the source's layout (`KEYED`), `prev_token` each step's (-1: null); ``tails[key]`` is the
    key's `Layout.key_tail`, from ``"K"`` to its key field.
    """
    field = fields.field
    columns = step_columns(chunk) | {
        "prev_token": field["prev_token"].json_column(prev_token),
        "accepted": field["accepted"].json_column(chunk.accepted_index >= 0),
        "drafts_used": chunk.drafts_used.tolist(),
        "accepted_index": field["accepted_index"].json_column(chunk.accepted_index),
    }
    return fields.lines(chunk.start, columns, list(map(tails.__getitem__, chunk.prev.tolist())))


class KeyedDraftsMode(CountedMode):
    """``--drafts N`` with ``--order N`` or ``--trace``: one chain or B in lock step; JSONL, Parquet or none.

    `run_dir` None runs in memory (one chain).  The mode's own counts pool every chain.
    """

    def __init__(self, run: PreparedRun, run_dir: Path | None, telemetry: str, chains: int = 1) -> None:
        order, trace = order_of(run), trace_of(run)
        super().__init__(run, run_dir, telemetry, run.target.V, chains,
                         KEYED["position" if trace is not None else "context"],
                         None if order is None else order.context_text)
        self.source: ContextSource = context_source(run)
        self.order, self.trace = order, trace
        self.n, self.verifier = run.config.drafts, run.config.verifier
        plans = plan_source(self.source.row, run.proposer.draft, self.verifier, self.n)
        self._acceptance: dict[int, float] = {}  # kept when the engine builds a plan (plans are evicted)

        def kept(key: int) -> VerifierPlan:
            plan = plans(key)
            self._acceptance[key] = plan.acceptance
            return plan

        self.plans = kept
        self.draws = 0
        self._observed = None if trace is None else observed_before(trace)

        def view(key: int) -> ContextDraft:
            found = self._acceptance.get(key)
            return dataclasses.replace(run.proposer.draft(key),
                                       overlap_mass=self.plans(key).acceptance if found is None else found)

        self.view: DraftSource = lru_cache(maxsize=1 << 16)(view)
        self._crafted: CraftedDrafts | None = None  # every state's draft, when the engine crafted them at once
        self._records: dict[int, CraftedRecord] = {}  # contexts met, crafted at once: what their records say

    def _take_crafted(self, crafted: CraftedDrafts) -> None:
        """The engine crafted every state at once: records and summary read it (no draft crafted again)."""
        self._crafted = crafted

    def _record_of(self, key: int) -> DraftRecord:
        """What the records say of a key's draft: its crafted record, or its view."""
        crafted = self._records.get(key)
        return crafted if crafted is not None else self.view(key)

    def _learn(self, keys: NDArray[np.int64]) -> None:
        """Keep the metrics of the keys not met before: crafted records when every state was crafted at once."""
        crafted = self._crafted
        if crafted is None or not keys.shape[0]:
            self.learn(keys, self.view)
            return
        known = self.metrics.known(int(keys.max()) + 1)
        met = np.unique(keys[~known[keys]])
        if not met.shape[0]:
            return
        states = crafted.moves.states_of(met)
        if self.telemetry == "none":  # no record written: the metrics alone
            self.metrics.keep(met, crafted.acceptance[states], crafted.metrics.ce_gap_nats[states],
                              crafted.metrics.psi_bytes, crafted.metrics.K)
            return
        records = [crafted.record(state) for state in states.tolist()]
        self._records.update(zip(met.tolist(), records, strict=True))
        self.keep_records(met, records)

    def _prev_token(self, chunk: KeyedDraftsChunk) -> NDArray[np.int64]:
        """Each step's ``prev_token`` (-1: null): the last token emitted, or on a trace the position's observed one."""
        return chunk.last_token if self._observed is None else self._observed[chunk.prev]

    def _columns(self, chunk: ChainChunk) -> dict[str, NDArray[Any]]:
        """A chunk's Parquet step columns."""
        part = cast(KeyedDraftsChunk, chunk)
        return step_arrays(part) | {"prev_token": self._prev_token(part), "drafts_used": part.drafts_used,
                                    "accepted_index": part.accepted_index}

    def _lines(self, chunk: ChainChunk) -> str:
        part = cast(KeyedDraftsChunk, chunk)
        assert self.layout is not None
        return keyed_drafts_lines(part, self.layout, self._prev_token(part), self.tails)

    def chunks(self) -> Iterator[list[KeyedDraftsChunk]]:
        config, proposer = self.run.config, self.run.proposer
        rngs = [chain_stream(config.seed, b) for b in range(self.chains)]  # chain 0: the single-chain stream
        own = chain_drafts(self.run, self.chains) if self.chains > 1 else None
        try:
            yield from run_keyed_drafts_chains(
                self.source, proposer.draft, self.n, self.verifier, config.steps, rngs, plans=self.plans,
                chunk=max(256, DEFAULT_CHUNK // self.chains),
                backend="auto" if proposer.samples_payload else "reference", chain_drafts=own,
                psi=proposer.psi_spec if self.order is not None else None, on_crafted=self._take_crafted)
        except TraceShrankError:  # the χ² (which reread the file) are then skipped
            self._shrank = True
            raise

    def record(self, chunks: list[KeyedDraftsChunk]) -> int:
        """Write every chain's records of the chunk, then count it (a failed write counts none of it);
        each key's metrics are its view's (the overlap: the verifier's acceptance)."""
        for part in chunks:
            self._learn(part.prev)
        units = self.write_and_count(chunks, self._lines, lambda part: part.prev, self._columns, self._record_of)
        self.draws += sum(int(part.drafts_used.sum()) for part in chunks)
        return units

    def counted_statistics(self, counts: CountedMode, tests: bool) -> dict[str, Any]:
        """The source's single-draft aggregates of one set of counts, the overlap being the verifier's."""
        if self.trace is not None:
            return trace_statistics(self.trace, counts, self.metrics, self.chains if counts is self else 1, tests)
        assert self.order is not None
        return order_statistics(self.order, counts, self.metrics, context_rows(self.order, self._crafted is not None),
                                tests)

    def mode_statistics(self) -> dict[str, Any]:
        """The N-draft fields, visit-weighted over the keys drafted in (every chain's)."""
        assert self._stats is not None
        context, _, count = self.pairs.pairs()
        visits = np.bincount(context, weights=count).astype(np.float64)  # float64 already (weights): no copy's rounding
        solve = int(np.count_nonzero(visits)) * self.source.V <= OPTIMUM_MAX_ENTRIES
        if self._crafted is not None:
            single, bound, optimum = self._crafted_means(visits, solve)
        else:
            single, bound, optimum = self._draft_means(visits, solve)
        rate = self._stats["accept_rate"]
        return {
            "drafts": self.n,
            "verifier": self.verifier,
            "mean_drafts_used": self.draws / self.steps,
            "single_draft_acceptance": single,
            "acceptance_bound": bound,
            "acceptance_optimum": optimum if solve else None,
            "gain_fraction": (rate - single) / (optimum - single) if solve and optimum - single > 1e-12 else None,
        }

    def _draft_means(self, visits: NDArray[np.float64], solve: bool) -> tuple[float, float, float]:
        """The visit-weighted single-draft acceptance, bound and optimum (0 unless `solve`), key by key."""
        visited = np.flatnonzero(visits).tolist()
        drafts, row, n = self.run.proposer.draft, self.source.row, self.n

        def mean(value: Callable[[int], float]) -> float:
            return math.fsum(float(visits[k]) * value(k) for k in visited) / self.steps

        single = mean(lambda k: drafts(k).overlap_mass)
        bounds, optima = [], []
        for k in visited:  # F(ψ) of a key built once for both
            p, q = row(k), drafts(k).tsu.q
            bounds.append(float(visits[k]) * acceptance_bound(p, q, n))
            optima.append(float(visits[k]) * acceptance_optimum(p, q, n) if solve else 0.0)
        return single, math.fsum(bounds) / self.steps, math.fsum(optima) / self.steps

    def _crafted_means(self, visits: NDArray[np.float64], solve: bool) -> tuple[float, float, float]:
        """`_draft_means` from the states crafted at once, a block of visited states at a time (the same
        products, summed exactly: the same values)."""
        crafted = self._crafted
        assert crafted is not None
        visited = np.flatnonzero(visits)
        states, weights = crafted.moves.states_of(visited), visits[visited]
        singles = weights * crafted.metrics.overlap_mass[states]
        bounds, optima = np.empty_like(weights), np.zeros_like(weights)
        for a in range(0, states.shape[0], ROWS_PER_BLOCK):
            at = slice(a, a + ROWS_PER_BLOCK)
            P, Q = crafted.moves.rows(states[at]), crafted.q[states[at]]
            bounds[at] = weights[at] * acceptance_bounds(P, Q, self.n)
            if solve:
                optima[at] = weights[at] * acceptance_optima(P, Q, self.n)
        single, bound, optimum = (math.fsum(part.tolist()) / self.steps for part in (singles, bounds, optima))
        return single, bound, optimum

    def key_visits(self) -> Visits:
        """The keys the steps were in (every chain's); when every state was crafted at once, their loss split from
        the crafted states (`runs.crafted_losses`: the per-key arithmetic, no draft crafted again)."""
        visits = super().key_visits()
        crafted, psi = self._crafted, self.run.proposer.psi_spec
        if crafted is None or psi is None:
            return visits
        losses = crafted_losses(crafted.moves, crafted.metrics, psi, visits.keys)
        if losses is None:
            return visits

        def of(keys: NDArray[np.int64]) -> NDArray[np.float64]:
            found = losses if np.array_equal(keys, visits.keys) else crafted_losses(crafted.moves, crafted.metrics,
                                                                                    psi, keys)
            assert found is not None
            return found

        return dataclasses.replace(visits, losses=of)

    def extras(self) -> dict[str, Any]:
        return drafts_extras(self.run, super().extras(), self.chains)
