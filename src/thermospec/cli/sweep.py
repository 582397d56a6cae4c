"""Command lines of the sweeps and the plots: ``scripts.sweep_m1``, ``scripts.sweep_m1_grid``, ``scripts.plot``.

Like ``run_m1``: bad input prints one line naming the option or file and the
reason, exits with status 2 and writes nothing.  SIGINT (Ctrl-C) or SIGTERM
stops the sweep: it starts no new configuration, stops its workers, keeps the
CSV row (and for a seed sweep the run folder) of every finished configuration,
lists the unfinished ones (stdout, ``sweep.json``), says how many are missing
(stderr) and exits with 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thermospec.cli.examples import examples_for
from thermospec.cli.options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    OneLineParser,
    add_run_options,
    guarded,
    int_at_least,
    positive_float,
    run_options,
)
from thermospec.experiments.gamma_sweep import SPEEDUP_PNG, format_gamma_table, plot_speedup
from thermospec.experiments.grid import aggregate_grid, format_grid_table
from thermospec.experiments.parallel import available_cores
from thermospec.experiments.plots import PlotError, folder_kinds, plot_folder
from thermospec.experiments.seeds import format_seed_table
from thermospec.experiments.sweep_runs import SweepResult, gamma_grid_sweep, grid_sweep, seed_sweep
from thermospec.experiments.sweeps import (
    SWEEP_JSON,
    context_label,
    target_of,
)
from thermospec.runs.config import MAX_SEED, OPTIONS, RunConfig
from thermospec.runs.interrupts import exit_status
from thermospec.runs.settings import config

__all__ = ["build_grid_parser", "build_plot_parser", "build_seed_parser", "grid_main", "plot_main", "seed_main"]


SEED_EXAMPLES = """\
examples:
  python -m scripts.sweep_m1 --steps 20000 --seeds 7 11 13 17
  python -m scripts.sweep_m1 --corpus data/tinyshakespeare.txt --K 32 --steps 20000 --seeds 1 2 3 --jobs 2
  python -m scripts.sweep_m1 --seeds 7 11 --scheduler tcp://127.0.0.1:8786
"""


GRID_EXAMPLES = """\
examples:
  python -m scripts.sweep_m1_grid --steps 15000 --Ks 32 64 128 --taus 0.9 1.0 1.1 --seeds 7 11
  python -m scripts.sweep_m1_grid --corpus data/tinyshakespeare.txt --context e --Ks 4 8 16 --taus 0.8 1.0
  python -m scripts.sweep_m1_grid --context 3 --Ks 8 --taus 1.0 --seeds 1 2 3 --jobs 1 --quiet
"""


PLOT_EXAMPLES = """\
examples:
  python -m scripts.plot runs/20260101T120000Z            a run folder: acceptance, per-context, CE gap
  python -m scripts.plot runs/20260101T120500Z            a grid-sweep folder: (K, tau) heatmaps
  python -m scripts.plot runs/20260101T121000Z            a --gamma run: accepted lengths, per-position acceptance
  python -m scripts.plot runs/A runs/B                     several folders at once
