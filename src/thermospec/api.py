"""The Python API a notebook lives in: `run`, `check` and `sweep`, with the CLI's options as keyword arguments.

The command lines (``python -m scripts.run_m1 run|check``) are a thin layer over
these functions: the same options, the same defaults, the same files and bytes.
A run returns a `RunResult` (its folder, its summary as a `Summary`, and its
telemetry as a pyarrow table); a check returns a `CheckReport`.

Example
-------
>>> import thermospec
>>> result = thermospec.run(vocab=64, K=8, steps=2000, runs_dir="runs")   # doctest: +SKIP
>>> result.summary.accept_rate, result.summary.mean_overlap               # doctest: +SKIP
>>> result.telemetry().to_pandas().groupby("prev_token").accepted.mean()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thermospec.analysis.block_checks import checks_of
from thermospec.analysis.checks import POOLED_STEPS
from thermospec.experiments.sweep_runs import SweepResult, grid_sweep, seed_sweep
from thermospec.runs.checklist import DEFAULT_CHECK_STEPS, CheckResult
from thermospec.runs.config import OPTIONS as RUN_OPTIONS
from thermospec.runs.config import ConfigError, RunConfig
from thermospec.runs.executor import check_mode_options, execute_run
from thermospec.runs.generate import GenerateResult, generate
from thermospec.runs.prepare import inject_fault, prepare_run
from thermospec.runs.settings import check_room, config
from thermospec.runs.storage import METRICS_FILE, SUMMARY_FILE, create_run_dir
from thermospec.runs.telemetry import PARQUET_FILE, TelemetryFormat
from thermospec.tsu.faults import Fault, FaultError

__all__ = ["CheckReport", "ConfigError", "GenerateResult", "RunResult", "Summary", "SweepResult", "check", "check_room",
           "config", "generate", "run", "sweep"]


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
    """What `run` wrote: the run folder and its summary; the telemetry is read on demand."""

    run_dir: Path
    summary: Summary

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


def _count(option: str, value: Any, low: int = 1) -> None:
    """Refuse a count of the API's own (``check_steps``, ``jobs``...) that is not an integer >= `low`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{option}: must be an integer >= {low}, got {value!r} ({type(value).__name__})")


def _folder(option: str, value: Any) -> None:
    """Refuse a folder given as anything but text or a path."""
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{option}: must be a folder (text or a path), got {value!r} ({type(value).__name__})")


OPTIONS = tuple(RUN_OPTIONS)
"""The run options `config` takes (and `run`, `check` and `sweep` pass on to it): `RunConfig` declares them."""


def _config(where: str, options: dict[str, Any], not_here: dict[str, str] | None = None, **defaults: Any) -> RunConfig:
    """`config` of the options given to `where`, refusing a name that is not an option there (one line)."""
    for name in options:
        if name in (not_here or {}):
            raise ConfigError(f"{name}: {(not_here or {})[name]}")
        if name not in OPTIONS:
            raise ConfigError(f"{name}: not an option of {where} (options: {', '.join(OPTIONS)})")
    return config(**(defaults | options))


def run(
    *,
    runs_dir: str | Path = "runs",
    telemetry: TelemetryFormat = "jsonl",
    chains: int = 1,
    **options: Any,
) -> RunResult:
    """Run the chain (any mode) into a fresh ``runs_dir/<UTC timestamp>/``, as ``run_m1 run`` does.

    Parameters
    ----------
    runs_dir : str or Path
        Where run folders go.
    telemetry : {"jsonl", "parquet", "none"}
        Per-step records.
    chains : int
        Independent chains (``--chains``).
    **options
        The run's options, as `config` takes them (``vocab``, ``K``, ``tau``, ``eps``, ``steps``,
        ``seed``, ``corpus``, ``gamma``, ...).

    Returns
    -------
    RunResult
        The folder, the summary and (on demand) the telemetry.

    Raises
    ------
    ConfigError, PayloadError, CorpusError
        Bad input, before anything is written.
    """
    _folder("runs_dir", runs_dir)
    cfg = _config("thermospec.run", options)
    check_mode_options(cfg, telemetry, chains)
    check_room(cfg, telemetry, chains, runs_dir)
    prepared = prepare_run(cfg)
    run_dir = create_run_dir(runs_dir)
    summary = execute_run(prepared, run_dir, telemetry=telemetry, chains=chains)
    return RunResult(run_dir=run_dir, summary=Summary.from_record(summary))


