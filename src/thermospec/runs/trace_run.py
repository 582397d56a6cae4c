"""``run --trace PATH``: teacher-forced runs over a trace's positions (the engine is `engine.positions`).

Step s drafts and corrects at position ``t = s mod T``; the emitted token does not
feed back; there is no ``x0`` and no pi (SPEC §8).

Telemetry (``m1_metrics.jsonl``, or none): the guide's 12 fields, then
``position``.  ``prev_token`` is the trace's observed token before the position,
``tokens[t - 1]``, and null at position 0 or when the trace has no tokens; the
metrics are the position's (its ψ against its row).

Summary: M1's aggregates, each position weighted by its visits
(``n_t = floor(N / T)`` or one more), and two χ² in place of M1's stationary one:

- ``chi2_*``: the emitted counts against ``expected_counts(N) = Σ_t n_t p_t``, the
  trace's marginal.  The counts are a sum of multinomials of different p_t, whose
  variance is below the multinomial one the χ² law assumes: the test is
  conservative (it rarely rejects a correct run, and still catches a wrong row);
- ``position_chi2_*``: each visited position's emitted counts against ``n_t p_t``
  (pooled per SPEC §6), summed over the positions: calibrated, since the draws at
  a position are i.i.d. from p_t.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.core.statistics import context_chi2, pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.batch import chain_stream
from thermospec.engine.pairs import PairCounts
from thermospec.engine.positions import POSITION_TABLE_BYTES, PositionChunk, run_positions, run_positions_reference
from thermospec.runs.batch_run import chain_dir
from thermospec.runs.checklist import guide_checklist
from thermospec.runs.counted import CountedMode
from thermospec.runs.losses import Visits
from thermospec.runs.parquet_file import finish_parquet, parquet_write_failed
from thermospec.runs.prepare import PreparedRun, trace_of
from thermospec.runs.schema import RecordParquet, layout
from thermospec.runs.storage import SUMMARY_FILE, OutputError, write_json_atomic
from thermospec.runs.summary import ACCEPT_OVERLAP_TOLERANCE, PSI_BYTES_LIMIT
from thermospec.runs.telemetry import PARQUET_FILE, step_arrays, step_columns
from thermospec.targets.trace import TraceShrankError, TraceTarget

__all__ = ["TRACE", "TraceMode", "position_visits", "trace_lines"]

TRACE = layout("position")
"""The records of single-draft steps on a trace: the guide's 12 fields, then ``position``."""

_EMPTY = ("accept_rate", "mean_overlap", "mean_ce_gap", "chi2_stat", "chi2_dof", "p_value",
          "position_chi2_stat", "position_chi2_dof", "position_p_value")


def position_visits(steps: int, positions: int) -> NDArray[np.int64]:
    """``n_t``: how many of `steps` teacher-forced steps use each of the first ``min(steps, T)`` positions."""
    whole, part = divmod(steps, positions)
    visits = np.full(min(steps, positions), whole, dtype=np.int64)
    visits[:part] += 1
    return visits


def trace_lines(chunk: PositionChunk, prev_text: list[str], tails: list[str]) -> str:
    """The JSONL records of a chunk: the 12 fields (``prev_token`` of the position), then ``position``
    (`prev_text`: each position's ``prev_token`` as JSON; `tails`: its `TRACE.key_tail`)."""
    positions = chunk.position.tolist()
    columns = step_columns(chunk) | {"prev_token": list(map(prev_text.__getitem__, positions))}
    return TRACE.lines(chunk.start, columns, list(map(tails.__getitem__, positions)))