"""


TARGET_TITLE = "target (synthetic Dirichlet bigram unless --corpus)"


def _add_execution_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where and how")
    where.add_argument("--runs-dir", metavar="DIR", default="runs",
                       help="the sweep writes RUNS_DIR/<UTC timestamp>/ (default: runs)")
    where.add_argument("--jobs", type=int_at_least(1), default=None, metavar="N",
                       help=f"local worker processes (default: all cores, here {available_cores()}); "
                       "results do not depend on it")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the Dask distributed cluster at ADDRESS, e.g. tcp://HOST:8786 "
                       "(pip install 'thermospec[dask]'); overrides --jobs")
    where.add_argument("--quiet", action="store_true",
                       help="no progress bar (none is drawn unless stderr is a terminal)")


def build_seed_parser(prog: str = "sweep_m1") -> argparse.ArgumentParser:
    """The ``sweep_m1`` parser: the run options of ``run_m1 run`` with several seeds."""
    parser = OneLineParser(
        prog=prog,
        description="One full M1 run per seed; print a per-seed table with mean ± std and write "
        "RUNS_DIR/<UTC timestamp>/m1_seeds.csv (each seed's telemetry and summary in seed_<S>/).",
        epilog=examples_for(SEED_EXAMPLES, "sweep_m1", prog), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Every run option applies to each seed's full run, except those a seed sweep refuses (SEED_SWEEP_REFUSES).
    add_run_options(parser, {"target": TARGET_TITLE, "psi": "ψ payload, per context", "run": None,
                             "beyond": "beyond M1 (README: Beyond M1)"},
                    names=[name for name in OPTIONS if name not in ("seed", "gamma", "cost_ratio")],
                    help={"steps": "emitted tokens per run (default: 20000)"}, defaults={"steps": 20_000})
    parser.add_argument("--seeds", type=int_at_least(0, MAX_SEED), nargs="+", default=[7, 11, 13, 17], metavar="SEED",
                        help="RNG seeds, distinct (default: 7 11 13 17)")
    _add_execution_options(parser)
    return parser


def build_grid_parser(prog: str = "sweep_m1_grid") -> argparse.ArgumentParser:
    """The ``sweep_m1_grid`` parser: a (K, τ, seed) grid on one fixed context."""
    parser = OneLineParser(
        prog=prog,
        description="For each (K, τ, seed): STEPS fixed-context proposals and corrections. Print a table "
        "aggregated over seeds and write RUNS_DIR/<UTC timestamp>/m1_sweep.csv, one row per (K, τ, seed).",
        epilog=examples_for(GRID_EXAMPLES, "sweep_m1_grid", prog), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(parser, {"target": TARGET_TITLE}, names=[name for name in OPTIONS if OPTIONS[name].grid])
    grid = parser.add_argument_group("the grid (space-separated values, each distinct)")
    grid.add_argument("--Ks", type=int_at_least(1), nargs="+", default=[32, 64, 128], metavar="K",
                      help="top-K sizes (default: 32 64 128)")
    grid.add_argument("--taus", type=positive_float, nargs="+", default=[0.9, 1.0, 1.1], metavar="TAU",
                      help="temperatures (default: 0.9 1.0 1.1)")
    grid.add_argument("--seeds", type=int_at_least(0, MAX_SEED), nargs="+", default=[7, 11], metavar="SEED",
                      help="RNG seeds: each gives its own synthetic target (default: 7 11)")
    add_run_options(grid, {"psi": None}, names=[name for name in OPTIONS if OPTIONS[name].grid])
    grid.add_argument("--context", metavar="X",
                      help="the fixed context: a token id, or a character for a corpus "
                      "(default: the most probable context under π)")
    parser.add_argument("--steps", type=int_at_least(1), default=15_000,
                        help="fixed-context proposals per configuration (default: 15000)")
    blocks = parser.add_argument_group("γ-token blocks (docs/beyond-m1.md)")
    blocks.add_argument("--gammas", type=int_at_least(1), nargs="+", default=None, metavar="G",
                        help="sweep γ instead: a chain of γ-token blocks of STEPS tokens per (K, τ, seed, γ); "
                        "writes m1_gamma_sweep.csv and m1_speedup_vs_gamma.png")
    blocks.add_argument("--cost-ratios", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2], metavar="C",
                        help="TSU draft / target call time ratios for the speed-up (default: 0 0.05 0.1 0.2)")
    _add_execution_options(parser)
    return parser


def build_plot_parser(prog: str = "plot") -> argparse.ArgumentParser:
    """The ``plot`` parser."""
    parser = OneLineParser(
        prog=prog,
        description="Write PNG figures beside the data of a folder: a run (m1_metrics.jsonl or .parquet), a "
        "--gamma run (m1_blocks.jsonl), a --chains run (chain_<b>/), a grid, seed, γ or drafts sweep "
        "(m1_sweep.csv, m1_seeds.csv, m1_gamma_sweep.csv, m1_drafts_sweep.csv). Each figure's title says what "
        "was run.",
        epilog=examples_for(PLOT_EXAMPLES, "plot", prog), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run or sweep folders")
    return parser


def _base_config(args: argparse.Namespace, seed: int) -> RunConfig:
    return config(**run_options(args) | {"seed": seed})


def _plural(count: int, noun: str) -> str:
    """``"1 run"``, ``"2 runs"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _label(configuration: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in configuration.items())


def _report_interrupt(prog: str, result: SweepResult, what: str) -> int:
    """stdout: the unfinished configurations and what was written; stderr: one line; returns 130 or 143."""
    outcome = result.outcome
    print(f"\nunfinished: {'; '.join(map(_label, result.missing)) or 'none'}")
    print(f"wrote {result.csv} ({_plural(len(outcome.rows), 'row')}) and {SWEEP_JSON} in {outcome.elapsed_s:.2f} s "
          f"({result.where})")
    print(
        f"{prog}: interrupted: {len(outcome.rows)} of {_plural(outcome.total, what)} finished and kept in "
        f"{result.csv}; {len(outcome.missing)} missing (stopped by {outcome.interrupted_by}; listed in {SWEEP_JSON})",
        file=sys.stderr,
    )
    if outcome.failure is not None:  # a failed write (a full disk): the error status, as for a run
        return EXIT_FAILED
    return exit_status(outcome.signum) if outcome.signum is not None else EXIT_INTERRUPTED


