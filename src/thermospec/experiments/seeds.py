"""The seed sweep: one full M1 run per seed, its row and the printed table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from thermospec.experiments.parallel import single_threaded_blas
from thermospec.experiments.sweeps import SeedInterrupted, format_number, format_table
from thermospec.runs.config import RunConfig
from thermospec.runs.executor import execute_run
from thermospec.runs.prepare import prepare_run

__all__ = [
    "SeedSweep",
    "format_seed_table",
    "run_seed",
    "seed_row",
]




@dataclass(frozen=True)
class SeedSweep:
    """One full M1 run per seed.

    Attributes
    ----------
    base : RunConfig
        The run options; its seed is replaced by each of `seeds`.
    seeds : tuple of int
    """

    base: RunConfig
    seeds: tuple[int, ...]

    def config(self, seed: int) -> RunConfig:
        """The run of one seed."""
        return replace(self.base, seed=seed)


def seed_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The CSV row of one seed's run, from its summary."""
    return {
        "seed": summary["config"]["seed"],
        "steps": summary["steps"],
        "accept_rate": summary["accept_rate"],
        "mean_overlap": summary["mean_overlap"],
        "accept_overlap_gap": summary["accept_overlap_gap"],
        "mean_ce_gap": math.inf if summary["mean_ce_gap"] is None else summary["mean_ce_gap"],
        "chi2_stat": summary["chi2_stat"],
        "chi2_dof": summary["chi2_dof"],
        "p_value": summary["p_value"],
        "psi_bytes_max": summary["psi_bytes_max"],
    }


def seed_dir_name(seed: int) -> str:
    """Sub-folder of a seed's run inside the sweep folder."""
    return f"seed_{seed}"


def run_seed(sweep: SeedSweep, sweep_dir: str, seed: int) -> dict[str, Any]:
    """Run one seed exactly as ``run_m1 run --seed`` would, into ``sweep_dir/seed_<seed>``; return its row."""
    single_threaded_blas()
    run = prepare_run(sweep.config(seed))
    run_dir = Path(sweep_dir) / seed_dir_name(seed)
    run_dir.mkdir(exist_ok=True)
    summary = execute_run(run, run_dir)
    if summary.get("interrupted"):  # the run stopped early on Ctrl-C: the seed is not finished
        raise SeedInterrupted(f"seed {seed}: run interrupted after {summary.get('steps')} steps")
    return seed_row(summary)


def format_seed_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-seed table with a mean ± std (ddof = 1) row."""
    header = ("seed", "accept", "overlap", "|a-o|", "ce_gap", "chi2_p")
    columns = ("accept_rate", "mean_overlap", "accept_overlap_gap", "mean_ce_gap", "p_value")
    body = [(str(r["seed"]), *(format_number(float(r[c])) for c in columns)) for r in rows]
    stats = []
    for column in columns:
        values = np.array([float(r[column]) for r in rows])
        if not np.all(np.isfinite(values)):
            stats.append("inf")
        elif len(values) < 2:
            stats.append(f"{values.mean():.4f} ± n/a")
        else:
            stats.append(f"{values.mean():.4f} ± {values.std(ddof=1):.4f}")
    body.append(("mean±std", *stats))
    return format_table(header, body)


def seed_task(sweep: SeedSweep, sweep_dir: Path) -> Callable[[int], dict[str, Any]]:
    """`run_seed` bound to a sweep and its folder: picklable, so it runs in any worker."""
    return partial(run_seed, sweep, str(sweep_dir))
