"""A seed sweep or a grid sweep, run into its folder: what ``sweep_m1`` and ``sweep_m1_grid`` (and the API) do.

Each function validates its input (raising `ConfigError` before anything is
written), creates the sweep folder, runs every configuration on the runner
(``jobs`` local processes or a Dask scheduler), writes the CSV rows as they
finish and ``sweep.json`` at the end, and returns a `SweepResult`.  A SIGINT or
SIGTERM stops the sweep: no new configuration starts, finished ones are kept,
the unfinished ones are listed (`SweepResult.missing`).  Printing is the
command line's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thermospec.experiments.gamma_sweep import GAMMA_CSV, gamma_fields, gamma_points, gamma_task
from thermospec.experiments.grid import GridSweep, grid_task, validate_grid
from thermospec.experiments.parallel import open_runner, stop_signals
from thermospec.experiments.seeds import SeedSweep, seed_settler, seed_task
from thermospec.experiments.sweeps import (
    GRID_CSV,
    GRID_FIELDS,
    SEED_FIELDS,
    SEEDS_CSV,
    SWEEP_JSON,
    SweepOutcome,
    check_values,
    resolve_context,
    run_sweep,
    target_of,
)
from thermospec.runs.config import ConfigError, RunConfig
from thermospec.runs.prepare import prepare_run
from thermospec.runs.progress import progress_bar
from thermospec.runs.storage import create_run_dir, write_json_atomic

__all__ = ["SweepResult", "gamma_grid_sweep", "grid_sweep", "seed_sweep"]

Notice = Callable[[str], None]


@dataclass(frozen=True)
class SweepResult:
    """A sweep's folder and rows, and what did not finish.

    Attributes
    ----------
    folder, csv : Path
        The sweep folder and its CSV (``m1_seeds.csv`` or ``m1_sweep.csv``).
    outcome : SweepOutcome
        Rows in configuration order, elapsed time, and the signal that stopped it, if any.
    missing : list of dict
        The unfinished configurations (``{"seed": 13}``, ``{"K": 8, "tau": 0.9, "seed": 7}``).
    where : str
        Where the configurations ran ("this process", "2 local worker processes", a scheduler).
    K_used : int or None
        For a seed sweep, the K every run used (clamped to V).
    """

    folder: Path
    csv: Path
    outcome: SweepOutcome
    missing: list[dict[str, Any]]
    where: str
    K_used: int | None = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The finished configurations' rows, as in the CSV."""
        return self.outcome.rows

    @property
    def interrupted(self) -> bool:
        """Whether a signal stopped the sweep."""
        return self.outcome.interrupted


GRID_REASON = "its draws are on one fixed context of the bigram target (synthetic or --corpus), one SimTSU draft each"
SEED_SWEEP_REFUSES = {"--gamma": "its table needs per-step runs; sweep γ with sweep_m1_grid --gammas",
                      "--cost-ratio": "it models γ-token blocks; sweep them with sweep_m1_grid --gammas"}
"""Options a seed sweep cannot apply, and why; every other option applies to each seed's full run."""
GAMMA_SWEEP_APPLIES = ("--tokenizer", "--tsu")
"""Options beyond M1 that a γ sweep applies (its blocks run on the target and TSU they name)."""


def refuse_unapplied(base: RunConfig, sweep: str, applies: Sequence[str], reasons: dict[str, str]) -> None:
    """Refuse an option beyond M1 that `sweep` would record in ``sweep.json`` without applying it.

    Raises
    ------
    ConfigError
        One line naming the first such option and why it does not apply.
    """
    for option in base.options_set():
        if option not in applies:
            raise ConfigError(f"{option}: {sweep} would record it without applying it "
                              f"({reasons.get(option, 'not implemented there')}); drop {option}")


def sweep_axis(base: RunConfig, option: str, field: str, values: Sequence[Any]) -> tuple[Any, ...]:
    """The values of a sweep axis, each checked (type and range) as the run option `field` it sets.

    Raises
    ------
    ConfigError
        ``--Ks: every K must be an integer >= 1, got 0``, a value given twice, or no value.
    """
    checked = []
    for value in check_values(option, values):
        try:
            checked.append(getattr(dataclasses.replace(base, **{field: value}), field))
        except ConfigError as exc:
            reason = str(exc).split(": ", 1)[-1]
            raise ConfigError(f"{option}: every {field} {reason}") from None
    return check_values(option, checked)  # 1 and 1.0 are one value