def _notice(text: str) -> None:
    print(f"notice: {text}", file=sys.stderr)


def _seed_sweep(args: argparse.Namespace) -> int:
    base = _base_config(args, args.seeds[0])
    result = seed_sweep(base, args.seeds, args.runs_dir, args.jobs, args.scheduler, args.quiet, _notice)
    seeds = args.seeds
    print(f"seed sweep: {_plural(len(seeds), 'run')} of {args.steps} steps, K = {result.K_used}, τ = {args.tau:g}, "
          f"ε = {args.eps}")
    if result.rows:
        print(format_seed_table(result.rows))
    if result.interrupted:
        return _report_interrupt("sweep_m1", result, "seed")
    print(f"\nwrote {result.csv} and {_plural(len(seeds), 'run folder')} seed_<S>/ in {result.outcome.elapsed_s:.2f} s "
          f"({result.where})")
    return 0


def _gamma_sweep(args: argparse.Namespace, base: RunConfig) -> int:
    cost_ratios = tuple(args.cost_ratios)
    result = gamma_grid_sweep(base, args.gammas, args.Ks, args.taus, args.seeds, args.steps, cost_ratios,
                              args.runs_dir, args.jobs, args.scheduler, args.quiet)
    print(f"γ sweep: {_plural(result.outcome.total, 'configuration')}, {args.steps} tokens of γ-token blocks each "
          "(exact: stationary block starts, products of min(p, q) along the drafted chain)\n")
    if result.rows:
        print(format_gamma_table(result.rows, cost_ratios))
    if result.interrupted:  # no figure: drawing it would delay the stop by seconds (`plot` draws the folder later)
        return _report_interrupt("sweep_m1_grid", result, "configuration")
    plot_speedup(result.folder / SPEEDUP_PNG, result.rows, cost_ratios)
    print(f"\nwrote {result.csv} and {result.folder / SPEEDUP_PNG} in {result.outcome.elapsed_s:.2f} s "
          f"({result.where})")
    return 0


def _grid_sweep(args: argparse.Namespace) -> int:
    base = _base_config(args, args.seeds[0])
    if args.gammas is not None:
        return _gamma_sweep(args, base)
    result = grid_sweep(base, args.Ks, args.taus, args.seeds, args.steps, args.context, args.runs_dir, args.jobs,
                        args.scheduler, args.quiet, _notice)
    Ks, taus, seeds = args.Ks, args.taus, args.seeds
    points = len(Ks) * len(taus) * len(seeds)
    how = "given" if args.context is not None else "most probable under π"
    print(f"grid sweep: {len(Ks)} K × {len(taus)} τ × {_plural(len(seeds), 'seed')} = "
          f"{_plural(points, 'configuration')}, {args.steps} fixed-context steps each, ε = {args.eps}")
    if result.rows:
        contexts = sorted({(int(r["seed"]), int(r["context"])) for r in result.rows})
        shown = ", ".join(f"{context_label(x, target_of(base, s))} (seed {s})" for s, x in contexts)
        print(f"context ({how}): {shown}")
        print("means over seeds; se = standard error of accept around overlap\n")
        print(format_grid_table(aggregate_grid(result.rows)))
    if result.interrupted:
        return _report_interrupt("sweep_m1_grid", result, "configuration")
    print(f"\nwrote {result.csv} ({_plural(len(result.rows), 'row')}) in {result.outcome.elapsed_s:.2f} s "
          f"({result.where})")
    return 0


def seed_main(argv: Sequence[str] | None = None, prog: str = "sweep_m1") -> int:
    """Entry point of ``python -m scripts.sweep_m1``; returns the exit status."""
    return guarded(prog, _seed_sweep, build_seed_parser(prog).parse_args(argv))


def grid_main(argv: Sequence[str] | None = None, prog: str = "sweep_m1_grid") -> int:
    """Entry point of ``python -m scripts.sweep_m1_grid``; returns the exit status."""
    return guarded(prog, _grid_sweep, build_grid_parser(prog).parse_args(argv))


def _plot(args: argparse.Namespace) -> int:

    folders = [Path(p) for p in args.paths]
    try:
        for folder in folders:  # check every path before drawing anything
            folder_kinds(folder)
        for folder in folders:
            for png in plot_folder(folder):
                print(f"wrote {png}")
    except PlotError as exc:
        print(f"plot: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def plot_main(argv: Sequence[str] | None = None, prog: str = "plot") -> int:
    """Entry point of ``python -m scripts.plot``; returns the exit status."""
    return guarded(prog, _plot, build_plot_parser(prog).parse_args(argv))
