"""The Python API a notebook lives in: `run`, `check` and `sweep`, with the CLI's options as keyword arguments.

The command lines (``python -m scripts.run_m1 run|check``) are a thin layer over
these functions: they parse the options, call `run` or `check` (which live in
`thermospec.experiments.single_runs`, so that the commands do not import the sweeps),
and print what they return; the same options, the same defaults, the same files and bytes.
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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thermospec.experiments.single_runs import CheckReport, RunResult, Summary, check, run
from thermospec.experiments.sweep_runs import SweepResult, grid_sweep, seed_sweep
from thermospec.runs.config import OPTIONS as RUN_OPTIONS
from thermospec.runs.config import ConfigError
from thermospec.runs.generate import GenerateResult, generate
from thermospec.runs.settings import check_count, check_folder, check_room, config, config_of, keywords_of

__all__ = ["CheckReport", "ConfigError", "GenerateResult", "RunResult", "Summary", "SweepResult", "check", "check_room",
           "config", "generate", "run", "sweep"]


OPTIONS = tuple(RUN_OPTIONS)
"""The run options `config` takes (and `run`, `check` and `sweep` pass on to it): `RunConfig` declares them."""


def sweep(
    kind: str,
    *,
    runs_dir: str | Path = "runs",
    jobs: int | None = None,
    scheduler: str | None = None,
    seeds: Sequence[int] = (7, 11),
    Ks: Sequence[int] | None = None,
    taus: Sequence[float] | None = None,
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
        The axes (``Ks``, ``taus`` and ``context`` for a grid only, which refuses them given to a seed
        sweep; a grid's default ``Ks`` are (32, 64, 128) and ``taus`` (0.9, 1.0, 1.1), as the command's).
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
    check_folder("runs_dir", runs_dir)
    if jobs is not None:
        check_count("jobs", jobs)
    for option, text in (("scheduler", scheduler), ("context", context)):
        if text is not None and not isinstance(text, str):
            raise ConfigError(f"{option}: must be text, got {text!r} ({type(text).__name__})")
    if kind == "seeds":
        for name, value in (("Ks", Ks), ("taus", taus), ("context", context)):
            if value is not None:  # applied or refused: a seed sweep runs one configuration
                raise ConfigError(f"{name}: a grid sweep's axis; a seed sweep runs one configuration "
                                  f"(give K=..., tau=... for it)")
        base = config_of("a seed sweep", options, {"seed": "a seed sweep takes seeds=(...), not seed"},
                         own=keywords_of(sweep), steps=20_000 if steps is None else steps)
        return seed_sweep(base, seeds, runs_dir, jobs, scheduler)
    if kind == "grid":
        axes = {name: f"a grid takes {name}s=(...), not {name}" for name in ("K", "tau", "seed")}
        base = config_of("a grid sweep", options, axes, own=keywords_of(sweep),
                         steps=15_000 if steps is None else steps)
        return grid_sweep(base, (32, 64, 128) if Ks is None else Ks, (0.9, 1.0, 1.1) if taus is None else taus, seeds,
                          base.steps, context, runs_dir, jobs, scheduler)
    raise ConfigError(f"sweep: kind must be 'seeds' or 'grid', got {kind!r}")
