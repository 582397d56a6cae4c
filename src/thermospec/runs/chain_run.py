"""The M1 run as the executor drives it (`ChainMode`): one chain, its telemetry, tally and statistics."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import run_chain, run_chain_reference
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.tally import RunTally
from thermospec.runs.checklist import guide_checklist
from thermospec.runs.losses import Visits, visits_of
from thermospec.runs.parquet_file import finish_parquet
from thermospec.runs.prepare import PreparedRun, sparse_rows
from thermospec.runs.summary import summarise_run
from thermospec.runs.telemetry import ParquetWriter, TelemetryFormat, TelemetrySink

__all__ = ["ChainMode"]


class ChainMode:
    """The M1 run: one chain, telemetry ``jsonl``, ``parquet`` or ``none``.

    On the table-driven engine when the TSUs sample their payload exactly
    (`Proposer.samples_payload`); otherwise (``--tsu thrml``) on the per-step
    reference loop, in one chunk, each draw the TSU's own.
    """

    def __init__(self, run: PreparedRun, run_dir: Path, telemetry: TelemetryFormat) -> None:
        self.run = run
        self.telemetry = telemetry
        self.tally = RunTally(run.target.V, track_transitions=True)
        self._sink = TelemetrySink(run_dir, telemetry)
        self._stats: dict[str, Any] | None = None
        self._uncounted: deque[ChainChunk] = deque()
        self._rows_counted = 0

    @property
    def counted_by_engine(self) -> bool:
        """Whether the compiled kernel counts into the tally as it steps (no telemetry, a table-driven TSU)."""
        return self.telemetry == "none" and self.run.proposer.samples_payload

    def chunks(self) -> Iterator[ChainChunk]:
        target, config = self.run.target, self.run.config
        rng = random_stream(config.seed, Stream.CHAIN)
        drafts = self.run.proposer.draft
        if not self.run.proposer.samples_payload:  # e.g. THRML: the TSU draws every token itself, step by step
            return iter([run_chain_reference(target.row, target.pi, drafts, config.steps, rng)])
        # With no telemetry the kernel counts as it steps (no chunk can then fail to be written); with
        # telemetry a chunk is counted only once its records are written.
        counted = self.tally if self.counted_by_engine else None
        return run_chain(target.row, target.pi, drafts, config.steps, rng, sparse=sparse_rows(self.run), tally=counted,
                         record=counted is None)  # nothing reads the step arrays of a run the kernel counts

    def record(self, chunk: ChainChunk) -> int:
        if self.counted_by_engine:
            self._sink.writer.write(chunk, self.run.proposer.draft)
            return len(chunk)
        self._uncounted.append(chunk)  # (THRML with no telemetry: the reference loop's chunk is counted here)
        try:
            self._sink.writer.write(chunk, self.run.proposer.draft)  # a failed write: the writer's OutputError
        finally:
            self._count_written()
        return len(chunk)

    def _count_written(self) -> None:
        """Count the chunks whose records are on file (a Parquet row group is written behind the run)."""
        written = self._sink.writer.rows_written
        while self._uncounted and self._rows_counted + len(self._uncounted[0]) <= written:
            chunk = self._uncounted.popleft()
            self.tally.update(chunk)
            self._rows_counted += len(chunk)

    def close(self) -> str | None:
        """Close the telemetry; a Parquet file that cannot be finished is removed (`finish_parquet`)."""
        try:
            if isinstance(self._sink.writer, ParquetWriter):
                finish_parquet(self._sink.writer)
            self._sink.close()
        finally:
            self._count_written()
        return self._sink.hexdigest()

    def tokens(self) -> int:
        return self.tally.steps

    def key_visits(self) -> Visits:
        """The contexts the verifier ran at (every chain's steps) and how often."""
        return visits_of(self.tally.context_counts)

    def complete(self) -> bool:
        return self.tally.steps >= self.run.config.steps

    def statistics(self) -> dict[str, Any]:
        if not self.tally.steps:  # stopped before the first chunk: nothing to aggregate
            empty = dict.fromkeys(("accept_rate", "mean_overlap", "mean_ce_gap", "chi2_stat", "chi2_dof", "p_value"))
            self._stats = {**empty, "steps": 0, "checklist": {}}
        else:
            self._stats = summarise_run(self.tally, self.run.proposer.draft, self.run.target.pi, self.run.target.row)
        stats = dict(self._stats)
        del stats["checklist"]
        return stats

    def extras(self) -> dict[str, Any]:
        assert self._stats is not None, "extras() after statistics()"
        backend = self.run.proposer.backend
        return {"checklist": guide_checklist(self.run, self._stats["checklist"]),
                **({"tsu_backend": backend} if backend is not None else {})}
