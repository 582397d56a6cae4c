"""The ``trace`` section of ``make bench``: ψ crafted per position, and tokens/s, on a V = 131,072 trace.

Issue 9's aims: at least 5,000 positions/s crafted and 1 M tokens/s on a cached trace.  The trace
is a Zipf one made by `scripts.make_trace` in a temporary folder; the run is the engine of
``run --trace`` (`engine.positions.run_positions`) with every position's ψ and tables cached,
telemetry off.  Crafting is timed `repeats` times (the trace loaded afresh each time, its rows read again), the
median quoted: one batch of 256 positions takes ~50 ms, which a busy neighbour moves by half.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from scripts.make_trace import write_trace
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.positions import CRAFT_AHEAD, CRAFT_THREADS, PositionProposer, run_positions
from thermospec.targets.trace import load_trace

Row = tuple[str, str, str]


def bench_trace(positions: int, steps: int, vocab: int = 131_072, K: int = 64, repeats: int = 5) -> list[Row]:
    """Positions/s crafting ψ (softmax, top-K, payload, metrics: `targets.trace_rows.craft_position`) and the CPU
    time each takes (what a loaded machine leaves unchanged), medians of `repeats`, then tokens/s stepping a
    cached trace."""
    with tempfile.TemporaryDirectory(prefix="thermospec-bench-trace-") as tmp:
        path = write_trace(Path(tmp) / "zipf.npy", positions=positions, vocab=vocab, exponent=1.0, seed=7,
                           progress=False)
        rates, cpus = [], []
        for _ in range(repeats):
            target = load_trace(path)  # its own row cache empty: every row read from the file, as in a run
            proposer = PositionProposer(target, K, 1.0, "auto")
            started, cpu = time.perf_counter(), time.process_time()
            for first in range(0, positions, CRAFT_AHEAD):  # as a run crafts them: CRAFT_AHEAD at a time, threads
                proposer.craft_ahead(range(first, min(first + CRAFT_AHEAD, positions)))
            rates.append(positions / (time.perf_counter() - started))
            cpus.append((time.process_time() - cpu) / positions)  # CPU seconds a position (all threads)
        crafted, cpu_each = statistics.median(rates), statistics.median(cpus)
        list(run_positions(target, proposer.draft, positions * 64, random_stream(7, Stream.CHAIN)))  # tables
        started = time.perf_counter()
        for _ in run_positions(target, proposer.draft, steps, random_stream(7, Stream.CHAIN)):
            pass
        rate = steps / (time.perf_counter() - started)
    return [
        (f"trace V = {vocab:,}: ψ crafted per position", f"{crafted:,.0f} positions/s",
         f">= 5,000 positions/s (K = {K}, {CRAFT_THREADS} threads, {cpu_each * 1e6:,.0f} µs CPU each; softmax, "
         f"top-K, payload, metrics; median of {repeats}, {min(rates):,.0f}-{max(rates):,.0f})"),
        (f"trace V = {vocab:,}: teacher-forced steps, cached", f"{rate / 1e6:.2f} Mtokens/s",
         f">= 1 M tokens/s ({positions} positions, telemetry off)"),
    ]
