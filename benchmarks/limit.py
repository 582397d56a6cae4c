"""The C limit: the chain as the plainest fast C loop (``limit.c``, ``-O3 -march=native``); thermospec's ratio to it.

The loop is built at bench time with the system C compiler into a temporary
folder; it is benchmark code, not part of the package (whose wheel must run on
any x86-64, so it is never built with ``-march=native``).  It is written from the
specification, independently of the package's kernel: it is given the model (each
context's target row p, its F(ψ) q and the cumulative F(ψ) the TSU inverts), builds
its own tables from it (p / q, the residual's running sum, a guide table per draw)
and steps each chain with three PCG64 uniforms per step, a guide bucket and a
branch-free bisection (``i += half & -(cdf[i + half - 1] <= t)``) per draw, and one
count per step.  It is given each chain's NumPy PCG64 state after its start token,
so it emits the same tokens, which the bench checks (a prefix of every token, and
the counts of all) before it quotes a ratio.  Contenders alternate in one process
(A B A B ...); medians are quoted, of wall time and, for the engine's
one chain, of CPU time too (the C loop's CPU time is its loop's, thermospec's the
whole `run_chain`'s): on a machine whose cores other work shares, the CPU-time ratio
is the steadier one.

So the ratio is what the package costs against a C programmer's loop.  One chain is
compared as the engine runs it keeping only its counts (``run_chain(..., tally=,
record=False)``, what a run without telemetry needs) and as the command ``run
--telemetry none`` runs it; B chains as ``run --chains B --telemetry none`` (the
summary's tokens/s, set-up included: the C loop's time is its loop's).

Instruction sets: the C loop is built with ``-march=native``; the package's extension
is built for baseline x86-64 (its wheel runs on any), and its counting loops also carry
a copy compiled for AVX2 + BMI2 that it picks at run time when the CPU has them
(``_kernels.isa()``, reported in the rows): the same operations and rounding (no FMA).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.core.sampling import inverse_cdf
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.batch import chain_stream, run_batch
from thermospec.engine.chain import dense_matrices, run_chain, start_token
from thermospec.engine.kernels import compiled_module
from thermospec.engine.tally import BatchTally, RunTally
from thermospec.runs.executor import execute_run
from thermospec.runs.prepare import PreparedRun

SOURCE = Path(__file__).with_name("limit.c")
FLAGS = ("-O3", "-march=native")
Row = tuple[str, str, str]
MAX_VOCAB = 4096


@dataclasses.dataclass
class LimitRun:
    """What one run of the C loop reports: its stepping time (wall, CPU) and its counts (and tokens, when dumped)."""

    seconds: float
    cpu_seconds: float
    accepted: int
    transitions: NDArray[np.int64]
    emitted: NDArray[np.int64] | None


def build(folder: Path) -> Path | None:
    """Compile ``limit.c`` into `folder` with ``$CC`` (default ``cc``); None without a compiler."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    exe = folder / "limit"
    subprocess.run([cc, *FLAGS, "-pthread", "-o", str(exe), str(SOURCE)], check=True, capture_output=True)
    return exe


def dump_model(run: PreparedRun, path: Path) -> None:
    """Write V, then every context's target row p, its F(ψ) q and the cumulative F(ψ) its TSU inverts."""
    target, drafts = run.target, run.proposer.draft
    p, q = dense_matrices(target.row, drafts, target.V)
    cdf = np.stack([drafts(x).tsu.cdf for x in range(target.V)])
    with path.open("wb") as out:
        out.write(np.array([target.V], dtype=np.int64).tobytes())
        for matrix in (p, q, cdf):
            out.write(np.ascontiguousarray(matrix, dtype=np.float64).tobytes())


def dump_chains(path: Path, starts: NDArray[np.int64], rngs: list[np.random.Generator]) -> None:
    """Write each chain's start token and PCG64 state (state and increment, high and low words)."""
    rows = []
    mask = (1 << 64) - 1
    for x0, rng in zip(starts.tolist(), rngs, strict=True):
        state = rng.bit_generator.state
        if state["bit_generator"] != "PCG64":
            raise ValueError("dump_chains: the C limit draws PCG64 uniforms only")
        s, inc = int(state["state"]["state"]), int(state["state"]["inc"])
        rows.append([x0, s >> 64, s & mask, inc >> 64, inc & mask])
    with path.open("wb") as out:
        out.write(np.array([len(rows)], dtype=np.int64).tobytes())
        out.write(np.array(rows, dtype=np.uint64).tobytes())