def check(
    *,
    check_steps: int = DEFAULT_CHECK_STEPS,
    pooled_steps: int = POOLED_STEPS,
    fault: str | Fault | None = None,
    **options: Any,
) -> CheckReport:
    """The guide's checklist and the pooled TSU χ², as ``run_m1 check`` runs them; writes nothing.

    Parameters
    ----------
    check_steps, pooled_steps : int
        Draws per fixed context for the guide's χ² and for the pooled TSU χ².
    fault : str or Fault, optional
        A fault for every context's TSU, e.g. ``"bias:0.05"`` (``--inject-fault``).
    **options
        The run's options, as `config` takes them.
    """
    if options.get("tsu", "sim") == "thrml":
        raise ConfigError("--tsu thrml: check runs SimTSU's table-driven paths; check THRML with run --tsu thrml")
    _count("check_steps", check_steps)
    _count("pooled_steps", pooled_steps)
    if fault is not None and not isinstance(fault, (str, Fault)):
        raise ConfigError(f"fault: must be text such as 'bias:0.2' or a Fault, got {fault!r}")
    prepared = prepare_run(_config("thermospec.check", options))
    if fault is not None:
        try:
            fault = Fault.parse(fault) if isinstance(fault, str) else fault
        except FaultError as exc:
            raise ConfigError(f"fault: {exc}") from None
        prepared = inject_fault(prepared, fault)
    return CheckReport(checks_of(prepared, check_steps, pooled_steps))


def sweep(
    kind: str,
    *,
    runs_dir: str | Path = "runs",
    jobs: int | None = None,
    scheduler: str | None = None,
    seeds: Sequence[int] = (7, 11),
    Ks: Sequence[int] = (32, 64, 128),
    taus: Sequence[float] = (0.9, 1.0, 1.1),
    context: str | None = None,
    steps: int | None = None,
    **options: Any,
) -> SweepResult:
    """A seed sweep (``kind="seeds"``, as ``sweep_m1``) or a (K, τ, seed) grid (``kind="grid"``, as ``sweep_m1_grid``).

    Parameters
    ----------
    kind : {"seeds", "grid"}
        One full run per seed (folders ``seed_<S>/`` and ``m1_seeds.csv``), or fixed-context
        draws per (K, τ, seed) (``m1_sweep.csv``).
    runs_dir, jobs, scheduler
        Where the sweep folder goes; local worker processes (default: all cores) or a Dask scheduler.
    seeds, Ks, taus, context
        The axes (``Ks``, ``taus`` and ``context`` for a grid only).
    steps : int, optional
        Steps per configuration (default: 20,000 for seeds, 15,000 for a grid, as the commands).
    **options
        The target and ψ options, as `config` takes them (``K``, ``tau`` for a seed sweep).  A seed
        sweep makes full runs, so every option applies except ``gamma``; a grid draws on one fixed
        context, so only the target (``corpus`` or ``vocab`` and ``c``) and ``eps`` apply.  An option
        the sweep would not apply is refused rather than recorded.

    Returns
    -------
    SweepResult
        The folder, the CSV, its rows (`SweepResult.rows`) and the unfinished configurations.

    Raises
    ------
    ConfigError
        A value of the wrong type or range, an option the sweep would not apply, an unknown name.
    """
    _folder("runs_dir", runs_dir)
    if jobs is not None:
        _count("jobs", jobs)
    for option, text in (("scheduler", scheduler), ("context", context)):
        if text is not None and not isinstance(text, str):
            raise ConfigError(f"{option}: must be text, got {text!r} ({type(text).__name__})")
    if kind == "seeds":
        base = _config("a seed sweep", options, {"seed": "a seed sweep takes seeds=(...), not seed"},
                       steps=20_000 if steps is None else steps)
        return seed_sweep(base, seeds, runs_dir, jobs, scheduler)
    if kind == "grid":
        axes = {name: f"a grid takes {name}s=(...), not {name}" for name in ("K", "tau", "seed")}
        base = _config("a grid sweep", options, axes, steps=15_000 if steps is None else steps)
        return grid_sweep(base, Ks, taus, seeds, base.steps, context, runs_dir, jobs, scheduler)
    raise ConfigError(f"sweep: kind must be 'seeds' or 'grid', got {kind!r}")
