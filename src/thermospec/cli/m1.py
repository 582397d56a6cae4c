"""Command line of M1: ``python -m scripts.run_m1 run|check``.

Errors on the user's input print one line naming the option or file and the
reason, exit with status 2 and write nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thermospec.analysis.block_checks import checks_of
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
from thermospec.cli.report import headline, summary_table
from thermospec.engine.blocks import BLOCKS_FILE
from thermospec.runs.block_parquet import BLOCKS_PARQUET
from thermospec.runs.config import ConfigError, RunConfig
from thermospec.runs.executor import check_mode_options, execute_run
from thermospec.runs.prepare import inject_fault, prepare_run
from thermospec.runs.progress import progress_bar
from thermospec.runs.replay import ReplayError, compare_replay, load_replay
from thermospec.runs.settings import check_room, config
from thermospec.runs.storage import METRICS_FILE, create_run_dir
from thermospec.runs.telemetry import PARQUET_FILE

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


def _config(args: argparse.Namespace) -> RunConfig:
    return config(**run_options(args))


def _notice_clamp(config: RunConfig, V: int) -> None:
    if config.tokenizer is not None and config.tokenizer.startswith("bpe:") and config.tokenizer[4:].isdigit():
        asked = int(config.tokenizer[4:])
        if asked > V:
            print(f"notice: --tokenizer {config.tokenizer}: this corpus supports only {V} BPE tokens; "
                  f"using V = {V}", file=sys.stderr)
    if config.K > V:
        print(f"notice: --K {config.K} is above the vocabulary size V = {V}; using K = {V}", file=sys.stderr)


def _replay_config(args: argparse.Namespace) -> Any:
    """The replay plan of ``--replay``, refusing options that would change the recorded run."""
    from dataclasses import fields


    recorded = {f.name for f in fields(RunConfig)}
    given = [f"--{name.replace('_', '-')}" for name, value in vars(_config_defaults()).items()
             if name in recorded and getattr(args, name, value) != value]
    if given:
        raise ConfigError(f"--replay: takes every option from the summary; drop {' '.join(given)}")
    try:
        return load_replay(args.replay)
    except ReplayError as exc:
        raise ConfigError(f"--replay {exc}") from None


def _config_defaults() -> argparse.Namespace:
    defaults = build_parser().parse_args(["run"])
    del defaults.command, defaults.runs_dir, defaults.replay
    return defaults


def _exit_status(summary: dict[str, Any]) -> int:
    """130 / 143 when a SIGINT / SIGTERM stopped the run, else 0."""
    import signal

    by = summary.get("interrupted_by")
    if by in ("SIGINT", "SIGTERM"):
        return 128 + int(signal.Signals[by])
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    plan = _replay_config(args) if args.replay is not None else None
    config = plan.config if plan is not None else _config(args)
    check_mode_options(config, args.telemetry, args.chains, replay=plan is not None)
    run = prepare_run(config)
    _notice_clamp(run.config, run.target.V)
    if not args.runs_dir.strip():
        raise ConfigError("--runs-dir: must name a folder, got an empty string")
    if Path(args.runs_dir).exists() and not Path(args.runs_dir).is_dir():
        raise ConfigError(f"--runs-dir {args.runs_dir}: is a file, not a folder")
    check_room(run.config, args.telemetry, args.chains, args.runs_dir)
    try:
        run_dir = create_run_dir(Path(args.runs_dir))
    except OSError as exc:
        raise ConfigError(f"--runs-dir {args.runs_dir}: cannot create a run folder ({exc.strerror or exc})") from None
    unit = "token" if run.config.gamma is not None else "step"
    started = time.perf_counter()
    with progress_bar(run.config.steps, "run", unit, quiet=args.quiet or args.chains > 1) as bar:
        summary = execute_run(run, run_dir, on_progress=bar.update, telemetry=args.telemetry, chains=args.chains)
    wall_s = time.perf_counter() - started
    metrics_file = {"jsonl": METRICS_FILE, "parquet": PARQUET_FILE, "none": ""}[args.telemetry]
    if run.config.gamma is not None:
        metrics_file = {"jsonl": BLOCKS_FILE, "parquet": BLOCKS_PARQUET, "none": ""}[args.telemetry]
    if args.chains > 1 and args.telemetry == "jsonl":  # Parquet holds every chain in one file
        metrics_file = "chain_*/"
    print(summary_table(summary) if args.full else headline(summary, wall_s))
    written = "" if args.telemetry == "none" else f"{run_dir / metrics_file} and "
    print(f"\nwrote {written}{run_dir / 'summary.json'}" + ("" if args.full else " (every field: --full)"))
    if summary.get("chi2_dof") == 0 and summary.get("steps"):
        expected = "Σ n_t·p_t" if run.config.trace is not None else "N·pi"
        print(f"run_m1 run: note: every token's expected count {expected} is below 5, so the run's χ² has one bin "
              "and tests nothing (p_value 1 by SPEC §6); run more steps, or use `check` for exactness",
              file=sys.stderr)
    status = _exit_status(summary)
    if status:
        held = "the summary covers" if args.telemetry == "none" else "the files hold"
        print(f"run_m1 run: interrupted by {summary['interrupted_by']} after {summary['steps']} steps; "
              f"{held} exactly those steps", file=sys.stderr)
        return status
    if plan is not None:
        comparison = compare_replay(plan, summary)
        if not comparison.identical:
            print(f"run_m1 run: error: --replay {plan.source}: {comparison.describe()}", file=sys.stderr)
            return EXIT_FAILED
        print(comparison.describe())
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    if args.tsu == "thrml":
        raise ConfigError("--tsu thrml: check runs SimTSU's table-driven paths; "
                          "check THRML with run --tsu thrml (χ² in summary.json) or tests/test_thrml_backend.py")
    run = prepare_run(_config(args))
    _notice_clamp(run.config, run.target.V)
    if args.inject_fault is not None:
        print(f"injected fault: {args.inject_fault} (every context's TSU)")
        run = inject_fault(run, args.inject_fault)
    results = checks_of(run, args.check_steps, args.pooled_steps)
    width = max(len(r.name) for r in results)
    guide_rule = [r for r in results if getattr(r, "guide", True)]
    stronger = [r for r in results if not getattr(r, "guide", True)]
    for r in guide_rule:
        print(f"{r.verdict}  {r.name:<{width}}  {r.detail}")
    if stronger:
        print("\nstronger test (beside the guide's checklist):")
    for r in stronger:
        print(f"{r.verdict}  {r.name:<{width}}  {r.detail}")
    skipped = sum(r.skipped for r in results)
    failed = sum(not r.passed and not r.skipped for r in results)
    tested = len(results) - skipped
    print(f"\n{tested - failed}/{tested} checks passed" + (f", {skipped} skipped (nothing to test)" if skipped else ""))
    return 0 if failed == 0 else EXIT_FAILED


def main(argv: Sequence[str] | None = None, prog: str = "run_m1") -> int:
    """Entry point of ``python -m scripts.run_m1``; returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    return guarded(f"{prog} {args.command}", _cmd_run if args.command == "run" else _cmd_check, args)
