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

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.core.statistics import context_chi2, pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.batch import chain_stream
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.positions import POSITION_TABLE_BYTES, PositionChunk, run_positions, run_positions_reference
from thermospec.runs.counted import CountedMode, KeyMetrics, chi2_fields, visit_aggregates
from thermospec.runs.losses import Visits
from thermospec.runs.prepare import PreparedRun, trace_of
from thermospec.runs.schema import layout
from thermospec.runs.telemetry import step_arrays, step_columns
from thermospec.targets.trace import TraceShrankError, TraceTarget

__all__ = ["TRACE", "TraceMode", "observed_before", "position_visits", "trace_lines", "trace_statistics"]

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


def observed_before(trace: TraceTarget) -> NDArray[np.int64]:
    """Each position's ``prev_token``: the trace's observed token before it (-1: null, at position 0 or when
    the trace has no tokens)."""
    tokens = trace.tokens
    return (np.full(trace.positions, -1, dtype=np.int64) if tokens is None
            else np.concatenate([[-1], np.asarray(tokens[:-1], dtype=np.int64)]))


def trace_lines(chunk: PositionChunk, prev_text: list[str], tails: dict[int, str]) -> str:
    """The JSONL records of a chunk: the 12 fields (``prev_token`` of the position), then ``position``
    (`prev_text`: each position's ``prev_token`` as JSON; `tails`: its `TRACE.key_tail`)."""
    positions = chunk.position.tolist()
    columns = step_columns(chunk) | {"prev_token": list(map(prev_text.__getitem__, positions))}
    return TRACE.lines(chunk.start, columns, list(map(tails.__getitem__, positions)))


def trace_statistics(trace: TraceTarget, counts: CountedMode, metrics: KeyMetrics, chains: int,
                     tests: bool) -> dict[str, Any]:
    """Aggregates of `chains` teacher-forced runs whose steps `counts` pooled (each chain from position 0;
    `metrics`: each position's); `tests`: the marginal and per-position χ²."""
    per_chain = counts.steps // chains
    visits = position_visits(per_chain, trace.positions) * chains
    marginal = position = None
    if tests:
        marginal = pooled_chi2(counts.emitted_counts.astype(np.float64), chains * trace.expected_counts(per_chain))
        position = context_chi2(counts.pairs.contexts(), trace.row)
    reference = "expected_counts: the sum over steps of p at each step's position"
    return visit_aggregates(counts.steps, counts.accepted, visits.astype(np.float64),
                            metrics.of(np.arange(visits.shape[0])),
                            chi2_fields(marginal) | {"chi2_reference": reference} | chi2_fields(position, "position_"),
                            {"positions_visited": int(visits.shape[0])})


class TraceMode(CountedMode):
    """``--trace``: one teacher-forced run, JSONL telemetry (or none).

    On the vectorised engine when the TSUs sample their payload; otherwise (a
    fault-injected TSU) on the per-step reference, each draw the TSU's own.
    `run_dir` None runs in memory (``check``).  B chains' pooled summary gives
    no mean acceptance (their min and max only).
    """

    SPREAD_MEAN = False

    def __init__(self, run: PreparedRun, run_dir: Path | None, telemetry: str, chains: int = 1) -> None:
        trace = trace_of(run)
        if trace is None:
            raise ValueError("TraceMode: the run's target is not a trace")
        super().__init__(run, run_dir, telemetry, trace.V, chains, TRACE)
        self.trace = trace
        self._observed = observed_before(trace)  # prev_token of each position; -1: null
        self._prev_text = ["null" if x < 0 else str(x) for x in self._observed.tolist()]

    def chunks(self) -> Iterator[tuple[PositionChunk, ...]]:
        """Each chain's next chunk of the engine, in lock step (one chain: a tuple of one); should the file
        shrink under the run, the χ² (which reread it) are then skipped."""
        try:
            if self.chains == 1:
                yield from ((chunk,) for chunk in self._chain(random_stream(self.run.config.seed, Stream.CHAIN),
                                                              POSITION_TABLE_BYTES))
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

    def _columns(self, chunk: ChainChunk) -> dict[str, NDArray[Any]]:
        """A chunk's Parquet step columns, ``prev_token`` being each position's observed token."""
        return step_arrays(chunk) | {"prev_token": self._observed[chunk.prev]}

    def record(self, chunks: Sequence[PositionChunk]) -> int:
        """Keep the metrics of the positions met first, then write and count every chain's chunk."""
        for part in chunks:
            self.learn(part.position, self.run.proposer.draft)
        return self.write_and_count(chunks, lambda part: trace_lines(cast(PositionChunk, part), self._prev_text,
                                                                     self.tails),
                                    lambda part: part.prev, self._columns, self.run.proposer.draft)

    def nothing_counted(self) -> dict[str, Any]:
        return {**dict.fromkeys(_EMPTY), "steps": 0}

    def counted_statistics(self, counts: CountedMode, tests: bool) -> dict[str, Any]:
        return trace_statistics(self.trace, counts, self.metrics, self.chains if counts is self else 1, tests)

    def key_visits(self) -> Visits:
        """The positions the run stepped at (every chain from position 0) and how often."""
        steps = self.per_chain[0].steps if self.chains > 1 else self.steps
        visits = position_visits(steps, self.trace.positions) * self.chains
        return Visits(np.arange(visits.shape[0], dtype=np.int64), visits.astype(np.float64))
