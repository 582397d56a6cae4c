"""The seed sweep: one full M1 run per seed, its row and the printed table.

A seed is finished when its run folder ``seed_<S>/`` holds a summary marked
``"interrupted": false``; then, and only then, the CSV has its row.  After an
interrupt `settle_seed` keeps this true: it recovers the row of a run that
finished although its result never reached the sweep, removes the empty folder
of a run stopped before it wrote anything, and marks with an ``INCOMPLETE`` file
the folder of a run stopped before it could write its summary (a run stopped
in the ordinary way has its summary marked ``"interrupted": true``).  On a Dask
cluster a seed already running when the sweep is interrupted cannot be stopped:
it may still complete its folder afterwards, though the sweep lists it as missing.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
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
from thermospec.runs.storage import SUMMARY_FILE

__all__ = [
    "INCOMPLETE_FILE",
    "SeedSweep",
    "format_seed_table",
    "run_seed",
    "seed_row",
    "seed_settler",
    "settle_seed",
]


INCOMPLETE_FILE = "INCOMPLETE"


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
        # appended (the columns before keep their order): where the one-draft acceptance goes (runs.losses)
        "loss_draft_model": summary.get("loss_draft_model"),
        "loss_top_k": summary.get("loss_top_k"),
        "loss_quantisation": summary.get("loss_quantisation"),
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
    if summary.get("interrupted"):  # the run stopped early on a signal: the seed is not finished
        by = summary.get("interrupted_by")
        signum = int(signal.Signals[by]) if by in ("SIGINT", "SIGTERM") else None
        raise SeedInterrupted(f"seed {seed}: run interrupted after {summary.get('steps')} steps", signum)
    return seed_row(summary)


def settle_seed(sweep: SeedSweep, sweep_dir: str, seed: int) -> dict[str, Any] | None:
    """After an interrupt, for a seed without a row: its row if its run finished after all, else None.

    A folder whose summary says ``"interrupted": false`` (all of the sweep's
    steps) is a finished run whose row was lost on the way back; an empty folder
    is removed; a folder without a summary gets an ``INCOMPLETE`` file saying why.
    """
    run_dir = Path(sweep_dir) / seed_dir_name(seed)
    if not run_dir.is_dir():
        return None
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    if isinstance(summary, dict):
        finished = summary.get("interrupted") is False and summary.get("steps") == sweep.base.steps
        return seed_row(summary) if finished else None
    if not any(run_dir.iterdir()):
        with contextlib.suppress(OSError):
            run_dir.rmdir()
        return None
    (run_dir / INCOMPLETE_FILE).write_text(
        f"seed {seed}: the sweep was interrupted and this run stopped before it wrote {SUMMARY_FILE}; "
        "its telemetry may end with a partial record\n", encoding="utf-8",
    )
    return None


LOSS_COLUMNS = (("draft model", "loss_draft_model"), ("top-K", "loss_top_k"), ("8-bit codes", "loss_quantisation"))
"""The loss split's columns as the seed table's last line names them, in the run headline's words."""


def _mean_std(rows: Sequence[Mapping[str, Any]], column: str) -> str:
    """``mean ± std`` (ddof = 1) of a column; a statistic a run's source does not define (null) reads n/a."""
    values = np.array([float(r[column]) for r in rows if r.get(column) is not None])
    if not values.size:
        return "n/a"
    if not np.all(np.isfinite(values)):
        return "inf"
    if len(values) < 2:
        return f"{values.mean():.4f} ± n/a"
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def format_seed_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-seed table with a mean ± std (ddof = 1) row, then where the acceptance goes (mean ± std).

    The loss split is a line under the table rather than three more columns of it (the table would
    be about 150 characters wide): the draft model, the top-K cut and the 8-bit codes, as a run's
    headline names them; each seed's values are in the CSV.
    """
    header = ("seed", "accept", "overlap", "|a-o|", "ce_gap", "chi2_p")
    columns = ("accept_rate", "mean_overlap", "accept_overlap_gap", "mean_ce_gap", "p_value")
    body = [(str(r["seed"]), *("n/a" if r[c] is None else format_number(float(r[c])) for c in columns))
            for r in rows]
    body.append(("mean±std", *(_mean_std(rows, column) for column in columns)))
    table = format_table(header, body)
    if not any(r.get(column) is not None for r in rows for _, column in LOSS_COLUMNS):
        return table
    losses = "   ".join(f"{name} {_mean_std(rows, column)}" for name, column in LOSS_COLUMNS)
    return f"{table}\nlost to   {losses}"


def seed_task(sweep: SeedSweep, sweep_dir: Path) -> Callable[[int], dict[str, Any]]:
    """`run_seed` bound to a sweep and its folder: picklable, so it runs in any worker."""
    return partial(run_seed, sweep, str(sweep_dir))


def seed_settler(sweep: SeedSweep, sweep_dir: Path) -> Callable[[int], dict[str, Any] | None]:
    """`settle_seed` bound to a sweep and its folder (the ``settle`` of `sweeps.run_sweep`)."""
    return partial(settle_seed, sweep, str(sweep_dir))
