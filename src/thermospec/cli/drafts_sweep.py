"""``thermospec drafts-sweep``: acceptance of N drafts per target call, per verifier, against the limit.

For each K, N and verifier: the measured and exact (π-weighted) acceptance, one
draft's, the optimum over every exact verifier, the bound, the share of the
optimum's gain, the mean TSU draws and a modelled speed-up.  Writes
``RUNS_DIR/<UTC timestamp>/m1_drafts_sweep.csv``, ``m1_acceptance_vs_drafts.png`` and
``sweep.json`` (the configuration, seed and corpus included, and the unfinished
points), and prints the table.  SIGINT or SIGTERM stops it at once: the finished
rows are kept, ``sweep.json`` lists the missing points, exit 130 or 143; a failed
write (a full disk) does the same with exit 1.

In a checkout, ``python -m scripts.sweep_drafts`` is the same command.

Examples
--------
thermospec drafts-sweep --corpus data/tinyshakespeare.txt --Ks 8 32
thermospec drafts-sweep --Ns 1 2 4 --verifiers recursive optimal --steps 5000
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thermospec.cli.options import (
    EXIT_FAILED,
    EXIT_USAGE,
    OneLineParser,
    int_at_least,
    non_negative_float,
)
from thermospec.core.payload import PayloadError
from thermospec.core.verifiers import VERIFIERS
from thermospec.experiments.drafts_plots import draw_drafts_sweep
from thermospec.experiments.drafts_sweep import DRAFTS_CSV, DRAFTS_PNG, drafts_rows, drafts_table
from thermospec.experiments.parallel import SweepInterrupted, stop_signals
from thermospec.experiments.sweeps import SWEEP_JSON, CsvRows, check_values
from thermospec.runs.config import CORPUS_HELP, MAX_DRAFTS, ConfigError, RunConfig
from thermospec.runs.interrupts import exit_status, signal_name
from thermospec.runs.prepare import prepare_run
from thermospec.runs.progress import progress_bar
from thermospec.runs.storage import create_run_dir, write_json_atomic
from thermospec.targets.corpus import CorpusError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, prog: str = "sweep_drafts") -> int:
    """Entry point of ``thermospec drafts-sweep`` (and ``python -m scripts.sweep_drafts``); returns the exit status."""
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("--corpus", metavar="PATH", help=CORPUS_HELP)
    parser.add_argument("--vocab", type=int_at_least(2, 4096), default=256, help="synthetic V (default: 256)")
    parser.add_argument("--Ks", type=int_at_least(1), nargs="+", default=[64], metavar="K",
                        help="top-K ids sent (default: 64)")
    parser.add_argument("--Ns", type=int_at_least(1, MAX_DRAFTS), nargs="+", default=[1, 2, 4, 8, 16], metavar="N",
                        help="drafts per target call (default: 1 2 4 8 16)")
    parser.add_argument("--verifiers", choices=VERIFIERS, nargs="+", default=list(VERIFIERS),
                        help=f"verifiers (default: {' '.join(VERIFIERS)})")
    parser.add_argument("--steps", type=int_at_least(1), default=10_000,
                        help="chain steps per (K, N, verifier) for the measured acceptance (default: 10000)")
    parser.add_argument("--seed", type=int_at_least(0), default=7, help="RNG seed (default: 7)")
    parser.add_argument("--cost-ratio", type=non_negative_float, default=0.05,
                        help="TSU draw time / target call time, for the modelled speed-up (default: 0.05)")
    parser.add_argument("--runs-dir", default="runs", metavar="DIR", help="where the sweep folder goes (default: runs)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (none is drawn unless stderr is a terminal)")
    args = parser.parse_args(argv)
    try:
        Ks, Ns = check_values("--Ks", args.Ks), check_values("--Ns", args.Ns)
        verifiers = check_values("--verifiers", args.verifiers)
        base = RunConfig(corpus=args.corpus, vocab=args.vocab, steps=args.steps, seed=args.seed)
        prepare_run(dataclasses.replace(base, K=Ks[0]))  # refuse a bad corpus or ε before anything is written
        if Path(args.runs_dir).exists() and not Path(args.runs_dir).is_dir():
            raise ConfigError(f"--runs-dir {args.runs_dir}: is a file, not a folder")
        folder = create_run_dir(args.runs_dir)
    except CorpusError as exc:
        print(f"{prog}: error: --corpus {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, PayloadError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{prog}: error: --runs-dir {args.runs_dir}: cannot create a sweep folder "
              f"({exc.strerror or exc})", file=sys.stderr)
        return EXIT_USAGE
    points = [{"K": K, "N": n, "verifier": v} for K in Ks for n in Ns for v in verifiers]  # drafts_rows' order
    rows: list[dict[str, Any]] = []
    csv: CsvRows | None = None
    started = time.perf_counter()
    stopped: str | None = None  # the signal, or the failed write, that ended the sweep early
    status = 0
    with stop_signals() as stop:  # SIGINT and SIGTERM stop at once; every finished row is kept
        try:
            with progress_bar(len(points), "drafts", "config", quiet=args.quiet) as bar, stop.raising():
                for row in drafts_rows(base, Ks, Ns, verifiers, args.steps, args.cost_ratio):
                    csv = csv or CsvRows(folder / DRAFTS_CSV, list(row))
                    csv.append(row)  # whole, flushed lines: an interrupt keeps every finished row
                    rows.append(row)
                    bar.update(1)
        except (SweepInterrupted, KeyboardInterrupt) as exc:
            signum = getattr(exc, "signum", None) or stop.signum or signal.SIGINT
            stopped, status = signal_name(signum), exit_status(signum)
        except OSError as exc:  # a full disk
            stopped, status = str(exc), EXIT_FAILED
        finally:
            if csv is not None:
                csv.close()
        missing = points[len(rows):]
        try:
            write_json_atomic(folder / SWEEP_JSON, {
                "kind": "drafts", "config": base.as_dict(), "Ks": list(Ks), "Ns": list(Ns),
                "verifiers": list(verifiers), "cost_ratio": args.cost_ratio, "finished": len(rows),
                "missing": missing, "interrupted_by": stopped, "elapsed_s": time.perf_counter() - started,
            })
        except OSError as exc:
            stopped, status = f"{stopped}; no {SWEEP_JSON} either: {exc}" if stopped else str(exc), EXIT_FAILED
    if stopped is not None:
        print(f"{prog}: interrupted: {len(rows)} of {len(points)} configurations finished and kept in "
              f"{folder / DRAFTS_CSV}; {len(missing)} missing (stopped by {stopped}; listed in {SWEEP_JSON})",
              file=sys.stderr)
        return status
    assert csv is not None
    target = f"corpus {args.corpus}" if args.corpus else f"synthetic V = {args.vocab}"
    draw_drafts_sweep(folder, f"{target} · seed {args.seed} · {args.steps:,} steps per point")
    print(drafts_table(rows))
    print(f"\nwrote {folder / DRAFTS_CSV} and {folder / DRAFTS_PNG}")
    return 0

