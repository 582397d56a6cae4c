"""``run --drafts N --verifier NAME``: the chain with N drafts per target call (the engine is `engine.drafts`).

Telemetry (``m1_metrics.jsonl``): the guide's 12 fields, then ``drafts_used``
(TSU draws the step needed) and ``accepted_index`` (0-based, null when the
residual was drawn).  ``accepted`` means "some draft was accepted",
``proposed_token`` is the first draft, and ``overlap_mass`` is the context's
exact acceptance probability under the verifier (`VerifierPlan.acceptance`), so
``|accept_rate - mean_overlap|`` stays the guide's check.

With ``--telemetry parquet`` the same fields are columns of ``m1_metrics.parquet``
(``accepted_index`` null where the residual was drawn).  With ``--chains B`` the B
chains run in lock step, chain b on ``chain_stream(seed, b)`` (chain 0 is the
single-chain run, token for token); telemetry as ``--chains`` writes it for M1
(``chain_<b>/m1_metrics.jsonl``, or one Parquet file with a leading ``chain``
column), per-chain summaries beside it, and pooled statistics in ``summary.json``.
A TSU whose draws are its own (``--tsu thrml``) runs the per-step reference,
each chain with its own TSUs (`runs.chain_tsus`).

Summary: the M1 statistics with that overlap, and, visit-weighted over the
contexts the run drafted from: ``single_draft_acceptance`` (Σ min(p, q), one
draft), ``acceptance_bound`` (Σ min(p, 1 − (1 − q)^N), which no verifier of N
i.i.d. drafts can pass), ``acceptance_optimum`` (the best any exact verifier
achieves, `core.transport.acceptance_optimum`), and ``gain_fraction``: the share
of the optimum's gain over one draft that the run's acceptance achieved.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from thermospec.core.metrics import overlap_mass
from thermospec.core.transport import acceptance_bound, acceptance_optimum
from thermospec.engine.batch import chain_stream
from thermospec.engine.chain import DEFAULT_CHUNK
from thermospec.engine.chunks import DraftsChunk
from thermospec.engine.drafts import PlanSource, plan_source, run_drafts_chains
from thermospec.engine.tally import BatchTally
from thermospec.runs.batch_run import STREAMS, TokenChains, chain_statistics
from thermospec.runs.chain_tsus import chain_drafts
from thermospec.runs.checklist import guide_checklist
from thermospec.runs.prepare import PreparedRun, context_source
from thermospec.runs.schema import layout
from thermospec.runs.summary import summarise_run
from thermospec.runs.telemetry import ChainRecords, drafts_arrays, step_columns
from thermospec.tsu.drafts import ContextDraft, DraftSource

__all__ = ["DRAFTS", "DraftsMode", "drafts_extras", "drafts_lines", "verifier_drafts"]

DRAFTS = layout(drafts=True)
"""The records of ``--drafts N`` steps: the guide's 12 fields, then ``drafts_used`` and ``accepted_index``."""


def verifier_drafts(run: PreparedRun) -> tuple[DraftSource, PlanSource]:
    """The run's drafts with ``overlap_mass`` replaced by the verifier's exact acceptance, and the plans."""
    config, target = run.config, run.target
    plans = plan_source(target.row, run.proposer.draft, config.verifier, config.drafts)

    def view(x: int) -> ContextDraft:
        return dataclasses.replace(run.proposer.draft(x), overlap_mass=plans(x).acceptance)

    return lru_cache(maxsize=None)(view), plans


def drafts_lines(chunk: DraftsChunk, drafts: DraftSource) -> str:
    """The JSONL records of a chunk: M1's 12 fields, then ``drafts_used`` and ``accepted_index``."""
    keys = chunk.prev.tolist()
    tails = {x: DRAFTS.key_tail(drafts(x), x) for x in set(keys)}
    chosen = chunk.accepted_index >= 0
    columns = step_columns(chunk) | {"accepted": DRAFTS.field["accepted"].json_column(chosen),
                                     "drafts_used": chunk.drafts_used.tolist(),
                                     "accepted_index": DRAFTS.field["accepted_index"].json_column(chunk.accepted_index)}
    return DRAFTS.lines(chunk.start, columns, list(map(tails.__getitem__, keys)))