def run_limit(exe: Path, folder: Path, steps: int, threads: int, dump: bool = False) -> LimitRun:
    """Run the C loop on ``folder/model.bin`` and ``folder/chains.bin``."""
    out = folder / "out.bin"
    args = [str(exe), str(folder / "model.bin"), str(folder / "chains.bin"), str(steps), str(threads), str(out)]
    times = subprocess.run([*args, *(["dump"] if dump else [])], check=True, capture_output=True,
                           text=True).stdout.split()
    raw = np.fromfile(out, dtype=np.int64)
    out.unlink()
    V = int(np.fromfile(folder / "model.bin", dtype=np.int64, count=1)[0])
    emitted = raw[1 + V * V:] if dump else None
    return LimitRun(seconds=float(times[0]), cpu_seconds=float(times[1]), accepted=int(raw[0]),
                    transitions=raw[1:1 + V * V], emitted=emitted)


Rates = tuple[float, float]
"""A contender's tokens per second of wall time and per second of CPU time (all its threads)."""


def alternate(contenders: list[Callable[[], Rates]], repeats: int) -> list[Rates]:
    """Median of each contender's rates (wall, CPU), the contenders run in turn (A B A B ...)."""
    rates: list[list[Rates]] = [[] for _ in contenders]
    for _ in range(repeats):
        for rates_of, contender in zip(rates, contenders, strict=True):
            rates_of.append(contender())
    return [(statistics.median(w for w, _ in r), statistics.median(c for _, c in r)) for r in rates]


def sequential_counts(run: PreparedRun, steps: int) -> tuple[RunTally, float, float]:
    """The sequential chain keeping the counts of ``run --telemetry none``: its `RunTally`, seconds, CPU seconds.

    The engine adds each step to the tally as it steps and records nothing else (``run_chain(..., tally=,
    record=False)``).
    """
    target = run.target
    tally = RunTally(target.V, track_transitions=True)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in run_chain(target.row, target.pi, run.proposer.draft, steps, random_stream(run.config.seed, Stream.CHAIN),
                       tally=tally, record=False):
        pass
    return tally, time.perf_counter() - start, time.process_time() - cpu


def command_rate(run: PreparedRun, chains: int) -> Rates:
    """The summary's tokens/s of ``run [--chains B] --telemetry none`` (`execute_run`, as the command runs it).

    No CPU rate (NaN): the call's CPU time includes the summary's statistics, which its tokens/s leaves out.
    """
    with tempfile.TemporaryDirectory() as out:
        summary: dict[str, Any] = execute_run(run, Path(out), telemetry="none", chains=chains)
    return float(summary["tokens_per_s"]), math.nan


def _same(tally_accepted: int, tally_transitions: NDArray[np.int64] | None, limit: LimitRun) -> bool:
    return (tally_accepted == limit.accepted and tally_transitions is not None
            and bool(np.array_equal(tally_transitions, limit.transitions)))


