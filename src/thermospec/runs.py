"""A run on disk: its folder, its telemetry stream and its summary.

Everything that can fail on the user's input (options, corpus, ε range, ψ
crafting) is done by `prepare_run` before anything is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec import __version__
from thermospec.compact import SparseProposer, SparseRows, SupportSource
from thermospec.config import RunConfig, Stream, check_eps, load_target, random_stream
from thermospec.engine import ChainChunk, ReportError, run_chain
from thermospec.interrupts import Interruption, interruption_guard, signal_name
from thermospec.proposer import Proposer
from thermospec.storage import OutputError, write_text_atomic
from thermospec.summary import RunTally, summarise_run
from thermospec.targets import BigramTarget, LazySyntheticTarget
from thermospec.telemetry import TelemetryFormat, TelemetrySink

__all__ = [
    "METRICS_FILE",
    "SUMMARY_FILE",
    "PreparedRun",
    "create_run_dir",
    "execute_run",
    "prepare_run",
    "write_json_atomic",
]

METRICS_FILE = "m1_metrics.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True, eq=False)
class PreparedRun:
    """A validated configuration with its target and proposer, ready to run."""

    config: RunConfig
    target: BigramTarget
    proposer: Proposer

    @property
    def K_used(self) -> int:
        """The K asked for, clamped to the vocabulary size."""
        return min(self.config.K, self.target.V)


def prepare_run(config: RunConfig) -> PreparedRun:
    """Load the target and craft ψ for every context; raise before anything is written.

    Raises
    ------
    thermospec.targets.CorpusError, thermospec.config.ConfigError, thermospec.payload.PayloadError
    """
    target = load_target(config)
    check_eps(config, target.V)
    proposer = _proposer(config, target)
    return PreparedRun(config=config, target=target, proposer=proposer)


COMPACT_ABOVE_V = 1024
"""Dense synthetic targets above this V step on compact tables (dense tables of every context exceed 256 MB)."""


def sparse_rows(run: PreparedRun) -> SparseRows | None:
    """The target's rows by their supports when the run steps on compact tables, else None (dense tables).

    Compact tables (`thermospec.compact`) emit the same tokens as dense ones; they are
    used where dense tables of every context would not fit `DEFAULT_TABLE_BYTES`: a
    `LazySyntheticTarget` (drafted by its `SparseProposer`) and a dense synthetic
    target of V > `COMPACT_ABOVE_V`.  Never for a fault-injected or THRML proposer,
    which samples something the payload alone does not say.
    """
    target = run.target
    if isinstance(target, LazySyntheticTarget) and type(run.proposer) is SparseProposer:
        s = min(target.support, target.V)
        return SparseRows(support=run.proposer.support_of, max_support=s, max_ids=min(run.config.K, s),
                          tables=run.proposer.tables)
    if type(target) is BigramTarget and type(run.proposer) is Proposer and target.V > COMPACT_ABOVE_V:
        widest = int(np.count_nonzero(target.P, axis=1).max())
        return SparseRows(support=dense_support(target.row), max_support=widest, max_ids=min(run.config.K, widest))
    return None


def dense_support(row: Callable[[int], NDArray[np.float64]]) -> SupportSource:
    """``support(x)`` of a dense row source: its increasing tokens of p > 0 and their probabilities."""

    def support(x: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        p = row(x)
        tokens = np.flatnonzero(p).astype(np.int64)
        return tokens, p[tokens]

    return support


def _proposer(config: RunConfig, target: BigramTarget) -> Proposer:
    """Craft ψ for every context; for a token (BPE) target, a memory-bounded cache and the likeliest context."""
    from thermospec.tokenized import TokenBigramTarget  # stdlib + numpy only; tokenizers is imported lazily

    if isinstance(target, LazySyntheticTarget):  # large V, sparse rows: O(s log s) per context, bounded cache
        proposer: Proposer = SparseProposer(target.row, target.support_row, target.V, config.K, config.tau, config.eps)
        proposer.draft(int(target.pi.argmax()))
    elif isinstance(target, TokenBigramTarget):  # large V: bounded caches
        from thermospec.tokenized import BoundedProposer

        proposer = BoundedProposer(target.row, config.K, config.tau, config.eps, target.V)
        proposer.draft(int(target.pi.argmax()))
    else:
        proposer = Proposer(target.row, config.K, config.tau, config.eps)
        proposer.all_drafts(target.V)
    if config.tsu == "thrml":
        from thermospec.thrml_backend import thrml_proposer

        proposer = thrml_proposer(proposer, target.V, config.seed)
    return proposer


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


def target_description(run: PreparedRun) -> dict[str, Any]:
    """Where the target came from, for the summary."""
    target = run.target
    return {
        "source": target.source,
        "V": target.V,
        "corpus": run.config.corpus,
        "corpus_sha256": target.corpus_sha256,
        "vocabulary": None if target.vocabulary is None else "".join(target.vocabulary),
        "stationary": "unique" if target.stationary_unique
        else "not unique: long-run average from a uniform start",
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


def guide_checklist(run: PreparedRun, run_items: dict[str, bool]) -> dict[str, bool | None]:
    """The guide's success checklist as booleans, as `check` evaluates it.

    `run_items` are the items the run itself measures (|accept - overlap|, this
    run's ψ sizes); the fixed-context χ² (4 contexts, `check`'s default n and
    streams, so it agrees with `check`) and the ψ bound for every K <= 128 are
    added here.  A few milliseconds at the default settings.
    """
    from thermospec.checks import DEFAULT_CHECK_STEPS, MAX_CHECKED_K, fixed_context_check
    from thermospec.payload import payload_size
    from thermospec.summary import PSI_BYTES_LIMIT

    V = run.target.V
    return {
        "fixed_context_chi2_3_of_4": fixed_context_check(run, DEFAULT_CHECK_STEPS).passed,
        **run_items,
        "psi_bytes_le_1024_every_K_le_128": payload_size(min(MAX_CHECKED_K, V), V) <= PSI_BYTES_LIMIT,
    }
