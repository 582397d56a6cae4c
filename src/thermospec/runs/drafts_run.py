"""``run --drafts N --verifier NAME``: the chain with N drafts per target call (the engine is `engine.drafts`).

Telemetry (``m1_metrics.jsonl``): the guide's 12 fields, then ``drafts_used``
(TSU draws the step needed) and ``accepted_index`` (0-based, null when the
residual was drawn).  ``accepted`` means "some draft was accepted",
``proposed_token`` is the first draft, and ``overlap_mass`` is the context's
exact acceptance probability under the verifier (`VerifierPlan.acceptance`), so
``|accept_rate - mean_overlap|`` stays the guide's check.

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
from thermospec.core.streams import Stream, random_stream
from thermospec.core.transport import acceptance_bound, acceptance_optimum
from thermospec.engine.chunks import DraftsChunk
from thermospec.engine.drafts import PlanSource, plan_source, run_drafts
from thermospec.engine.tally import RunTally
from thermospec.runs.checklist import guide_checklist
from thermospec.runs.prepare import PreparedRun
from thermospec.runs.storage import METRICS_FILE, RecordFile
from thermospec.runs.summary import summarise_run
from thermospec.runs.telemetry import context_fields
from thermospec.tsu.drafts import ContextDraft, DraftSource

__all__ = ["DraftsMode", "drafts_lines", "verifier_drafts"]


def verifier_drafts(run: PreparedRun) -> tuple[DraftSource, PlanSource]:
    """The run's drafts with ``overlap_mass`` replaced by the verifier's exact acceptance, and the plans."""
    config, target = run.config, run.target
    plans = plan_source(target.row, run.proposer.draft, config.verifier, config.drafts)

    def view(x: int) -> ContextDraft:
        return dataclasses.replace(run.proposer.draft(x), overlap_mass=plans(x).acceptance)

    return lru_cache(maxsize=None)(view), plans


def drafts_lines(chunk: DraftsChunk, drafts: DraftSource) -> str:
    """The JSONL records of a chunk: M1's 12 fields, then ``drafts_used`` and ``accepted_index``."""
    verdict = ("false", "true")
    lines = []
    for i, (x, y, e, used, index) in enumerate(zip(chunk.prev.tolist(), chunk.proposed.tolist(),
                                                   chunk.emitted.tolist(), chunk.drafts_used.tolist(),
                                                   chunk.accepted_index.tolist(), strict=True)):
        fields = context_fields(drafts(x)).removesuffix("}\n")
        lines.append(f'{{"step":{chunk.start + i},"prev_token":{x},"proposed_token":{y},"emitted_token":{e},'
                     f'"accepted":{verdict[index >= 0]},{fields},"drafts_used":{used},'
                     f'"accepted_index":{"null" if index < 0 else index}}}\n')
    return "".join(lines)


class DraftsMode:
    """``--drafts N``: the chain with N drafts per step, JSONL telemetry (or none)."""

    def __init__(self, run: PreparedRun, run_dir: Path, telemetry: str) -> None:
        self.run, self.telemetry = run, telemetry
        self.view, self.plans = verifier_drafts(run)
        self.tally = RunTally(run.target.V, track_transitions=True)
        self.draws = 0
        self._file = RecordFile(run_dir / METRICS_FILE) if telemetry == "jsonl" else None
        self._stats: dict[str, Any] | None = None

    def chunks(self) -> Iterator[DraftsChunk]:
        config, target = self.run.config, self.run.target
        rng = random_stream(config.seed, Stream.CHAIN)
        return run_drafts(target.row, target.pi, self.run.proposer.draft, config.drafts, config.verifier,
                          config.steps, rng, plans=self.plans,
                          backend="auto" if self.run.proposer.samples_payload else "reference")

    def record(self, chunk: DraftsChunk) -> int:
        if self._file is not None:
            self._file.write(drafts_lines(chunk, self.view))
        self.tally.update(chunk)
        self.draws += int(chunk.drafts_used.sum())
        return len(chunk)

    def close(self) -> str | None:
        if self._file is None:
            return None
        self._file.close()
        return self._file.hexdigest()

    def tokens(self) -> int:
        return self.tally.steps

    def complete(self) -> bool:
        return self.tally.steps >= self.run.config.steps

    def statistics(self) -> dict[str, Any]:
        config, target = self.run.config, self.run.target
        if not self.tally.steps:
            self._stats = {"steps": 0, "checklist": {}}
            return {"steps": 0}
        self._stats = summarise_run(self.tally, self.view, target.pi, target.row)
        counts = self.tally.context_counts
        visited = np.flatnonzero(counts).tolist()
        weights = [int(counts[x]) for x in visited]

        def visit_mean(value: Any) -> float:
            return math.fsum(w * float(value(x)) for x, w in zip(visited, weights, strict=True)) / self.tally.steps

        def q(x: int) -> Any:
            return self.run.proposer.draft(x).tsu.q

        n = config.drafts
        single = visit_mean(lambda x: overlap_mass(target.row(x), q(x)))
        optimum = visit_mean(lambda x: acceptance_optimum(target.row(x), q(x), n))
        rate = self._stats["accept_rate"]
        stats = {k: v for k, v in self._stats.items() if k != "checklist"}
        return {
            **stats,
            "drafts": n,
            "verifier": config.verifier,
            "mean_drafts_used": self.draws / self.tally.steps,
            "single_draft_acceptance": single,
            "acceptance_bound": visit_mean(lambda x: acceptance_bound(target.row(x), q(x), n)),
            "acceptance_optimum": optimum,
            "gain_fraction": (rate - single) / (optimum - single) if optimum - single > 1e-12 else None,
        }

    def extras(self) -> dict[str, Any]:
        assert self._stats is not None, "extras() after statistics()"
        return {"checklist": guide_checklist(self.run, self._stats["checklist"])}
