"""A full disk in every mode (issue 18 item 10): whole records and a summary that covers exactly them.

The disk fills through a file-size limit (``RLIMIT_FSIZE``, SIGXFSZ ignored): a
write past it fails with EFBIG, as a full disk fails with ENOSPC, in Python's
writes and in pyarrow's alike.  The summary (a few KB) still fits, as it does
on a real disk once the cut-off chunk is cut back.
"""

from __future__ import annotations

import json
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from thermospec.cli.m1 import main
from thermospec.runs.storage import METRICS_FILE, SUMMARY_FILE
from thermospec.runs.telemetry import parquet_available


@contextmanager
def small_disk(limit: int) -> Iterator[None]:
    """No file may grow past `limit` bytes within the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: int, *extra: str
) -> tuple[Path, dict[str, Any], str]:
    with small_disk(limit):
        status = main(["run", "--vocab", "64", "--K", "16", "--steps", "400000", "--seed", "3", "--quiet",
                       "--runs-dir", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert status == 1, err
    assert err.count("\n") == 1 and "File too large" in err and "Traceback" not in err
    (run_dir,) = tmp_path.iterdir()
    summary: dict[str, Any] = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["interrupted"] is True and "File too large" in summary["interrupted_by"]
    return run_dir, summary, err


def _whole_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path}: a cut record"
    return [json.loads(line) for line in data.splitlines()]


def test_gamma_run_on_a_full_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, summary, err = _run(tmp_path, capsys, 1 << 20, "--gamma", "4")
    records = _whole_lines(run_dir / "m1_blocks.jsonl")
    assert str(run_dir / "m1_blocks.jsonl") in err  # the message names the file
    assert summary["blocks"] == len(records) > 0


def test_chains_on_a_full_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, summary, err = _run(tmp_path, capsys, 4 << 20, "--chains", "8")
    assert "m1_metrics.jsonl" in err and str(run_dir) in err
    kept = summary.get("steps_per_chain", summary["steps"])  # a chunk of 8 chains is 8 x 22 MB: none fits here
    for b in range(8):
        chain = run_dir / f"chain_{b:04d}"
        assert len(_whole_lines(chain / METRICS_FILE)) == kept  # every chain cut back to the same chunks
        if kept:
            per_chain = json.loads((chain / SUMMARY_FILE).read_text())
            assert per_chain["steps"] == kept and per_chain["interrupted"] is True


@pytest.mark.skipif(not parquet_available(), reason="pyarrow not installed")
@pytest.mark.parametrize("chains", ["1", "8"])
def test_parquet_on_a_full_disk_leaves_no_unreadable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chains: str
) -> None:
    import pyarrow.parquet as pq

    run_dir, summary, err = _run(tmp_path, capsys, 1 << 20, "--chains", chains, "--telemetry", "parquet")
    parquet = run_dir / "m1_metrics.parquet"
    assert str(parquet) in err
    if parquet.exists():  # finished: readable, and the summary covers exactly its rows
        rows = pq.read_metadata(parquet).num_rows
        assert rows == summary["steps"] * int(chains)
    else:
        assert "removed it" in err and "removed it" in summary["interrupted_by"]


def test_seed_sweep_on_a_full_disk_writes_its_sweep_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 18 item 17: the sweep stops at the failed write, as on a signal, and still says what is missing."""
    from thermospec.cli.sweep import seed_main

    with small_disk(1 << 20):
        status = seed_main(["--vocab", "64", "--steps", "200000", "--seeds", "1", "2", "--jobs", "1", "--quiet",
                            "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1, err
    assert err.count("\n") == 1 and "File too large" in err and "Traceback" not in err
    (folder,) = tmp_path.iterdir()
    record = json.loads((folder / "sweep.json").read_text())
    assert record["finished"] == 0 and record["missing"] == [{"seed": 1}, {"seed": 2}]
    assert "seed_1" in record["interrupted_by"] and "File too large" in record["interrupted_by"]
