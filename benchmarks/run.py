"""``python -m benchmarks.run``: the speed and scale figures of the README, as one table.

Every figure is the median of ``--repeats`` runs measured in this process (or in
child processes for start-up and peak memory).  Nothing here is a test: the
exactness of every path is pinned by the test suite; the benchmark only checks,
before it quotes a ratio, that the two sides emitted the same tokens.

Options: ``--quick`` (smaller sizes, for a smoke run), ``--repeats N``,
``--skip-memory`` (the 10M-step peak-memory pair writes ~2 GB of JSONL to a
temporary folder), ``--corpus PATH`` (text repeated to 100 MB for the counting
figure; Tiny Shakespeare from data/ or ../shared/data/ by default), ``--only
SECTION ...`` (run only those sections: sequential, naive, limit, identical,
batch, telemetry, memory, vocab, corpus, startup, trace, modes, grid, check, sinks).

The ``limit`` section compares thermospec with the same chain written as a
minimal C loop compiled with ``-O3 -march=native`` (`benchmarks.limit`).  The ``grid``,
``check`` and ``sinks`` sections compare commands with earlier commits checked out from
the git history (`benchmarks.history`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.history import Checkouts, bench_check, bench_grid, bench_sinks
from benchmarks.limit import bench_limit
from benchmarks.modes import bench_modes
from benchmarks.naive import naive_chain
from benchmarks.trace import bench_trace
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.batch import run_batch
from thermospec.engine.chain import run_chain, table_source
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.compact import CompactStepper, compact_source
from thermospec.engine.kernels import ChainStepper, compiled_module
from thermospec.runs.config import RunConfig
from thermospec.runs.executor import execute_run
from thermospec.runs.prepare import PreparedRun, prepare_run, sparse_rows
from thermospec.runs.telemetry import JsonlWriter, TelemetryFormat, TelemetrySink, parquet_available
from thermospec.targets.corpus import corpus_target

REPO = Path(__file__).resolve().parent.parent
Row = tuple[str, str, str]


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn` over `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _drain(chunks: Any) -> int:
    n = 0
    for chunk in chunks:
        n += len(chunk)
    return n


def _fmt_rate(value: float, unit: str) -> str:
    for scale, prefix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:,.2f} {prefix}{unit}"
    return f"{value:,.1f} {unit}"


def bench_sequential(run: PreparedRun, steps: int, repeats: int) -> tuple[list[Row], float, np.ndarray[Any, Any]]:
    """Sequential chain tokens/s, compiled and fallback, telemetry off."""
    target = run.target

    def fast(backend: str = "auto", n: int = steps) -> list[ChainChunk]:
        return list(run_chain(target.row, target.pi, run.proposer.draft, n, random_stream(7, Stream.CHAIN),
                              backend=backend))  # type: ignore[arg-type]

    rate = steps / median_time(lambda: _drain(run_chain(target.row, target.pi, run.proposer.draft, steps,
                                                        random_stream(7, Stream.CHAIN))), repeats)
    py_steps = max(1, steps // 50)
    py_rate = py_steps / median_time(lambda: fast("python", py_steps), max(1, repeats // 2))
    emitted = np.concatenate([c.emitted for c in fast("auto", min(steps, 200_000))])
    backend = "compiled" if compiled_module() is not None else "python (extension not built)"
    rows = [
        ("sequential chain, telemetry off", _fmt_rate(rate, "tokens/s"), f">= 10 M tokens/s [{backend}]"),
        ("  pure-Python fallback, same tokens", _fmt_rate(py_rate, "tokens/s"), f"{rate / py_rate:,.0f}x slower"),
    ]
    return rows, rate, emitted


def bench_naive(run: PreparedRun, fast_rate: float, fast_emitted: np.ndarray[Any, Any], steps: int) -> list[Row]:
    """The per-step NumPy implementation 'from the papers', and our speed-up over it."""
    target = run.target
    start = time.perf_counter()
    emitted = naive_chain(target.row, lambda x: run.proposer.draft(x).payload, target.pi, steps,
                          random_stream(7, Stream.CHAIN))
    rate = steps / (time.perf_counter() - start)
    same = bool(np.array_equal(emitted, fast_emitted[:steps]))
    return [
        ("straightforward per-step NumPy", _fmt_rate(rate, "tokens/s"), f"same tokens: {'yes' if same else 'NO'}"),
        ("  speed-up of the sequential chain", f"{fast_rate / rate:,.0f}x", ">= 200x"),
    ]


def bench_batch(run: PreparedRun, chains: int, steps: int, repeats: int) -> list[Row]:
    """``run --chains B --telemetry none`` (all cores): its summary's tokens/s; and the NumPy fallback.

    The batched figure is `thermospec.runs.executor.execute_run` itself, as the command runs it (setup,
    stepping and per-chain counting; the summary's ``tokens_per_s``), not a stripped loop.
    """
    import dataclasses

    from thermospec.engine.tally import BatchTally

    target = run.target
    prepared = PreparedRun(config=dataclasses.replace(run.config, steps=steps), target=target, proposer=run.proposer)

    def command() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            summary = execute_run(prepared, Path(tmp), telemetry="none", chains=chains)
        return float(summary["tokens_per_s"])

    rate = statistics.median(command() for _ in range(repeats))
    py_steps = max(1, steps // 100)

    def fallback() -> int:
        return _drain(run_batch(target.row, target.pi, run.proposer.draft, py_steps, 7, chains, backend="python",
                                tally=BatchTally(chains, target.V), reuse_outputs=True))

    py_rate = chains * py_steps / median_time(fallback, 1)
    return [
        (f"batched chains, B = {chains}, {os.cpu_count()} cores", _fmt_rate(rate, "tokens/s"), ">= 50 M tokens/s"),
        ("  vectorised NumPy fallback", _fmt_rate(py_rate, "tokens/s"), ""),
    ]


def bench_telemetry(run: PreparedRun, steps: int, repeats: int) -> list[Row]:
    """JSONL (compiled and Python formatting) and Parquet rows/s, chain excluded, writing included."""
    target = run.target
    chunks = list(run_chain(target.row, target.pi, run.proposer.draft, steps, random_stream(7, Stream.CHAIN)))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:

        def write(fmt: str, compiled: bool = True, limit: int | None = None) -> None:
            with TelemetrySink(Path(tmp), fmt) as sink:  # type: ignore[arg-type]
                if isinstance(sink.writer, JsonlWriter):
                    sink.writer = JsonlWriter(sink.writer.stream, compiled=compiled)
                for chunk in chunks[:limit]:
                    sink.writer.write(chunk, run.proposer.draft)

        rate = steps / median_time(lambda: write("jsonl"), repeats)
        size = (Path(tmp) / "m1_metrics.jsonl").stat().st_size
        rows.append(("JSONL telemetry, formatted + written", _fmt_rate(rate, "rows/s"),
                     f">= 2 M rows/s ({size / steps:.0f} bytes/row)"))
        few = max(1, len(chunks) // 10)
        few_steps = sum(len(c) for c in chunks[:few])
        py_rate = few_steps / median_time(lambda: write("jsonl", compiled=False, limit=few), 1)
        rows.append(("  Python formatter, same bytes", _fmt_rate(py_rate, "rows/s"), ""))
        if parquet_available():
            pq_rate = steps / median_time(lambda: write("parquet"), max(1, repeats // 2))
            pq_size = (Path(tmp) / "m1_metrics.parquet").stat().st_size
            rows.append(("Parquet telemetry (zstd)", _fmt_rate(pq_rate, "rows/s"),
                         f"{pq_size / steps:.1f} bytes/row"))
    return rows


def bench_identical(run: PreparedRun, steps: int) -> list[Row]:
    """Telemetry on and off give the same run (the summary's statistics, bit for bit)."""
    import dataclasses

    config = dataclasses.replace(run.config, steps=steps)
    prepared = PreparedRun(config=config, target=run.target, proposer=run.proposer)
    timing = {"elapsed_s", "tokens_per_s", "metrics_sha256", "telemetry", "versions"}
    summaries = []
    with tempfile.TemporaryDirectory() as tmp:
        formats: tuple[TelemetryFormat, ...] = ("jsonl", "none")
        for fmt in formats:
            folder = Path(tmp) / fmt
            folder.mkdir()
            summary = execute_run(prepared, folder, telemetry=fmt)
            summaries.append({k: v for k, v in summary.items() if k not in timing})
    same = summaries[0] == summaries[1]
    return [("telemetry on vs off, same statistics", "yes" if same else "NO", f"{steps:,} steps")]


_LAUNCHER = (
    "import os, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(time.perf_counter() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)


def _child_peak(args: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS (KB) of ``python ARGS``, started from a small launcher process.

    Linux carries a parent's resident-set high-water mark into a forked child, so
    the child is spawned by a fresh, small interpreter rather than by this one.
    """
    out = subprocess.run([sys.executable, "-c", _LAUNCHER, sys.executable, *args], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    seconds, peak, code = float(out[0]), int(out[1]), int(out[2])
    if code != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {code}")
    return seconds, peak


def bench_memory(long_steps: int) -> list[Row]:
    """Peak RSS of a 100k-step and a long run, JSONL telemetry on, whole process."""
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (100_000, long_steps):
            _, peaks[steps] = _child_peak(["-m", "scripts.run_m1", "run", "--steps", str(steps), "--quiet",
                                           "--runs-dir", str(Path(tmp) / str(steps))])
            for f in (Path(tmp) / str(steps)).rglob("m1_metrics.jsonl"):
                f.unlink()
    extra = (peaks[long_steps] - peaks[100_000]) / 1024
    return [
        ("peak memory, 100k-step run (JSONL)", f"{peaks[100_000] / 1024:.1f} MB", ""),
        (f"peak memory, {long_steps:,}-step run (JSONL)", f"{peaks[long_steps] / 1024:.1f} MB",
         f"{extra:+.1f} MB vs 100k (flat)"),
    ]


def _vocab_stepper(run: PreparedRun) -> tuple[ChainStepper | CompactStepper, str]:
    """The stepper `run_chain` uses for this run: dense tables, or compact ones for sparse rows."""
    sparse = sparse_rows(run)
    if sparse is None:
        return ChainStepper(run.target.V, table_source(run.target.row, run.proposer.draft)), "dense tables"
    source = compact_source(sparse.support, run.proposer.draft)
    return CompactStepper(run.target.V, source, sparse.max_ids, sparse.max_support), "compact"


def bench_vocab(sizes: tuple[int, ...], repeats: int, quick: bool) -> list[Row]:
    """Whole chains against V: cold (every visited context's tables built in the run) and steady state."""
    rows: list[Row] = []
    for V in sizes:
        started = time.perf_counter()
        run = prepare_run(RunConfig(vocab=V, K=64))
        build = time.perf_counter() - started
        target = run.target
        steps = 100_000 if quick else 1_000_000
        start = time.perf_counter()
        _drain(run_chain(target.row, target.pi, run.proposer.draft, steps, random_stream(7, Stream.CHAIN),
                         sparse=sparse_rows(run)))
        cold = time.perf_counter() - start
        stepper, kind = _vocab_stepper(run)
        u = np.random.default_rng(0).random((steps, 3))
        _, x = stepper.steps(u, int(np.argmax(target.pi)))  # loads the tables of the contexts a chain visits
        cache = stepper.cache
        built = cache.builds if cache is not None else 0
        warm = np.random.default_rng(1).random((steps, 3))
        def steady(s: ChainStepper | CompactStepper = stepper, w: np.ndarray[Any, Any] = warm, x0: int = x) -> None:
            s.steps(w, x0)

        seconds = median_time(steady, repeats)
        new = (cache.builds if cache is not None else 0) - built
        rows.append((f"V = {V:,}: whole chain, {steps:,} steps, cold", _fmt_rate(steps / cold, "tokens/s"),
                     f"{kind}; target + pi built in {build:.2f} s"))
        rows.append((f"V = {V:,}: steady state (tables loaded)", f"{seconds / steps * 1e9:.0f} ns/token",
                     f"{_fmt_rate(steps / seconds, 'tokens/s')}; {new / repeats:,.0f} contexts built per pass"))
    return rows


def shakespeare(path: Path | None) -> Path | None:
    """`path`, or Tiny Shakespeare from data/ or ../shared/data/ if there (None if not)."""
    if path is None:
        candidates = [REPO / "data" / "tinyshakespeare.txt", REPO.parent / "shared" / "data" / "tinyshakespeare.txt"]
        path = next((c for c in candidates if c.is_file()), None)
    return path


def limit_run(path: Path | None) -> PreparedRun:
    """The C limit's run: Tiny Shakespeare at K = 8 (issue 16's figures), or the default synthetic target."""
    corpus = shakespeare(path)
    return prepare_run(RunConfig() if corpus is None else RunConfig(corpus=str(corpus), K=8))


def bench_corpus(path: Path | None, megabytes: int) -> list[Row]:
    """Counting a corpus of `megabytes` MB (the given text repeated)."""
    path = shakespeare(path)
    text = path.read_bytes() if path is not None else b"the quick brown fox jumps over the lazy dog\n" * 2000
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "corpus.txt"
        big.write_bytes(text * max(1, (megabytes * 1_000_000) // len(text)))
        size = big.stat().st_size
        seconds = median_time(lambda: corpus_target(big), 3)
    return [(f"corpus counting, {size / 1e6:.0f} MB", f"{size / 1e6 / seconds:,.0f} MB/s", ">= 100 MB/s")]


def bench_startup(repeats: int) -> list[Row]:
    """The default run end to end (process start to exit) vs a bare sampling loop of the same chain."""
    bare = (
        "from thermospec.core.streams import Stream, random_stream\n"
        "from thermospec.engine.chain import run_chain\n"
        "from thermospec.runs.config import RunConfig\nfrom thermospec.runs.targets import load_target\n"
        "from thermospec.tsu.drafts import Proposer\n"
        "c = RunConfig(); t = load_target(c); p = Proposer(t.row, c.K, c.tau, c.eps)\n"
        "for chunk in run_chain(t.row, t.pi, p.draft, c.steps, random_stream(c.seed, Stream.CHAIN)): pass\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        full = statistics.median(
            _child_peak(["-m", "scripts.run_m1", "run", "--quiet", "--runs-dir", tmp])[0] for _ in range(repeats)
        )
    loop = statistics.median(_child_peak(["-c", bare])[0] for _ in range(repeats))
    empty = statistics.median(_child_peak(["-c", "import numpy"])[0] for _ in range(repeats))
    return [
        ("default run end to end (50k steps, JSONL)", f"{full * 1e3:.0f} ms", "well under 1 s"),
        ("  bare sampling loop, same chain, no files", f"{loop * 1e3:.0f} ms", f"run / loop = {full / loop:.2f}"),
        ("  python -c 'import numpy'", f"{empty * 1e3:.0f} ms", "the floor"),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure; the median is quoted (default: 5)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the long peak-memory run")
    parser.add_argument("--corpus", type=Path, default=None, help="text repeated to 100 MB for corpus counting")
    parser.add_argument("--only", nargs="+", default=None, metavar="SECTION", help="run only these sections")
    args = parser.parse_args(argv)
    quick, repeats = args.quick, max(1, args.repeats)
    print(f"thermospec benchmarks, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, NumPy {np.__version__}; medians of {repeats}",
          flush=True)
    run = prepare_run(RunConfig())
    sequential: list[tuple[list[Row], float, np.ndarray[Any, Any]]] = []

    def measured_sequential() -> tuple[list[Row], float, np.ndarray[Any, Any]]:
        if not sequential:  # the naive figure's speed-up needs it too: measured once
            sequential.append(bench_sequential(run, 500_000 if quick else 5_000_000, repeats))
        return sequential[0]

    sections: list[tuple[str, Callable[[], list[Row]]]] = []
    sections.append(("sequential", lambda: measured_sequential()[0]))
    sections.append(("naive", lambda: bench_naive(run, measured_sequential()[1], measured_sequential()[2],
                                                  2_000 if quick else 20_000)))
    sections.append(("limit", lambda: bench_limit(limit_run(args.corpus), 500_000 if quick else 10_000_000, 1024,
                                                  1_000 if quick else 20_000, repeats)))
    sections.append(("identical", lambda: bench_identical(run, 20_000 if quick else 200_000)))
    sections.append(("batch", lambda: bench_batch(run, 1024, 1_000 if quick else 20_000, repeats)))
    sections.append(("telemetry", lambda: bench_telemetry(run, 200_000 if quick else 2_000_000, repeats)))
    if not args.skip_memory:
        sections.append(("memory", lambda: bench_memory(1_000_000 if quick else 10_000_000)))
    sections.append(("vocab", lambda: bench_vocab((256, 4096, 65_536), repeats, quick)))
    sections.append(("corpus", lambda: bench_corpus(args.corpus, 10 if quick else 100)))
    sections.append(("startup", lambda: bench_startup(repeats)))
    sections.append(("trace", lambda: bench_trace(64 if quick else 256, 200_000 if quick else 2_000_000,
                                                  repeats=repeats)))
    sections.append(("modes", lambda: bench_modes(shakespeare(args.corpus), 200_000 if quick else 2_000_000, repeats)))
    checkouts = Checkouts()  # earlier commits, checked out when a section first asks
    sections.append(("grid", lambda: bench_grid(checkouts, 2_000_000 if quick else 20_000_000, repeats)))
    sections.append(("check", lambda: bench_check(checkouts, repeats)))
    sections.append(("sinks", lambda: bench_sinks(checkouts, 200_000 if quick else 2_000_000, repeats)))
    if args.only is not None:
        unknown = set(args.only) - {name for name, _ in sections}
        if unknown:
            parser.error(f"--only: unknown sections {sorted(unknown)}")
        sections = [(name, produce) for name, produce in sections if name in args.only]
    width = 46
    print(f"\n{'figure':<{width}}  {'measured':>18}  target / note")
    print("-" * (width + 50))
    try:
        for _, produce in sections:
            for name, value, note in produce():
                print(f"{name:<{width}}  {value:>18}  {note}", flush=True)
    finally:
        checkouts.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