def _sweep_dir(runs_dir: str | Path) -> Path:
    if Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise ConfigError(f"--runs-dir {runs_dir}: is a file, not a folder")
    try:
        return create_run_dir(Path(runs_dir))
    except OSError as exc:
        raise ConfigError(f"--runs-dir {runs_dir}: cannot create a sweep folder ({exc.strerror or exc})") from None


def seed_sweep(
    base: RunConfig,
    seeds: Sequence[int],
    runs_dir: str | Path = "runs",
    jobs: int | None = None,
    scheduler: str | None = None,
    quiet: bool = True,
    notice: Notice | None = None,
) -> SweepResult:
    """One full run per seed (its folder ``seed_<S>/``), and ``m1_seeds.csv``, one row per seed.

    Parameters
    ----------
    base : RunConfig
        The run options; its seed is replaced by each of `seeds`.
    seeds : sequence of int
        Distinct seeds.
    runs_dir : str or Path
        Where the sweep folder goes.
    jobs, scheduler
        Local worker processes (default: all cores), or a Dask scheduler address.
    quiet : bool
        No progress bar.
    notice : callable, optional
        Told of inputs that were adjusted (a K above V is clamped).
    """
    refuse_unapplied(base, "a seed sweep", [o for o in base.options_set() if o not in SEED_SWEEP_REFUSES],
                      SEED_SWEEP_REFUSES)
    seeds = sweep_axis(base, "--seeds", "seed", seeds)
    sweep = SeedSweep(base=base, seeds=seeds)
    first = prepare_run(sweep.config(seeds[0]))  # every seed shares V and the ψ options: one check covers all
    if base.K > first.target.V and notice is not None:
        notice(f"--K {base.K} is above the vocabulary size V = {first.target.V}; using K = {first.target.V}")
    with open_runner(jobs, scheduler) as runner, stop_signals() as stop:
        folder = _sweep_dir(runs_dir)
        csv_path = folder / SEEDS_CSV
        with progress_bar(len(seeds), "seeds", "run", quiet=quiet) as bar:
            outcome = run_sweep(seed_task(sweep, folder), seeds, runner, csv_path, SEED_FIELDS, bar,
                                stop=stop, settle=seed_settler(sweep, folder))
        where = runner.where_for(len(seeds))
        missing = [{"seed": seeds[i]} for i in outcome.missing]
        write_json_atomic(folder / SWEEP_JSON, {
            "kind": "seeds", "config": sweep.base.as_dict() | {"seed": None}, "seeds": list(seeds),
            "finished": len(outcome.rows), "missing": missing, "interrupted_by": outcome.interrupted_by,
            "where": where, "elapsed_s": outcome.elapsed_s,
        })
    return SweepResult(folder, csv_path, outcome, missing, where, K_used=first.K_used)