class TraceMode(CountedMode):
    """``--trace``: one teacher-forced run, JSONL telemetry (or none).

    On the vectorised engine when the TSUs sample their payload; otherwise (a
    fault-injected TSU) on the per-step reference, each draw the TSU's own.
    `run_dir` None runs in memory (``check``).
    """

    def __init__(self, run: PreparedRun, run_dir: Path | None, telemetry: str, chains: int = 1) -> None:
        trace = trace_of(run)
        if trace is None:
            raise ValueError("TraceMode: the run's target is not a trace")
        super().__init__(run, run_dir, telemetry, trace.V, chains)
        self.trace = trace
        T = trace.positions
        self._learned = np.zeros(T, dtype=np.bool_)
        self._tails = [""] * T
        self._metrics: dict[int, tuple[float, float, int, int]] = {}
        tokens = trace.tokens
        self._prev_text = (["null"] * T if tokens is None
                           else ["null", *(str(int(x)) for x in tokens[:-1].tolist())])
        self._stats: dict[str, Any] | None = None
        self._shrank = False
        self._parquet = (RecordParquet(run_dir / PARQUET_FILE, TRACE, chain_column=chains > 1)
                         if telemetry == "parquet" and run_dir is not None else None)
        self._observed = (np.full(T, -1, dtype=np.int64) if tokens is None  # prev_token of each position; -1: null
                          else np.concatenate([[-1], np.asarray(tokens[:-1], dtype=np.int64)]))

    def chunks(self) -> Iterator[PositionChunk | tuple[PositionChunk, ...]]:
        """The engine's chunks (with B chains, each chain's next chunk in lock step); should the file shrink
        under the run, the χ² (which reread it) are then skipped."""
        try:
            if self.chains == 1:
                yield from self._chain(random_stream(self.run.config.seed, Stream.CHAIN), POSITION_TABLE_BYTES)
            else:  # chain b on its own stream, from position 0; the table caches share one bound
                budget = POSITION_TABLE_BYTES // self.chains
                yield from zip(*[self._chain(chain_stream(self.run.config.seed, b), budget)
                                 for b in range(self.chains)], strict=True)
        except TraceShrankError:
            self._shrank = True
            raise

    def _chain(self, rng: np.random.Generator, table_bytes: int) -> Iterator[PositionChunk]:
        drafts, steps = self.run.proposer.draft, self.run.config.steps
        if not self.run.proposer.samples_payload:  # a faulty TSU draws itself, step by step
            yield run_positions_reference(self.trace, drafts, steps, rng)
        else:
            ahead = getattr(self.run.proposer, "craft_ahead", None)  # a trace's proposer crafts on threads
            yield from run_positions(self.trace, drafts, steps, rng, max_table_bytes=table_bytes, ahead=ahead)

    def _learn(self, positions: NDArray[np.int64]) -> None:
        """Note the metrics and the JSONL tail of the positions first met in a chunk."""
        if self._learned.all():
            return
        seen = np.unique(positions)
        for t in seen[~self._learned[seen]].tolist():
            draft = self.run.proposer.draft(t)
            self._metrics[t] = (draft.overlap_mass, draft.ce_gap_nats, draft.psi_bytes, draft.payload.K)
            self._tails[t] = TRACE.key_tail(draft, t)
            self._learned[t] = True

    def record(self, chunk: PositionChunk | tuple[PositionChunk, ...]) -> int:
        chunks = chunk if isinstance(chunk, tuple) else (chunk,)
        for part in chunks:
            self._learn(part.position)
        if self._parquet is not None:
            self._write_parquet(chunks)
        return self.write_and_count(chunks, lambda part: trace_lines(cast(PositionChunk, part), self._prev_text,
                                                                     self._tails), lambda part: part.prev)

    def _write_parquet(self, chunks: tuple[PositionChunk, ...]) -> None:
        """Every chain's rows of the chunk (a failed write: one line naming the file)."""
        assert self._parquet is not None
        try:
            for b, part in enumerate(chunks):
                columns = step_arrays(part) | {"prev_token": self._observed[part.position]}
                self._parquet.write(part.start, part.position, columns, self.run.proposer.draft, b)
        except OSError as exc:
            if isinstance(exc, OutputError):
                raise
            raise parquet_write_failed(self._parquet.path, exc) from None

    def close(self) -> str | None:
        """Finish the Parquet file (removed, saying so, if it cannot be read back), then the JSONL files."""
        try:
            if self._parquet is not None:
                finish_parquet(self._parquet)
        finally:
            digest = super().close()
        return digest

    def statistics(self, tests: bool = True) -> dict[str, Any]:
        """The run's aggregates; `tests` False leaves out the two χ² (each a pass over the visited rows)."""
        if not self.steps:
            self._stats = {"steps": 0, "checklist": {}}
            return {**dict.fromkeys(_EMPTY), "steps": 0}
        tests = tests and not self._shrank  # the file is no longer whole: no pass over its rows
        if self.chains > 1 and self.telemetry != "none" and self.run_dir is not None:
            for b, mine in enumerate(self.per_chain):
                if mine.steps:
                    chain_stats = trace_statistics(self.trace, mine.steps, mine.accepted, self._metrics,
                                                   mine.emitted_counts, mine.pairs if tests else None)
                    write_json_atomic(chain_dir(self.run_dir, b) / SUMMARY_FILE,
                                      {k: v for k, v in chain_stats.items() if k != "checklist"} | {"chain": b})
        stats = self._pooled(tests) if self.chains > 1 else trace_statistics(
            self.trace, self.steps, self.accepted, self._metrics, self.emitted_counts, self.pairs if tests else None)
        self._stats = stats
        return {k: v for k, v in stats.items() if k != "checklist"}

    def key_visits(self) -> Visits:
        """The positions the run stepped at (every chain from position 0) and how often."""
        steps = self.per_chain[0].steps if self.chains > 1 else self.steps
        visits = position_visits(steps, self.trace.positions) * self.chains
        return Visits(np.arange(visits.shape[0], dtype=np.int64), visits.astype(np.float64))

    def _pooled(self, tests: bool) -> dict[str, Any]:
        """Every chain's steps pooled (each chain visits the positions in the same order from 0), and the spread."""
        per = [trace_statistics(self.trace, mine.steps, mine.accepted, self._metrics, mine.emitted_counts, None)
               for mine in self.per_chain if mine.steps]
        pooled = trace_statistics(self.trace, self.per_chain[0].steps, self.accepted, self._metrics,
                                  self.emitted_counts, self.pairs if tests else None, chains=self.chains)
        rates = [p["accept_rate"] for p in per]
        return pooled | {"chains": self.chains, "steps_per_chain": self.per_chain[0].steps,
                         "chain_accept_rate_min": min(rates), "chain_accept_rate_max": max(rates)}

    def extras(self) -> dict[str, Any]:
        assert self._stats is not None, "extras() after statistics()"
        return {"checklist": guide_checklist(self.run, self._stats["checklist"])}


