"""``python -m scripts.bench_sweeps``: wall time of the guide's sweeps with ``--jobs 1`` and ``--jobs 2``.

Each measurement is a whole command in a fresh interpreter (start-up, worker
processes and file writes included), repeated ``--repeats`` times; the table
gives the median wall time, the speed-up of the medians and the median CPU time
(user + system, of the command and its workers): on a machine whose cores are
busy with other work, a second worker cannot lower the wall time.  Sweep folders go to a
temporary directory that is removed afterwards.

Examples
--------
python -m scripts.bench_sweeps                    # docs/performance.md's table, 5 repeats
python -m scripts.bench_sweeps --repeats 3 --jobs 1 2
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from thermospec.cli.options import OneLineParser, int_at_least

SWEEPS = {
    "guide grid 3x3x2, 15000 steps": [
        "scripts.sweep_m1_grid", "--steps", "15000", "--Ks", "32", "64", "128", "--taus", "0.9", "1.0", "1.1",
        "--seeds", "7", "11",
    ],
    "grid 3x3x2, 1000000 steps": [
        "scripts.sweep_m1_grid", "--steps", "1000000", "--Ks", "32", "64", "128", "--taus", "0.9", "1.0", "1.1",
        "--seeds", "7", "11",
    ],
    "guide seed sweep, 4 seeds x 20000 steps": [
        "scripts.sweep_m1", "--steps", "20000", "--seeds", "7", "11", "13", "17",
    ],
    "seed sweep, 4 seeds x 200000 steps": ["scripts.sweep_m1", "--steps", "200000", "--seeds", "7", "11", "13", "17"],
}


def wall_time(argv: Sequence[str], runs_dir: str, jobs: int) -> tuple[float, float]:
    """Wall seconds of one whole command, from process start to exit, and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", *argv, "--jobs", str(jobs), "--quiet", "--runs-dir", runs_dir],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print a Markdown table."""
    parser = OneLineParser(prog="bench_sweeps", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--repeats", type=int_at_least(1), default=5, help="runs per cell (default: 5)")
    parser.add_argument("--jobs", type=int_at_least(1), nargs=2, default=[1, 2], metavar="N",
                        help="the two --jobs values compared (default: 1 2)")
    args = parser.parse_args(argv)
    low, high = args.jobs
    print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"| sweep | --jobs {low}: wall s | --jobs {high}: wall s | speed-up | CPU s, --jobs {low} / {high} |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as runs_dir:
        for name, command in SWEEPS.items():
            times: dict[int, list[float]] = {low: [], high: []}
            cpu: dict[int, list[float]] = {low: [], high: []}
            for _ in range(args.repeats):  # interleaved, so that a busy moment hits both sides
                for jobs in (low, high):
                    wall, used = wall_time(command, runs_dir, jobs)
                    times[jobs].append(wall)
                    cpu[jobs].append(used)
            medians = [statistics.median(times[low]), statistics.median(times[high])]
            cpus = [statistics.median(cpu[low]), statistics.median(cpu[high])]
            print(f"| {name} | {medians[0]:.2f} | {medians[1]:.2f} | {medians[0] / medians[1]:.2f}× "
                  f"| {cpus[0]:.2f} / {cpus[1]:.2f} |", flush=True)
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
