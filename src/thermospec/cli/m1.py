"""Command line of M1: ``python -m scripts.run_m1 run|check``, a thin layer over `thermospec.run` and ``.check``.

Each command parses its options (`cli.options` derives them from `RunConfig`),
calls the API function (a progress bar, the notices and the injected fault come
through its hooks) and prints what it returns.  Errors on the user's input print
one line naming the option or file and the reason, exit with status 2 and write
nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from thermospec.cli.examples import examples_for
from thermospec.cli.options import (
    EXIT_FAILED,
    OneLineParser,
    add_run_options,
    fault_option,
    guarded,
    int_at_least,
    run_options,
)
from thermospec.cli.report import check_report, headline, summary_table
from thermospec.engine.blocks import BLOCKS_FILE
from thermospec.experiments.single_runs import check, run
from thermospec.runs.interrupts import exit_status, signal_named
from thermospec.runs.storage import METRICS_FILE
from thermospec.runs.telemetry import BLOCKS_PARQUET, PARQUET_FILE

__all__ = ["main"]


RUN_EXAMPLES = """\
examples:
  python -m scripts.run_m1 run --vocab 256 --K 64 --eps auto --steps 50000 --seed 7
  python -m scripts.run_m1 run --corpus data/tinyshakespeare.txt --K 64 --eps auto --steps 50000 --seed 7
  python -m scripts.run_m1 run --K 8 --tau 0.9 --eps 1e-5 --runs-dir /tmp/runs
  python -m scripts.run_m1 run --corpus data/tinyshakespeare.txt --K 8 --drafts 2 --verifier optimal
  python -m scripts.run_m1 run --replay runs/<timestamp>   # the same JSONL, byte for byte
  python -m scripts.run_m1 run --trace zipf.npy --K 64 --steps 200000 --telemetry none
  python -m scripts.run_m1 run --corpus data/tinyshakespeare.txt --order 5 --K 8
"""


CHECK_EXAMPLES = """\
examples:
  python -m scripts.run_m1 check
  python -m scripts.run_m1 check --corpus data/tinyshakespeare.txt --K 128
  python -m scripts.run_m1 check --tau 0.3 --eps 0
  python -m scripts.run_m1 check --inject-fault bias:0.05     # a TSU that oversamples its top token by 5 %
  python -m scripts.run_m1 check --trace zipf.npy --K 64        # fixed positions 0-3, and the pooled TSU χ²
  python -m scripts.run_m1 check --corpus data/tinyshakespeare.txt --order 4 --K 8
