"""A run on disk: its folder, its telemetry stream and its summary.

Everything that can fail on the user's input (options, corpus, ε range, ψ
crafting) is done by `prepare_run` before anything is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from thermospec import __version__
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import ReportError, run_chain
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.tally import RunTally
from thermospec.runs.checklist import guide_checklist
from thermospec.runs.interrupts import Interruption, interruption_guard, signal_name
from thermospec.runs.prepare import PreparedRun, sparse_rows, target_description
from thermospec.runs.storage import OutputError, write_text_atomic
from thermospec.runs.summary import summarise_run
from thermospec.runs.telemetry import TelemetryFormat, TelemetrySink

__all__ = ["METRICS_FILE", "SUMMARY_FILE", "create_run_dir", "execute_run", "write_json_atomic"]


METRICS_FILE = "m1_metrics.jsonl"


SUMMARY_FILE = "summary.json"


def create_run_dir(runs_dir: str | Path) -> Path:
    """Create a fresh ``runs_dir/<UTC timestamp>`` folder, never reusing an existing one."""
    root = Path(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1, 10_000):
        candidate = root / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{root}: too many runs named {stamp}")


def write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    """Write JSON through a temporary file and a rename: never a half-written file.

    Raises
    ------
    thermospec.storage.OutputError
        One line naming the file and the reason (full disk, unwritable folder).
    """
    write_text_atomic(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


def software_versions() -> dict[str, str]:
    """Versions of thermospec, Python, NumPy and SciPy, and the platform, for the summary."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import numpy

    try:
        scipy_version = version("scipy")  # metadata only: no need to import SciPy here
    except PackageNotFoundError:
        scipy_version = "not installed"
    return {
        "thermospec": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy_version,
        "platform": platform.platform(),
    }


def execute_run(
    run: PreparedRun,
    run_dir: Path,
    on_chunk: Callable[[ChainChunk], None] | None = None,
    telemetry: TelemetryFormat = "jsonl",
) -> dict[str, Any]:
    """Run the chain, stream its telemetry to `run_dir` and write ``summary.json``.

    A SIGINT or SIGTERM (`thermospec.interrupts`) or a failed write stops the
    run after the last whole chunk: the JSONL then holds whole records only and
    the summary, marked ``"interrupted": true``, covers exactly those steps.

    Returns
    -------
    dict
        The summary, as written.

    Raises
    ------
    thermospec.storage.OutputError
        A write failed (full disk...); the summary of the steps kept was written if it could be.
    thermospec.engine.ReportError
        The TSU misreported a draw; the summary of the steps before it was written.
    """
    config, target = run.config, run.target
    started = time.perf_counter()
    tally = RunTally(target.V, track_transitions=True)
    rng = random_stream(config.seed, Stream.CHAIN)
    failure: OutputError | ReportError | None = None
    with interruption_guard() as stop:  # a signal now only stops the loop between whole chunks
        with TelemetrySink(run_dir, telemetry) as out:  # --telemetry jsonl (METRICS_FILE) | parquet | none
            writer = out.writer
            try:
                sparse = sparse_rows(run)
                chunks = run_chain(target.row, target.pi, run.proposer.draft, config.steps, rng, sparse=sparse)
                for chunk in chunks:
                    writer.write(chunk, run.proposer.draft)
                    tally.update(chunk)
                    if on_chunk is not None:
                        on_chunk(chunk)
                    if stop.requested:
                        break
            except (OutputError, ReportError) as exc:
                failure = exc
            metrics_sha256 = out.hexdigest()
        summary = _run_summary(run, tally, time.perf_counter() - started, stop, failure, metrics_sha256)
        summary["telemetry"] = telemetry
        try:
            write_json_atomic(run_dir / SUMMARY_FILE, summary)
        except OutputError:
            if failure is None:
                raise
    if failure is not None:
        raise failure
    return summary


def _run_summary(
    run: PreparedRun, tally: RunTally, elapsed: float, stop: Interruption,
    failure: Exception | None, metrics_sha256: str | None,
) -> dict[str, Any]:
    """The summary of the steps written (all of them unless interrupted)."""
    config, target = run.config, run.target
    if tally.steps:
        stats = summarise_run(tally, run.proposer.draft, target.pi, target.row)
    else:  # stopped before the first chunk: nothing to aggregate
        stats = {k: None for k in ("accept_rate", "mean_overlap", "mean_ce_gap", "chi2_stat", "chi2_dof",
                                   "p_value")} | {"steps": 0, "checklist": {}}
    summary: dict[str, Any] = {
        "accept_rate": stats.pop("accept_rate"),
        "mean_overlap": stats.pop("mean_overlap"),
        "mean_ce_gap": stats.pop("mean_ce_gap"),
        "chi2_stat": stats.pop("chi2_stat"),
        "chi2_dof": stats.pop("chi2_dof"),
        "p_value": stats.pop("p_value"),
        **stats,
        "elapsed_s": elapsed,
        "tokens_per_s": tally.steps / elapsed if elapsed > 0 else None,
        "config": {**config.as_dict(), "K_used": run.K_used},
        "target": target_description(run),
        "thermospec_version": __version__,
        "versions": software_versions(),
        "interrupted": tally.steps < config.steps,
        "interrupted_by": signal_name(stop.signum) if stop.signum is not None
        else (str(failure) if failure is not None else None),
        "metrics_sha256": metrics_sha256,
    }
    summary["checklist"] = guide_checklist(run, summary.pop("checklist"))
    return summary