def bench_limit(run: PreparedRun, steps: int, chains: int, batch_steps: int, repeats: int,
                prefix: int = 200_000) -> list[Row]:
    """Thermospec against the C limit: one chain (counted, telemetry off) and ``run --chains B --telemetry none``."""
    target, seed = run.target, run.config.seed
    threads = os.cpu_count() or 1
    if target.V > MAX_VOCAB:
        return [("C limit", "skipped", f"V = {target.V}: the dense model is too large (V <= {MAX_VOCAB})")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        try:
            exe = build(folder)
        except subprocess.CalledProcessError as exc:
            return [("C limit", "not built", exc.stderr.decode(errors="replace").strip().splitlines()[-1])]
        if exe is None:
            return [("C limit", "not built", "no C compiler (cc)")]
        dump_model(run, folder / "model.bin")
        rows: list[Row] = []

        # One chain: the stream of the single-chain run, after its start token.
        rng = random_stream(seed, Stream.CHAIN)
        dump_chains(folder / "chains.bin", np.array([start_token(target.pi, rng)], dtype=np.int64), [rng])
        head = min(prefix, steps)
        tokens = np.concatenate([c.emitted for c in run_chain(target.row, target.pi, run.proposer.draft, head,
                                                              random_stream(seed, Stream.CHAIN))])
        limit_head = run_limit(exe, folder, head, 1, dump=True)
        same_head = limit_head.emitted is not None and bool(np.array_equal(limit_head.emitted, tokens))
        checked: dict[str, LimitRun] = {}

        def c_sequential() -> Rates:
            result = run_limit(exe, folder, steps, 1)
            checked.setdefault("sequential", result)
            return steps / result.seconds, steps / result.cpu_seconds

        tallies: list[RunTally] = []

        def ours_sequential() -> Rates:
            tally, seconds, cpu = sequential_counts(run, steps)
            tallies.append(tally)
            return steps / seconds, steps / cpu

        one = PreparedRun(config=dataclasses.replace(run.config, steps=steps), target=target, proposer=run.proposer)

        def ours_command() -> Rates:
            return command_rate(one, 1)

        ours, command, limit = alternate([ours_sequential, ours_command, c_sequential], repeats)
        same_all = _same(tallies[0].accepted, tallies[0].transitions, checked["sequential"])
        rows.append(("C limit: one chain, counted", _fmt(limit[0]),
                     f"{_target(run)}; {' '.join(FLAGS)}; same tokens: {_yes(same_head)} ({head:,}-step prefix), "
                     f"same counts: {_yes(same_all)} ({steps:,} steps)"))
        rows.append(("  thermospec one chain, counted, telemetry off", _fmt(ours[0]),
                     f"ratio to the C limit {_ratios(ours, limit)} (aim >= 0.9); run_chain(tally=, record=False): "
                     f"the kernel counts ({_isa()})"))
        rows.append(("  run --telemetry none (the command)", _fmt(command[0]),
                     f"ratio {_ratios(command, limit)}; the one executor around the engine (telemetry off)"))

        # B chains: chain b's stream after its start token, as `run_batch` draws them.
        rngs = [chain_stream(seed, b) for b in range(chains)]
        starts = inverse_cdf(np.cumsum(target.pi), np.array([r.random() for r in rngs], dtype=np.float64))
        dump_chains(folder / "chains.bin", starts.astype(np.int64), rngs)
        few = min(batch_steps, 64)
        recorded = np.concatenate([c.emitted for c in run_batch(target.row, target.pi, run.proposer.draft, few,
                                                                seed, chains)], axis=1)
        limit_few = run_limit(exe, folder, few, threads, dump=True)
        same_few = limit_few.emitted is not None and bool(
            np.array_equal(limit_few.emitted.reshape(chains, few), recorded))
        counted = BatchTally(chains, target.V, track_transitions=True, per_chain=False)
        for _ in run_batch(target.row, target.pi, run.proposer.draft, batch_steps, seed, chains, tally=counted,
                           reuse_outputs=True, record=False):
            pass

        def c_batch() -> Rates:
            result = run_limit(exe, folder, batch_steps, threads)
            checked.setdefault("batch", result)
            return chains * batch_steps / result.seconds, chains * batch_steps / result.cpu_seconds

        prepared = PreparedRun(config=dataclasses.replace(run.config, steps=batch_steps), target=target,
                               proposer=run.proposer)

        def ours_batch() -> Rates:
            return command_rate(prepared, chains)

        ours, limit = alternate([ours_batch, c_batch], repeats)
        same_all = _same(int(counted.accepted.sum()), counted.transitions, checked["batch"])
        rows.append((f"C limit: B = {chains}, {threads} threads, counted", _fmt(limit[0]),
                     f"same tokens: {_yes(same_few)} ({few} steps of every chain), "
                     f"same counts: {_yes(same_all)} ({batch_steps:,} steps)"))
        rows.append((f"  thermospec run --chains {chains} --telemetry none", _fmt(ours[0]),
                     f"ratio to the C limit {_ratios(ours, limit)} (aim >= 0.9); {_isa()}"))
    return rows


def _isa() -> str:
    """The instruction set the package's counting loops run on here."""
    module = compiled_module()
    isa = getattr(module, "isa", None)
    return "no compiled kernel" if isa is None else f"its loops: {isa()}, baseline x86-64 build"


def _target(run: PreparedRun) -> str:
    source = "synthetic" if run.config.corpus is None else Path(run.config.corpus).name
    return f"{source}, V = {run.target.V}, K = {run.config.K}"


def _ratios(ours: Rates, limit: Rates) -> str:
    """Wall-time ratio, and the CPU-time one when `ours` has a CPU rate (steadier when other work shares the cores)."""
    cpu = "" if math.isnan(ours[1]) else f" (CPU time: {ours[1] / limit[1]:.2f})"
    return f"{ours[0] / limit[0]:.2f}{cpu}"


def _fmt(rate: float) -> str:
    return f"{rate / 1e6:,.2f} Mtokens/s"


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"