"""


def _add_target_options(parser: argparse.ArgumentParser, steps_help: str) -> None:
    add_run_options(parser, {"target": "target (synthetic Dirichlet bigram unless --corpus or --trace)",
                             "psi": "ψ payload, per context", "run": None, "beyond": "beyond M1 (README: Beyond M1)"},
                    help={"steps": steps_help})


def build_parser(prog: str = "run_m1") -> argparse.ArgumentParser:
    """The ``run_m1`` parser with its ``run`` and ``check`` commands."""
    parser = OneLineParser(
        prog=prog,
        description="Thermo-Speculative Decoding, milestone M1: a bigram target drafted by a TSU.",
        epilog=examples_for("examples:\n  python -m scripts.run_m1 run\n"
        "  python -m scripts.run_m1 run --corpus data/tinyshakespeare.txt --K 64\n"
        "  python -m scripts.run_m1 check\n\n'run --help' and 'check --help' list every option.", "run_m1", prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,check}",
                                     parser_class=OneLineParser)
    run = commands.add_parser(
        "run", help="run the chain, write m1_metrics.jsonl and summary.json",
        description="Run N steps of the bigram chain drafted by the TSU and corrected by the target; "
        "write RUNS_DIR/<UTC timestamp>/m1_metrics.jsonl and summary.json.",
        epilog=examples_for(RUN_EXAMPLES, "run_m1", prog), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_target_options(run, "number of emitted tokens, at most 10^12; a run whose JSONL could not fit in the "
                        "free space of --runs-dir is refused (default: 50000)")
    run.add_argument("--runs-dir", metavar="DIR", default="runs", help="where run folders go (default: runs)")
    run.add_argument("--replay", metavar="RUN_DIR", default=None,
                     help="rerun a recorded run (RUN_DIR or RUN_DIR/summary.json: its configuration, its corpus "
                     "unchanged) into a new folder "
                     "and verify the JSONL is identical byte for byte")
    run.add_argument("--quiet", action="store_true",
                     help="no progress bar (none is drawn unless stderr is a terminal)")
    run.add_argument("--full", action="store_true",
                     help="print every field of summary.json, not the headline")
    speed = run.add_argument_group("speed and scale (README: Performance)")
    speed.add_argument("--telemetry", choices=("jsonl", "parquet", "none"), default="jsonl",
                       help="per-step records: m1_metrics.jsonl, m1_metrics.parquet (extra 'parquet'), or none; "
                       "the summary is the same (default: jsonl)")
    speed.add_argument("--chains", type=int_at_least(1), default=1, metavar="B",
                       help="run B independent chains of --steps each; chain 0 is the single-chain run, "
                       "telemetry and summary per chain in chain_<b>/ (none with --telemetry none: only the "
                       "pooled summary) (default: 1)")
    check = commands.add_parser(
        "check", help="the guide's success checklist: PASS/FAIL, exit 0 only if all pass",
        description="Verify the M1 success checklist on this target; exit non-zero if any check fails.",
        epilog=examples_for(CHECK_EXAMPLES, "run_m1", prog), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_target_options(check, "steps of the run for |accept - overlap| (default: 50000)")
    check.add_argument("--check-steps", type=int_at_least(1), default=20_000, metavar="N",
                       help="fixed-context steps per χ² context (default: 20000)")
    check.add_argument("--pooled-steps", type=int_at_least(1), default=50_000, metavar="N",
                       help="TSU drafts per context of the stronger pooled χ² (default: 50000)")
    check.add_argument("--inject-fault", type=fault_option, default=None, metavar="KIND:SIZE",
                       help="check a faulty TSU instead: bias:S, stale:S, tail:S, tau:S or misreport:S "
                       "(README: Trust and fault detection)")
    return parser


def _notice(line: str) -> None:
    print(line, file=sys.stderr)


def _written(summary: dict[str, Any], telemetry: str, chains: int) -> str:
    """The records file (or folders) a run wrote, as the last line names it."""
    if chains > 1 and telemetry == "jsonl":  # Parquet holds every chain in one file
        return "chain_*/"
    if summary["config"].get("gamma") is not None:
        return {"jsonl": BLOCKS_FILE, "parquet": BLOCKS_PARQUET}[telemetry]
    return {"jsonl": METRICS_FILE, "parquet": PARQUET_FILE}[telemetry]


def _cmd_run(args: argparse.Namespace) -> int:
    result = run(runs_dir=args.runs_dir, telemetry=args.telemetry, chains=args.chains, replay=args.replay,
                 progress=not args.quiet, notify=_notice, **run_options(args))
    summary, run_dir = result.summary.record, result.run_dir
    print(summary_table(summary) if args.full else headline(summary, result.wall_s))
    written = "" if args.telemetry == "none" else f"{run_dir / _written(summary, args.telemetry, args.chains)} and "
    print(f"\nwrote {written}{run_dir / 'summary.json'}" + ("" if args.full else " (every field: --full)"))
    if summary.get("chi2_dof") == 0 and summary.get("steps"):
        expected = "Σ n_t·p_t" if summary["config"].get("trace") is not None else "N·pi"
        print(f"run_m1 run: note: every token's expected count {expected} is below 5, so the run's χ² has one bin "
              "and tests nothing (p_value 1 by SPEC §6); run more steps, or use `check` for exactness",
              file=sys.stderr)
    signum = signal_named(summary.get("interrupted_by"))
    if signum is not None:
        held = "the summary covers" if args.telemetry == "none" else "the files hold"
        print(f"run_m1 run: interrupted by {summary['interrupted_by']} after {summary['steps']} steps; "
              f"{held} exactly those steps", file=sys.stderr)
        return exit_status(signum)
    if result.replay is not None:
        if not result.replay.identical:
            print(f"run_m1 run: error: --replay {result.replay.source}: {result.replay.describe()}", file=sys.stderr)
            return EXIT_FAILED
        print(result.replay.describe())
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    report = check(check_steps=args.check_steps, pooled_steps=args.pooled_steps, fault=args.inject_fault,
                   notify=_notice, announce=print, **run_options(args))
    print(check_report(report.results))
    return 0 if report.passed else EXIT_FAILED


def main(argv: Sequence[str] | None = None, prog: str = "run_m1") -> int:
    """Entry point of ``python -m scripts.run_m1``; returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    return guarded(f"{prog} {args.command}", _cmd_run if args.command == "run" else _cmd_check, args)
