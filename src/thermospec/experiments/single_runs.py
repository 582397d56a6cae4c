"""One run into its folder, or one check: `thermospec.run` and `thermospec.check`, which ``run_m1 run|check`` call.

`run` and `check` are the Python API's (``thermospec.api`` exports them); they live
here, beside the sweeps' `sweep_runs`, so that the command line reaches them without
importing the sweep and ``generate`` machinery it does not use.  Each validates its
input (raising `ConfigError`, `PayloadError` or `CorpusError` before anything is
written), then does the work; what a caller shows while it runs (a progress bar on a
terminal, a notice of a clamped option, the injected fault) comes through keyword
hooks, and printing the result is the caller's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thermospec.analysis.block_checks import checks_of
from thermospec.analysis.checks import POOLED_STEPS
from thermospec.runs.checklist import DEFAULT_CHECK_STEPS, CheckResult
from thermospec.runs.config import ConfigError
from thermospec.runs.executor import check_mode_options, execute_run
from thermospec.runs.interrupts import signal_named
from thermospec.runs.prepare import PreparedRun, inject_fault, prepare_run
from thermospec.runs.progress import progress_bar
from thermospec.runs.replay import ReplayComparison, compare_replay, replay_plan
from thermospec.runs.settings import (
    check_count,
    check_folder,
    check_options,
    check_room,
    check_runs_dir,
    clamp_notices,
    config,
    config_of,
    keywords_of,
    open_run_dir,
)
from thermospec.runs.storage import METRICS_FILE, SUMMARY_FILE
from thermospec.runs.telemetry import PARQUET_FILE, TelemetryFormat
from thermospec.tsu.faults import Fault, FaultError

__all__ = ["CheckReport", "Notify", "RunResult", "Summary", "check", "run"]

Notify = Callable[[str], None]
"""A hook that receives one line (a notice, an announcement) as soon as it is known."""

THRML_CHECK = ("--tsu thrml: check runs SimTSU's table-driven paths; "
               "check THRML with run --tsu thrml (χ² in summary.json) or tests/test_thrml_backend.py")


@dataclass(frozen=True)
class Summary:
    """A run's ``summary.json``: the fields every mode has, typed, and the whole record in `record`.

    Attributes
    ----------
    steps : int
        Steps (tokens, for γ-blocks) the summary covers.
    accept_rate, mean_overlap, mean_ce_gap : float or None
        The guide's aggregates (None for γ-block runs, which report per block).
    p_value : float or None
        The run χ² against ``N pi`` (SPEC §6).
    elapsed_s, tokens_per_s : float or None
        Wall time of the engine and telemetry, and the throughput.
    interrupted : bool
        Whether fewer steps than asked were run (a signal, a full disk, a misreporting TSU).
    metrics_sha256 : str or None
        SHA-256 of the telemetry file (what ``--replay`` compares).
    record : dict
        Every field of ``summary.json``, as written.
    """

    steps: int
    accept_rate: float | None
    mean_overlap: float | None
    mean_ce_gap: float | None
    p_value: float | None
    elapsed_s: float | None
    tokens_per_s: float | None
    interrupted: bool
    metrics_sha256: str | None
    record: dict[str, Any] = field(repr=False)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Summary:
        """The summary of a ``summary.json`` document."""
        get = record.get
        return cls(steps=int(get("steps") or 0), accept_rate=get("accept_rate"), mean_overlap=get("mean_overlap"),
                   mean_ce_gap=get("mean_ce_gap"), p_value=get("p_value"), elapsed_s=get("elapsed_s"),
                   tokens_per_s=get("tokens_per_s"), interrupted=bool(get("interrupted", False)),
                   metrics_sha256=get("metrics_sha256"), record=record)

    @classmethod
    def read(cls, path: str | Path) -> Summary:
        """Read ``summary.json`` (or a run folder holding one)."""
        path = Path(path)
        return cls.from_record(json.loads((path / SUMMARY_FILE if path.is_dir() else path).read_text()))


@dataclass(frozen=True)
class RunResult:
    """What `run` wrote: the run folder and its summary; the telemetry is read on demand.

    Attributes
    ----------
    run_dir : Path
        The run's folder.
    summary : Summary
        Its ``summary.json``.
    wall_s : float or None
        Wall time of the run with its summary's statistics and checklist (``elapsed_s`` is the
        engine's and the telemetry's only).
    replay : ReplayComparison or None
        With ``replay``: the new records against the original's (``.identical``, ``.describe()``);
        None otherwise, and when a signal stopped the replay.
    """

    run_dir: Path
    summary: Summary
    wall_s: float | None = field(default=None, repr=False)
    replay: ReplayComparison | None = field(default=None, repr=False)

    @property
    def telemetry_path(self) -> Path | None:
        """The per-step (or per-block) records file, None with ``telemetry="none"`` or ``chains > 1``."""
        for name in (METRICS_FILE, PARQUET_FILE, "m1_blocks.jsonl"):
            if (self.run_dir / name).is_file():
                return self.run_dir / name
        return None

    def telemetry(self) -> Any:
        """The records as a ``pyarrow.Table`` (``.to_pandas()`` for a DataFrame); needs the extra ``parquet``.

        Raises
        ------
        ModuleNotFoundError
            pyarrow is not installed; the message names the extra (``thermospec[parquet]``).
        FileNotFoundError
            The run wrote no single records file (``telemetry="none"``, or ``chains > 1``:
            read ``chain_<b>/m1_metrics.jsonl`` or the shared Parquet file).
        """
        try:
            import pyarrow.json as pa_json  # optional extra: only reading telemetry pays for it
            import pyarrow.parquet as pq
        except ImportError:
            raise ModuleNotFoundError("RunResult.telemetry() reads the records with pyarrow, which is not installed: "
                                      "pip install 'thermospec[parquet]' (or read the JSONL at "
                                      "RunResult.telemetry_path line by line with json)", name="pyarrow") from None

        path = self.telemetry_path
        if path is None:
            raise FileNotFoundError(f"{self.run_dir}: no records file (telemetry 'none', or one file per chain)")
        return pq.read_table(path) if path.suffix == ".parquet" else pa_json.read_json(path)


@dataclass(frozen=True)
class CheckReport:
    """The checks of `check`: the guide's checklist in its order, then the stronger pooled TSU χ².

    Attributes
    ----------
    results : list of CheckResult
        Each check's name, verdict (``.verdict``: PASS, FAIL or SKIP) and the numbers behind it.
    """

    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        """Whether no check failed (skipped checks tested nothing and fail nothing)."""
        return all(r.passed or r.skipped for r in self.results)

    def __str__(self) -> str:
        width = max(len(r.name) for r in self.results)
        return "\n".join(f"{r.verdict}  {r.name:<{width}}  {r.detail}" for r in self.results)


def _notify(notify: Notify | None, prepared: PreparedRun) -> None:
    """Send the notices of options the target clamps (`clamp_notices`) to `notify`."""
    if notify is not None:
        for line in clamp_notices(prepared.config, prepared.target.V):
            notify(line)


def run(
    *,
    runs_dir: str | Path = "runs",
    telemetry: TelemetryFormat = "jsonl",
    chains: int = 1,
    replay: str | Path | None = None,
    progress: bool = False,
    notify: Notify | None = None,
    **options: Any,
) -> RunResult:
    """Run the chain (any mode) into a fresh ``runs_dir/<UTC timestamp>/``; ``run_m1 run`` is this call.

    Parameters
    ----------
    runs_dir : str or Path
        Where run folders go.
    telemetry : {"jsonl", "parquet", "none"}
        Per-step records.
    chains : int
        Independent chains (``--chains``).
    replay : str or Path, optional
        Rerun a recorded run (its folder or ``summary.json``) with its configuration, and compare the
        new records with the original's (`RunResult.replay`); no run option may then be given.
    progress : bool
        Draw a progress bar on stderr while the run steps, when stderr is a terminal (one chain only).
    notify : callable, optional
        Called with each notice of an option the target clamps (``--K`` above V...), before the run
        folder is made.
    **options
        The run's options, as `config` takes them (``vocab``, ``K``, ``tau``, ``eps``, ``steps``,
        ``seed``, ``corpus``, ``gamma``, ...).

    Returns
    -------
    RunResult
        The folder, the summary, the wall time, the replay's comparison and (on demand) the telemetry.
        A run a signal stopped returns the summary of the steps written (``interrupted_by``).

    Raises
    ------
    ConfigError, PayloadError, CorpusError
        Bad input, before anything is written.
    OutputError, ReportError
        A failed write or a misreporting TSU; the summary of the steps kept is written.
    KeyboardInterrupt, Terminated
        A second signal stopped the run at once (whole records, no summary).
    """
    check_folder("runs_dir", runs_dir)
    check_options("thermospec.run", options, own=keywords_of(run))
    plan = replay_plan(replay, options) if replay is not None else None
    settings = plan.config if plan is not None else config(**options)
    check_mode_options(settings, telemetry, chains, replay=plan is not None)
    prepared = prepare_run(settings)
    _notify(notify, prepared)
    check_runs_dir(runs_dir)
    check_room(settings, telemetry, chains, runs_dir)
    run_dir = open_run_dir(runs_dir)
    started = time.perf_counter()
    unit = "token" if settings.gamma is not None else "step"
    with progress_bar(settings.steps, "run", unit, quiet=not progress or chains > 1) as bar:
        summary = execute_run(prepared, run_dir, on_progress=bar.update, telemetry=telemetry, chains=chains)
    wall_s = time.perf_counter() - started
    stopped = signal_named(summary.get("interrupted_by")) is not None
    comparison = compare_replay(plan, summary) if plan is not None and not stopped else None
    return RunResult(run_dir=run_dir, summary=Summary.from_record(summary), wall_s=wall_s, replay=comparison)


def check(
    *,
    check_steps: int = DEFAULT_CHECK_STEPS,
    pooled_steps: int = POOLED_STEPS,
    fault: str | Fault | None = None,
    notify: Notify | None = None,
    announce: Notify | None = None,
    **options: Any,
) -> CheckReport:
    """The guide's checklist and the pooled TSU χ²; ``run_m1 check`` is this call.  Writes nothing.

    Parameters
    ----------
    check_steps, pooled_steps : int
        Draws per fixed context for the guide's χ² and for the pooled TSU χ².
    fault : str or Fault, optional
        A fault for every context's TSU, e.g. ``"bias:0.05"`` (``--inject-fault``).
    notify : callable, optional
        Called with each notice of an option the target clamps, once the target is loaded.
    announce : callable, optional
        Called with the line naming the injected fault, before the checks run.
    **options
        The run's options, as `config` takes them.
    """
    if options.get("tsu", "sim") == "thrml":
        raise ConfigError(THRML_CHECK)
    check_count("check_steps", check_steps)
    check_count("pooled_steps", pooled_steps)
    if fault is not None and not isinstance(fault, (str, Fault)):
        raise ConfigError(f"fault: must be text such as 'bias:0.2' or a Fault, got {fault!r}")
    prepared = prepare_run(config_of("thermospec.check", options, own=keywords_of(check)))
    _notify(notify, prepared)
    if fault is not None:
        try:
            fault = Fault.parse(fault) if isinstance(fault, str) else fault
        except FaultError as exc:
            raise ConfigError(f"fault: {exc}") from None
        if announce is not None:
            announce(f"injected fault: {fault} (every context's TSU)")
        prepared = inject_fault(prepared, fault)
    return CheckReport(checks_of(prepared, check_steps, pooled_steps))