class DraftsMode(TokenChains):
    """``--drafts N``: one chain or B in lock step, N drafts per step, JSONL, Parquet or no telemetry."""

    counted_by_engine = False
    """Each chunk is counted as it is recorded (`Mode.counted_by_engine`)."""

    def __init__(self, run: PreparedRun, run_dir: Path, telemetry: str, chains: int = 1) -> None:
        self.run, self.run_dir, self.telemetry, self.chains = run, run_dir, telemetry, chains
        self.view, self.plans = verifier_drafts(run)
        V = run.target.V
        self.tally = BatchTally(chains, V, track_transitions=True, per_chain=chains > 1 and telemetry != "none")
        self.draws = 0
        self.records: ChainRecords[DraftsChunk] = ChainRecords(run_dir, telemetry, chains, DRAFTS)
        self._stats: dict[str, Any] | None = None

    def chunks(self) -> Iterator[list[DraftsChunk]]:
        config = self.run.config
        rngs = [chain_stream(config.seed, b) for b in range(self.chains)]
        own = chain_drafts(self.run, self.chains) if self.chains > 1 else None  # THRML: each chain its own TSUs
        return run_drafts_chains(context_source(self.run), self.run.proposer.draft, config.drafts, config.verifier,
                                 config.steps, rngs, plans=self.plans, chunk=max(256, DEFAULT_CHUNK // self.chains),
                                 backend="auto" if self.run.proposer.samples_payload else "reference",
                                 chain_drafts=own)

    def record(self, chunks: list[DraftsChunk]) -> int:
        """Write every chain's records of the chunk, then count it (a failed write counts none of it)."""
        self.records.write(chunks, lambda part: drafts_lines(part, self.view), drafts_arrays, lambda part: part.prev,
                           self.view)
        self.tally.update_chains(chunks)
        self.draws += sum(int(chunk.drafts_used.sum()) for chunk in chunks)
        return len(chunks[0]) * self.chains

    def statistics(self) -> dict[str, Any]:
        config, target = self.run.config, self.run.target
        if not self.tally.steps:
            self._stats = {"steps": 0, "checklist": {}}
            return {"steps": 0}
        pooled = self.tally.pooled()
        self._stats = summarise_run(pooled, self.view, target.pi, target.row)
        counts = pooled.context_counts
        visited = np.flatnonzero(counts).tolist()
        weights = [int(counts[x]) for x in visited]

        def visit_mean(value: Any) -> float:
            return math.fsum(w * float(value(x)) for x, w in zip(visited, weights, strict=True)) / pooled.steps

        def q(x: int) -> Any:
            return self.run.proposer.draft(x).tsu.q

        n = config.drafts
        single = visit_mean(lambda x: overlap_mass(target.row(x), q(x)))
        optimum = visit_mean(lambda x: acceptance_optimum(target.row(x), q(x), n))
        rate = self._stats["accept_rate"]
        stats = {k: v for k, v in self._stats.items() if k != "checklist"}
        return {
            **stats,
            **self._chain_statistics(),
            "drafts": n,
            "verifier": config.verifier,
            "mean_drafts_used": self.draws / pooled.steps,
            "single_draft_acceptance": single,
            "acceptance_bound": visit_mean(lambda x: acceptance_bound(target.row(x), q(x), n)),
            "acceptance_optimum": optimum,
            "gain_fraction": (rate - single) / (optimum - single) if optimum - single > 1e-12 else None,
        }

    def _chain_statistics(self) -> dict[str, Any]:
        """With B > 1 chains: their count and acceptance spread; each chain's summary beside its telemetry."""
        if self.chains == 1:
            return {}
        beside = self.run_dir if self.telemetry != "none" else None
        return chain_statistics(self.tally, self.view, self.run.target.pi, beside)

    def extras(self) -> dict[str, Any]:
        assert self._stats is not None, "extras() after statistics()"
        return drafts_extras(self.run, {"checklist": guide_checklist(self.run, self._stats["checklist"])}, self.chains)


def drafts_extras(run: PreparedRun, found: dict[str, Any], chains: int) -> dict[str, Any]:
    """An N-draft run's extras: `found` (its checklist), the TSU's backend, and with B chains their streams."""
    backend = run.proposer.backend
    return found | ({"tsu_backend": backend} if backend is not None else {}) | ({"streams": STREAMS} if chains > 1
                                                                                else {})
