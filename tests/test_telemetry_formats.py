"""Telemetry formats: compiled and Python JSONL give the same bytes, Parquet the same rows, none nothing."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thermospec.cli.m1 import main
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import run_chain
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.kernels import compiled_module
from thermospec.runs.config import RunConfig
from thermospec.runs.targets import load_target
from thermospec.runs.telemetry import (
    FIELDS,
    JsonlWriter,
    NullWriter,
    ParquetWriter,
    TelemetrySink,
    jsonl_lines,
    parquet_available,
)
from thermospec.tsu.drafts import Proposer

needs_compiled = pytest.mark.skipif(compiled_module() is None, reason="thermospec._kernels is not built")
needs_parquet = pytest.mark.skipif(not parquet_available(), reason="pyarrow (extra 'parquet') is not installed")

# eps = 0 with a small K leaves p's tail out of q: ce_gap_nats is infinite, written as null.
SETTINGS = [{}, {"K": 1}, {"K": 4, "eps": 0.0}, {"vocab": 1000, "tau": 0.3}]


def _chunks(steps: int = 5000, chunk: int = 1234, **options: Any) -> tuple[list[ChainChunk], Proposer]:
    config = RunConfig(**options)
    target = load_target(config)
    proposer = Proposer(target.row, config.K, config.tau, config.eps)
    chunks = list(run_chain(target.row, target.pi, proposer.draft, steps, random_stream(config.seed, Stream.CHAIN),
                            chunk=chunk))
    return chunks, proposer


@needs_compiled
@pytest.mark.parametrize("options", SETTINGS)
def test_compiled_jsonl_is_byte_identical_to_the_python_formatter(options: dict[str, Any]) -> None:
    chunks, proposer = _chunks(**options)
    fast, slow = io.StringIO(), io.StringIO()
    fast_writer, slow_writer = JsonlWriter(fast), JsonlWriter(slow, compiled=False)
    for chunk in chunks:
        fast_writer.write(chunk, proposer.draft)
        slow_writer.write(chunk, proposer.draft)
    assert fast.getvalue() == slow.getvalue()
    lines = fast.getvalue().splitlines()
    assert len(lines) == 5000
    records = [json.loads(line) for line in lines[:50]] + [json.loads(lines[-1])]
    assert all(tuple(r) == FIELDS for r in records)
    assert records[-1]["step"] == 4999
    if options.get("eps") == 0.0:
        assert "null" in fast.getvalue()


def test_python_formatter_matches_jsonl_lines() -> None:
    chunks, proposer = _chunks(steps=300, chunk=100)
    out = io.StringIO()
    writer = JsonlWriter(out, compiled=False)
    texts: dict[int, str] = {}
    from thermospec.runs.telemetry import context_fields

    expected = []
    for chunk in chunks:
        writer.write(chunk, proposer.draft)
        for x in set(chunk.prev.tolist()):
            texts[x] = context_fields(proposer.draft(x))
        expected.append(jsonl_lines(chunk, texts))
    assert out.getvalue() == "".join(expected)


@needs_parquet
@pytest.mark.parametrize("options", [{}, {"K": 4, "eps": 0.0}])
def test_parquet_rows_equal_the_jsonl_records(tmp_path: Path, options: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    chunks, proposer = _chunks(steps=3000, chunk=700, **options)
    with TelemetrySink(tmp_path, "parquet") as sink:
        for chunk in chunks:
            sink.writer.write(chunk, proposer.draft)
        assert sink.hexdigest() is None
    table = pq.read_table(tmp_path / "m1_metrics.parquet")
    assert tuple(table.column_names) == FIELDS
    assert table.num_rows == 3000
    rows = table.to_pylist()
    text = io.StringIO()
    writer = JsonlWriter(text, compiled=False)
    for chunk in chunks:
        writer.write(chunk, proposer.draft)
    records = [json.loads(line) for line in text.getvalue().splitlines()]
    assert rows == records


def test_null_writer_and_sink_none_write_nothing(tmp_path: Path) -> None:
    chunks, proposer = _chunks(steps=100)
    with TelemetrySink(tmp_path, "none") as sink:
        assert isinstance(sink.writer, NullWriter) and sink.path is None
        for chunk in chunks:
            sink.writer.write(chunk, proposer.draft)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="--telemetry"):
        TelemetrySink(tmp_path, "csv")  # type: ignore[arg-type]


RUN_ARGS = ["run", "--vocab", "64", "--steps", "4000", "--seed", "9", "--quiet"]
TIMING_KEYS = {"elapsed_s", "tokens_per_s", "metrics_sha256", "telemetry", "versions"}


def _summary(folder: Path) -> dict[str, Any]:
    (run_dir,) = folder.iterdir()
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return summary


@pytest.mark.parametrize("fmt", ["none", pytest.param("parquet", marks=needs_parquet)])
def test_run_summary_does_not_depend_on_the_telemetry_format(tmp_path: Path, fmt: str) -> None:
    assert main([*RUN_ARGS, "--runs-dir", str(tmp_path / "jsonl")]) == 0
    assert main([*RUN_ARGS, "--telemetry", fmt, "--runs-dir", str(tmp_path / fmt)]) == 0
    with_jsonl, other = _summary(tmp_path / "jsonl"), _summary(tmp_path / fmt)
    assert other["telemetry"] == fmt and with_jsonl["telemetry"] == "jsonl"
    assert {k: v for k, v in other.items() if k not in TIMING_KEYS} == {
        k: v for k, v in with_jsonl.items() if k not in TIMING_KEYS
    }
    (run_dir,) = (tmp_path / fmt).iterdir()
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == (["summary.json"] if fmt == "none" else ["m1_metrics.parquet", "summary.json"])


def test_parquet_without_pyarrow_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import thermospec.runs.executor

    monkeypatch.setattr(thermospec.runs.executor, "parquet_available", lambda: False)
    assert main([*RUN_ARGS, "--telemetry", "parquet", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--telemetry parquet" in err and "pyarrow" in err
    assert not (tmp_path / "runs").exists()


def test_streaming_memory_does_not_grow_with_the_run_length() -> None:
    """Peak Python allocations of chain + JSONL formatting: 8x the steps, the same peak (a constant bound)."""
    config = RunConfig(vocab=64)
    target = load_target(config)
    proposer = Proposer(target.row, config.K, config.tau, config.eps)
    proposer.all_drafts(target.V)

    def peak(steps: int) -> int:
        class Counter(io.StringIO):
            size = 0

            def write(self, text: str) -> int:
                self.size += len(text)
                return len(text)

        writer = JsonlWriter(Counter())
        tracemalloc.start()
        for chunk in run_chain(target.row, target.pi, proposer.draft, steps, random_stream(1, Stream.CHAIN),
                               chunk=8192):
            writer.write(chunk, proposer.draft)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    short, long = peak(40_000), peak(320_000)
    assert long < short + 512 * 1024, (short, long)


def test_chunk_arrays_are_independent_of_telemetry() -> None:
    """Telemetry on or off, the engine emits the same tokens (the writer only reads the chunks)."""
    chunks_a, proposer = _chunks(steps=2000, chunk=500)
    writer = JsonlWriter(io.StringIO())
    for chunk in chunks_a:
        writer.write(chunk, proposer.draft)
    chunks_b, _ = _chunks(steps=2000, chunk=500)
    for a, b in zip(chunks_a, chunks_b, strict=True):
        for f in ("prev", "proposed", "emitted", "accepted"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


@needs_parquet
@pytest.mark.parametrize("fails_at", [2, 4])  # a middle row group (seen by the next write), the last (by close)
def test_parquet_written_behind_counts_only_row_groups_on_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                fails_at: int) -> None:
    import errno

    import pyarrow.parquet as pq

    from thermospec.runs.parquet_file import finish_parquet
    from thermospec.runs.storage import OutputError

    chunks, proposer = _chunks(steps=3000, chunk=700)  # 5 chunks: 700, 700, 700, 700, 200
    real = pq.ParquetWriter.write_table
    calls: list[int] = []

    def failing(self: Any, table: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(table.num_rows)
        if len(calls) == fails_at + 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", failing)
    writer = TelemetrySink(tmp_path, "parquet").writer
    assert isinstance(writer, ParquetWriter)
    failures: list[OutputError] = []
    try:  # as the run does: write every chunk until one fails, then finish the file
        for chunk in chunks:
            writer.write(chunk, proposer.draft)
            assert writer.rows_written <= chunk.start  # this chunk's row group is still being written
    except OutputError as exc:
        failures.append(exc)
    try:
        finish_parquet(writer)
    except OutputError as exc:
        failures.append(exc)
    assert len(failures) == 1 and "No space left on device" in str(failures[0]) and "\n" not in str(failures[0])
    assert writer.rows_written == 700 * fails_at  # the failed row group is not counted, nor any after it
    assert pq.read_metadata(tmp_path / "m1_metrics.parquet").num_rows == writer.rows_written  # kept: readable