def trace_statistics(
    trace: TraceTarget, steps: int, accepted: int, metrics: dict[int, tuple[float, float, int, int]],
    emitted_counts: NDArray[np.int64], pairs: PairCounts | None, chains: int = 1,
) -> dict[str, Any]:
    """Aggregates of `chains` runs of `steps` teacher-forced steps each (`metrics[t]`: overlap, CE gap, ψ bytes
    and K of position t; `accepted`, `emitted_counts` and `pairs` over every chain)."""
    visits = (position_visits(steps, trace.positions) * chains).tolist()
    per = [metrics[t] for t in range(len(visits))]
    per_chain, steps = steps, steps * chains
    accept_rate = accepted / steps
    mean_overlap = math.fsum(n * m[0] for n, m in zip(visits, per, strict=True)) / steps
    infinite_steps = sum(n for n, m in zip(visits, per, strict=True) if not math.isfinite(m[1]))
    mean_gap = (None if infinite_steps
                else math.fsum(n * m[1] for n, m in zip(visits, per, strict=True)) / steps)
    marginal = position = None
    if pairs is not None:
        marginal = pooled_chi2(emitted_counts.astype(np.float64), chains * trace.expected_counts(per_chain))
        position = context_chi2(pairs.contexts(), trace.row)
    psi_max = max(m[2] for m in per)
    return {
        "steps": steps,
        "accept_rate": accept_rate,
        "mean_overlap": mean_overlap,
        "accept_overlap_gap": abs(accept_rate - mean_overlap),
        "mean_ce_gap": mean_gap,
        "ce_gap_infinite_steps": infinite_steps,
        "chi2_stat": None if marginal is None else marginal.stat,
        "chi2_dof": None if marginal is None else marginal.dof,
        "p_value": None if marginal is None else marginal.p_value,
        "chi2_reference": "expected_counts: the sum over steps of p at each step's position",
        "position_chi2_stat": None if position is None else position.stat,
        "position_chi2_dof": None if position is None else position.dof,
        "position_p_value": None if position is None else position.p_value,
        "psi_bytes_max": psi_max,
        "K_sent_min": min(m[3] for m in per),
        "K_sent_max": max(m[3] for m in per),
        "positions_visited": len(visits),
        "checklist": {
            "accept_overlap_within_0.03": abs(accept_rate - mean_overlap) < ACCEPT_OVERLAP_TOLERANCE,
            "psi_bytes_le_1024": psi_max <= PSI_BYTES_LIMIT,
        },
    }