def grid_sweep(
    base: RunConfig,
    Ks: Sequence[int],
    taus: Sequence[float],
    seeds: Sequence[int],
    steps: int,
    context: str | None = None,
    runs_dir: str | Path = "runs",
    jobs: int | None = None,
    scheduler: str | None = None,
    quiet: bool = True,
    notice: Notice | None = None,
) -> SweepResult:
    """For each (K, τ, seed), `steps` fixed-context draws and corrections; ``m1_sweep.csv``, one row each.

    Parameters
    ----------
    base : RunConfig
        The target options (corpus or vocab and c) and ε; K, τ and seed come from the grid.
    Ks, taus, seeds : sequences
        The grid's axes, each of distinct values.
    steps : int
        Fixed-context draws per configuration.
    context : str, optional
        The fixed context: a token id, or a character of a corpus (default: the most probable under π).
    runs_dir, jobs, scheduler, quiet, notice
        As for `seed_sweep`.
    """
    refuse_unapplied(base, "a grid sweep", (), {o: GRID_REASON for o in base.options_set()})
    Ks = sweep_axis(base, "--Ks", "K", Ks)
    taus = sweep_axis(base, "--taus", "tau", taus)
    seeds = sweep_axis(base, "--seeds", "seed", seeds)
    first = target_of(base, seeds[0])
    token = None if context is None else resolve_context(context, first)
    sweep = GridSweep(base=base, steps=steps, Ks=Ks, taus=taus, seeds=seeds, context=token)
    validate_grid(sweep)
    points = sweep.points()
    with open_runner(jobs, scheduler) as runner, stop_signals() as stop:
        folder = _sweep_dir(runs_dir)
        csv_path = folder / GRID_CSV
        above = [K for K in Ks if K > first.V]
        if above and notice is not None:  # all input is valid by now: a notice, not an error
            notice(f"--Ks {' '.join(map(str, above))} above the vocabulary size V = {first.V}: "
                   f"those rows use K = {first.V} (the CSV's K column is the K asked for)")
        with progress_bar(len(points), "grid", "config", quiet=quiet) as bar:
            outcome = run_sweep(grid_task(sweep), points, runner, csv_path, GRID_FIELDS, bar, stop=stop)
        where = runner.where_for(len(points))
        missing = [{"K": points[i].K, "tau": points[i].tau, "seed": points[i].seed} for i in outcome.missing]
        write_json_atomic(folder / SWEEP_JSON, {
            "kind": "grid", "config": base.as_dict() | {"seed": None, "K": None, "tau": None},
            "Ks": list(Ks), "taus": list(taus), "seeds": list(seeds), "context": context,
            "finished": len(outcome.rows), "missing": missing, "interrupted_by": outcome.interrupted_by,
            "where": where, "elapsed_s": outcome.elapsed_s,
        })
    return SweepResult(folder, csv_path, outcome, missing, where)


def gamma_grid_sweep(
    base: RunConfig,
    gammas: Sequence[int],
    Ks: Sequence[int],
    taus: Sequence[float],
    seeds: Sequence[int],
    steps: int,
    cost_ratios: Sequence[float],
    runs_dir: str | Path = "runs",
    jobs: int | None = None,
    scheduler: str | None = None,
    quiet: bool = True,
) -> SweepResult:
    """For each (K, τ, seed, γ), γ-token blocks of `steps` tokens; ``m1_gamma_sweep.csv``, one row each.

    Each row is `gamma_sweep.gamma_row`: measured and exact accepted length, tokens per
    target call and the modelled speed-up for each cost ratio.  Rows are written as they
    finish, like the other sweeps, so an interrupt keeps every finished configuration.
    """
    refuse_unapplied(base, "a γ sweep", GAMMA_SWEEP_APPLIES, {
        "--gamma": "its --gammas set γ", "--cost-ratio": "its --cost-ratios set the cost ratios"})
    Ks = sweep_axis(base, "--Ks", "K", Ks)
    taus = sweep_axis(base, "--taus", "tau", taus)
    seeds = sweep_axis(base, "--seeds", "seed", seeds)
    gammas = sweep_axis(base, "--gammas", "gamma", gammas)
    bad = [c for c in cost_ratios if not (math.isfinite(c) and c >= 0)]
    if bad:
        raise ConfigError(f"--cost-ratios: each must be a finite number >= 0, got {bad[0]}")
    prepare_run(dataclasses.replace(base, seed=seeds[0], K=Ks[0], tau=taus[0], steps=steps))  # refuse bad input now
    points = gamma_points(gammas, Ks, taus, seeds)
    with open_runner(jobs, scheduler) as runner, stop_signals() as stop:
        folder = _sweep_dir(runs_dir)
        csv_path = folder / GAMMA_CSV
        with progress_bar(len(points), "γ sweep", "config", quiet=quiet) as bar:
            outcome = run_sweep(gamma_task(base, steps, cost_ratios), points, runner, csv_path,
                                gamma_fields(cost_ratios), bar, stop=stop, line_end="\r\n")
        where = runner.where_for(len(points))
        missing = [dataclasses.asdict(points[i]) for i in outcome.missing]
        write_json_atomic(folder / SWEEP_JSON, {
            "kind": "gamma", "config": base.as_dict() | {"seed": None, "K": None, "tau": None},
            "gammas": list(gammas), "Ks": list(Ks), "taus": list(taus), "seeds": list(seeds),
            "cost_ratios": list(cost_ratios), "finished": len(outcome.rows), "missing": missing,
            "interrupted_by": outcome.interrupted_by, "where": where, "elapsed_s": outcome.elapsed_s,
        })
    return SweepResult(folder, csv_path, outcome, missing, where)
