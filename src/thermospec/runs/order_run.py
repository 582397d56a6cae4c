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
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from thermospec.core.statistics import context_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.contexts import ContextChunk, run_order_chain, run_order_reference
from thermospec.runs.checklist import guide_checklist
from thermospec.runs.counted import CountedMode
from thermospec.runs.prepare import PreparedRun, order_of
from thermospec.runs.summary import ACCEPT_OVERLAP_TOLERANCE, PSI_BYTES_LIMIT
from thermospec.runs.telemetry import context_fields

__all__ = ["OrderMode", "order_lines"]

_EMPTY = ("accept_rate", "mean_overlap", "mean_ce_gap", "chi2_stat", "chi2_dof", "p_value",
          "transition_chi2_stat", "transition_chi2_dof", "transition_p_value")


def order_lines(chunk: ContextChunk, tails: dict[int, str]) -> str:
    """The JSONL records of a chunk: the 12 fields, then ``context`` (`tails`: each context's text from ``"K"``)."""
    verdict = ("false", "true")
    return "".join([
        f'{{"step":{s},"prev_token":{x},"proposed_token":{y},"emitted_token":{e},"accepted":{verdict[a]},{tails[c]}'
        for s, x, c, y, e, a in zip(range(chunk.start, chunk.start + len(chunk)), chunk.prev.tolist(),
                                    chunk.context.tolist(), chunk.proposed.tolist(), chunk.emitted.tolist(),
                                    chunk.accepted.tolist(), strict=True)
    ])


class OrderMode(CountedMode):
    """``--order N`` (N > 2): one order-N chain, JSONL telemetry (or none); `run_dir` None runs in memory."""

    def __init__(self, run: PreparedRun, run_dir: Path | None, telemetry: str) -> None:
        target = order_of(run)
        if target is None:
            raise ValueError("OrderMode: the run's target is not an order-N target with N > 2")
        super().__init__(run, run_dir, telemetry, target.V)
        self.target = target
        self._tails: dict[int, str] = {}
        self._metrics: dict[int, tuple[float, float, int, int]] = {}
        self._stats: dict[str, Any] | None = None

    def chunks(self) -> Iterator[ContextChunk]:
        config, drafts = self.run.config, self.run.proposer.draft
        rng = random_stream(config.seed, Stream.CHAIN)
        if not self.run.proposer.samples_payload:  # a faulty TSU draws itself, step by step
            return iter([run_order_reference(self.target, drafts, config.steps, rng)])
        return run_order_chain(self.target, drafts, config.steps, rng)

    def record(self, chunk: ContextChunk) -> int:
        for c in np.unique(chunk.context).tolist():
            if c not in self._metrics:
                draft = self.run.proposer.draft(c)
                self._metrics[c] = (draft.overlap_mass, draft.ce_gap_nats, draft.psi_bytes, draft.payload.K)
                text = json.dumps(self.target.context_text(c))
                self._tails[c] = context_fields(draft).removesuffix("}\n") + f',"context":{text}}}\n'
        if self._file is not None:
            self._file.write(order_lines(chunk, self._tails))
        return self.count(chunk, chunk.context)

    def statistics(self, tests: bool = True) -> dict[str, Any]:
        """The run's aggregates; `tests` False leaves out the transition χ²."""
        if not self.steps:
            self._stats = {"steps": 0, "checklist": {}}
            return {**dict.fromkeys(_EMPTY), "steps": 0}
        context, _, count = self.pairs.pairs()
        visits = np.bincount(context, weights=count)
        visited = np.flatnonzero(visits).tolist()
        n = {c: int(visits[c]) for c in visited}
        per = {c: self._metrics[c] for c in visited}
        steps = self.steps
        accept_rate = self.accepted / steps
        mean_overlap = math.fsum(n[c] * m[0] for c, m in per.items()) / steps
        infinite_steps = sum(n[c] for c, m in per.items() if not math.isfinite(m[1]))
        mean_gap = None if infinite_steps else math.fsum(n[c] * m[1] for c, m in per.items()) / steps
        transition = context_chi2(self.pairs.contexts(), self.target.row) if tests else None
        psi_max = max(m[2] for m in per.values())
        self._stats = {
            "steps": steps,
            "accept_rate": accept_rate,
            "mean_overlap": mean_overlap,
            "accept_overlap_gap": abs(accept_rate - mean_overlap),
            "mean_ce_gap": mean_gap,
            "ce_gap_infinite_steps": infinite_steps,
            "chi2_stat": None,
            "chi2_dof": None,
            "p_value": None,
            "transition_chi2_stat": None if transition is None else transition.stat,
            "transition_chi2_dof": None if transition is None else transition.dof,
            "transition_p_value": None if transition is None else transition.p_value,
            "psi_bytes_max": psi_max,
            "K_sent_min": min(m[3] for m in per.values()),
            "K_sent_max": max(m[3] for m in per.values()),
            "contexts_visited": len(visited),
            "order": self.target.order,
            "checklist": {
                "accept_overlap_within_0.03": abs(accept_rate - mean_overlap) < ACCEPT_OVERLAP_TOLERANCE,
                "psi_bytes_le_1024": psi_max <= PSI_BYTES_LIMIT,
            },
        }
        return {k: v for k, v in self._stats.items() if k != "checklist"}

    def extras(self) -> dict[str, Any]:
        assert self._stats is not None, "extras() after statistics()"
        return {"checklist": guide_checklist(self.run, self._stats["checklist"])}
