"""The ``modes`` section of ``make bench``: the speed of modes beyond M1 as a share of M1's (issue 16's aims).

Each figure is a mode's tokens/s over M1's, end to end as a user runs them: ``thermospec.run(...)``
(the chain, the summary and its χ², writing ``summary.json``) on Tiny Shakespeare at K = 8,
telemetry none, in a temporary runs folder.  M1 and every mode run in turn, `repeats` (at least 5)
rounds after one untimed round (imports, first-use caches); the ratio is of the medians.  The
note gives the ratio of CPU seconds too (all threads), which a loaded machine leaves nearly
unchanged where wall time is not.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import thermospec

Row = tuple[str, str, str]

MODES: tuple[tuple[str, dict[str, Any], float], ...] = (
    ("--drafts 4 --verifier recursive", {"drafts": 4, "verifier": "recursive"}, 0.3),
    ("--drafts 2 --verifier optimal", {"drafts": 2, "verifier": "optimal"}, 0.15),
    ("--drafts 4 --verifier optimal", {"drafts": 4, "verifier": "optimal"}, 0.15),
    ("--order 5", {"order": 5}, 0.1),
)
"""Each mode's options (as `thermospec.run` takes them) and its aim: at least this share of M1's tokens/s."""


def _timed(base: dict[str, Any], options: dict[str, Any]) -> tuple[float, float, int]:
    """Wall and CPU seconds of one run, and the tokens its summary covers (its folder removed after)."""
    started, cpu = time.perf_counter(), time.process_time()
    result = thermospec.run(**base, **options)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    shutil.rmtree(result.run_dir, ignore_errors=True)
    return seconds, cpu_seconds, result.summary.steps


def bench_modes(corpus: Path | None, steps: int, repeats: int) -> list[Row]:
    """Each mode of `MODES` against M1, alternated: the ratios of their median tokens/s."""
    if corpus is None:
        return [("modes / M1", "skipped", "Tiny Shakespeare not found in data/ or ../shared/data/ (--corpus PATH)")]
    rounds = max(5, repeats)
    runs: dict[str, dict[str, Any]] = {"M1": {}} | {name: options for name, options, _ in MODES}
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory(prefix="thermospec-bench-modes-") as tmp:
        base = {"corpus": str(corpus), "K": 8, "steps": steps, "telemetry": "none", "runs_dir": tmp}
        for options in runs.values():
            _timed(base, options)
        for _ in range(rounds):
            for name, options in runs.items():
                seconds, cpu_seconds, tokens = _timed(base, options)
                wall[name].append(tokens / seconds)
                cpu[name].append(tokens / cpu_seconds)
    m1, m1_cpu = statistics.median(wall["M1"]), statistics.median(cpu["M1"])
    rows = []
    for name, _, aim in MODES:
        rate = statistics.median(wall[name])
        rows.append((f"modes: {name} / M1", f"{rate / m1:.3f}",
                     f">= {aim} (M1 {m1 / 1e6:.2f} M, this {rate / 1e6:.3f} M tokens/s; CPU ratio "
                     f"{statistics.median(cpu[name]) / m1_cpu:.3f}; Tiny Shakespeare, K = 8, {steps:,} steps, "
                     f"medians of {rounds} alternated)"))
    return rows
