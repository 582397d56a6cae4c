"""``python -m scripts.detection_power``: how often ``check`` catches each injected TSU fault.

Prints docs/trust.md's detection-power table (fault, size, test, samples, detection
rate, false-alarm rate) measured over ``--seeds`` seeds; ``--csv PATH`` also
writes it as CSV (atomically).  See `thermospec.analysis.detection` for what each test is.

Examples
--------
python -m scripts.detection_power --wide                # docs/trust.md's table: 200 seeds, ~5 min of CPU
python -m scripts.detection_power --seeds 10 --workers 1 # a quick look
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from thermospec.analysis.detection import RateRow, TrialOutcome, detection_table, seed_trials
from thermospec.cli.options import OneLineParser
from thermospec.runs.config import RunConfig
from thermospec.tsu.faults import Fault, FaultError

DEFAULT_FAULTS = (
    "bias:0.01", "bias:0.02", "bias:0.05",
    "stale:0.005", "stale:0.01", "stale:0.05",
    "tail:0.1", "tail:0.3", "tail:1",
    "tau:0.01", "tau:0.02", "tau:0.05",
    "misreport:0.001",
)
DEFAULT_SAMPLES = (5_000, 20_000, 50_000)
TEST_ORDER = ("guide", "pooled", "run")
TEST_NAMES = {"guide": "guide rule", "pooled": "pooled χ²", "run": "run χ²"}


def _fault(text: str) -> Fault:
    try:
        return Fault.parse(text)
    except FaultError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = OneLineParser(prog="detection_power", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--seeds", type=_positive, default=200, help="number of seeds (default: 200)")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed (default: 0)")
    parser.add_argument("--faults", type=_fault, nargs="+", default=[Fault.parse(f) for f in DEFAULT_FAULTS],
                        metavar="KIND:SIZE", help="faults to inject (default: docs/trust.md's)")
    parser.add_argument("--samples", type=_positive, nargs="+", default=list(DEFAULT_SAMPLES), metavar="N",
                        help="draws per context for the fixed-context tests (default: 5000 20000 50000)")
    parser.add_argument("--steps", type=_positive, default=50_000, help="steps of the run for its χ² (default: 50000)")
    parser.add_argument("--no-run", action="store_true", help="skip the run's χ² (faster)")
    parser.add_argument("--workers", type=_positive, default=min(2, os.cpu_count() or 1),
                        help="worker processes (default: 2)")
    parser.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    parser.add_argument("--wide", action="store_true",
                        help="one line per fault and size, one column per test and sample count (docs/trust.md's)")
    return parser


def _one_seed(job: tuple[int, list[Fault | None], list[int], int, bool]) -> list[TrialOutcome]:
    seed, faults, sizes, steps, with_run = job
    return seed_trials(RunConfig(seed=seed, steps=steps), faults, sizes, with_run)


def _rate(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f} %"


def markdown_table(rows: Sequence[RateRow]) -> str:
    """The table as Markdown."""
    lines = [
        "| fault | size | test | samples | seeds | detection rate | false-alarm rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = "–" if r.fault == "none" else f"{r.size:g}"
        lines.append(
            f"| {r.fault} | {size} | {r.test} | {r.samples:,} | {r.seeds} | "
            f"{_rate(r.detection_rate)} | {_rate(r.false_alarm_rate)} |"
        )
    return "\n".join(lines)


def wide_table(rows: Sequence[RateRow]) -> str:
    """The table as Markdown, one line per fault and size, one column per test and sample count.

    The first line is the correct TSU: its cells are the false-alarm rates.
    """
    columns = sorted({(r.test, r.samples) for r in rows}, key=lambda c: (TEST_ORDER.index(c[0]), c[1]))
    faults: list[tuple[str, float]] = []
    for r in rows:
        if (r.fault, r.size) not in faults:
            faults.append((r.fault, r.size))
    cell = {(r.fault, r.size, r.test, r.samples): r for r in rows}
    seeds = max((r.seeds for r in rows), default=0)
    head = " | ".join(f"{TEST_NAMES[t]} {n:,}" for t, n in columns)
    lines = [f"| fault | size | {head} |", "|---|---|" + "---|" * len(columns)]
    for kind, size in faults:
        label = "none (false alarms)" if kind == "none" else kind
        shown = "–" if kind == "none" else f"{size:g}"
        values = []
        for t, n in columns:
            found = cell.get((kind, size, t, n))
            values.append("" if found is None else _rate(found.detection_rate))
        lines.append(f"| {label} | {shown} | " + " | ".join(values) + " |")
    lines.append(f"\n{seeds} seeds; cells are the fraction of seeds where the test failed.")
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[RateRow]) -> None:
    """Write the rows as CSV through a temporary file and a rename."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["fault", "size", "test", "samples", "seeds", "detection_rate", "false_alarm_rate"])
    for r in rows:
        writer.writerow([r.fault, r.size, r.test, r.samples, r.seeds, r.detection_rate, r.false_alarm_rate])
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        out.write(text.getvalue())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study; print the table."""
    args = build_parser().parse_args(argv)
    faults: list[Fault | None] = [None, *args.faults]
    sizes = sorted(set(args.samples))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [(s, faults, sizes, args.steps, not args.no_run) for s in seeds]
    outcomes: list[TrialOutcome] = []
    if args.workers == 1:
        for job in jobs:
            outcomes.extend(_one_seed(job))
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            for result in pool.map(_one_seed, jobs, chunksize=1):
                outcomes.extend(result)
    rows = detection_table(outcomes, args.steps)
    print(wide_table(rows) if args.wide else markdown_table(rows))
    if args.csv:
        try:
            write_csv(Path(args.csv), rows)
        except OSError as exc:
            print(f"detection_power: error: --csv {args.csv}: cannot write ({exc.strerror or exc})", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
