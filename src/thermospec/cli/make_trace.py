"""Write a synthetic trace of Zipf-like next-token distributions: ``thermospec make-trace --help``.

Position t holds the log-probabilities of a Zipf law over a random permutation of
the vocabulary: the token of rank r (1 .. V) has ``p ∝ r^(-s_t)``, with the
position's exponent ``s_t = S * exp(jitter * z_t)``, ``z_t ~ N(0, 1)``.  Each
position draws from its own stream, keyed by (seed, t): the same seed gives the
same file, and a shorter trace is a prefix of a longer one.  ``--tokens`` adds
the observed token of each position, drawn from that position's target as a
trace loader reads it (softmax of the stored float16/float32 row).  The file
format is docs/traces.md; .npz keeps ``logprobs`` stored (memory-mappable).

A trace larger than the free space of its folder is refused before anything is
written; Ctrl-C and SIGTERM remove the partial file (exit 130, 143).  In a
checkout, ``python -m scripts.make_trace`` is the same command.

Examples
--------
thermospec make-trace --positions 256 --vocab 131072 --exponent 1.0 --seed 7 --out runs/zipf.npy
thermospec make-trace --positions 2000 --vocab 131072 --exponent 1.0 --seed 7 --out t.npz --tokens
thermospec make-trace --positions 64 --vocab 262144 --exponent 1.3 --seed 1 --out big.npz --dtype float32
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from thermospec.cli.options import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED, OneLineParser
from thermospec.runs.interrupts import Terminated, install_termination_handler
from thermospec.targets.trace import TraceWriter, softmax64

__all__ = ["MAX_VOCAB", "STOPS", "abandon", "main", "stopped", "trace_bytes", "write_trace", "zipf_row"]

MAX_VOCAB = 1 << 24
BLOCK_BYTES = 32 * 1024 * 1024
"""Rows generated, then written, at a time (in float64)."""
PROGRESS_MIN_CELLS = 50_000_000
"""Traces of at least T x V entries report progress on stderr."""
GENERATOR = "scripts.make_trace"
"""The ``meta`` name of the generator, as in the first traces: the same options give the same bytes."""


def zipf_row(
    rng: np.random.Generator, log_ranks: NDArray[np.float64], exponent: float, jitter: float
) -> NDArray[np.float64]:
    """One position's log-probabilities: a Zipf law of a jittered exponent over a random permutation."""
    s = exponent * float(np.exp(jitter * rng.standard_normal()))
    logits = -s * log_ranks
    top = logits[0]
    logp = logits - (top + np.log(np.exp(logits - top).sum()))
    row = np.empty(logp.shape[0], dtype=np.float64)
    row[rng.permutation(log_ranks.shape[0])] = logp
    return row


def trace_bytes(positions: int, vocab: int, dtype: str, tokens: bool) -> int:
    """A lower bound of the file's size: the rows, and the observed tokens (int64) if asked for."""
    return positions * vocab * np.dtype(dtype).itemsize + (8 * positions if tokens else 0)


def write_trace(
    out: Path, positions: int, vocab: int, exponent: float, seed: int, *, dtype: str = "float16",
    jitter: float = 0.1, tokens: bool = False, progress: bool | None = None,
) -> Path:
    """Write the trace described in the module docstring; return its path."""
    log_ranks = np.log(np.arange(1, vocab + 1, dtype=np.float64))
    block = max(1, BLOCK_BYTES // (8 * vocab))
    show = positions * vocab >= PROGRESS_MIN_CELLS if progress is None else progress
    observed = np.empty(positions if tokens else 0, dtype=np.int64)
    started = shown = time.perf_counter()
    with TraceWriter(out, positions, vocab, dtype) as writer:
        for start in range(0, positions, block):
            stop = min(positions, start + block)
            rows = np.empty((stop - start, vocab), dtype=np.float64)
            for t in range(start, stop):
                rng = np.random.default_rng([seed, t])
                rows[t - start] = zipf_row(rng, log_ranks, exponent, jitter)
                if tokens:
                    cdf = np.cumsum(softmax64(rows[t - start].astype(dtype)))
                    observed[t] = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), vocab - 1)
            writer.write(rows)
            if show and (time.perf_counter() - shown >= 1.0 or stop == positions):
                shown = time.perf_counter()
                rate = stop / max(shown - started, 1e-9)
                print(f"make_trace: {stop}/{positions} rows ({rate:.0f} rows/s)", file=sys.stderr, flush=True)
        meta = {"generator": GENERATOR, "exponent": exponent, "jitter": jitter, "seed": seed}
        if Path(out).suffix == ".npz":
            return writer.finish(tokens=observed if tokens else None, meta=meta)
        return writer.finish()


def build_parser(prog: str = "make_trace") -> argparse.ArgumentParser:
    """The ``make_trace`` parser."""
    doc = __doc__ or ""
    parser = OneLineParser(
        prog=prog, description=doc.split("\n\n")[0],
        epilog="\n\n".join(doc.split("\n\n")[1:]), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--positions", type=int, required=True, metavar="T", help="number of positions, >= 1")
    parser.add_argument("--vocab", type=int, required=True, metavar="V", help=f"vocabulary size, 2 .. {MAX_VOCAB}")
    parser.add_argument("--exponent", type=float, default=1.1, metavar="S", help="Zipf exponent, > 0 (default: 1.1)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed, >= 0 (default: 0)")
    parser.add_argument("--out", required=True, metavar="FILE", help="FILE.npy or FILE.npz")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="(default: float16)")
    parser.add_argument("--jitter", type=float, default=0.1, help="spread of the per-position exponent (default: 0.1)")
    parser.add_argument("--tokens", action="store_true", help="add observed tokens drawn from each row (.npz only)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """The output path, once every option is valid and the trace fits in its folder (else a one-line error)."""
    out = Path(args.out)
    if args.positions < 1:
        parser.error(f"--positions: must be >= 1, got {args.positions}")
    if not 2 <= args.vocab <= MAX_VOCAB:
        parser.error(f"--vocab: must be in 2 .. {MAX_VOCAB}, got {args.vocab}")
    if not (np.isfinite(args.exponent) and args.exponent > 0):
        parser.error(f"--exponent: must be a finite number > 0, got {args.exponent}")
    if not (np.isfinite(args.jitter) and args.jitter >= 0):
        parser.error(f"--jitter: must be a finite number >= 0, got {args.jitter}")
    if args.seed < 0:
        parser.error(f"--seed: must be >= 0, got {args.seed}")
    if out.suffix not in (".npy", ".npz"):
        parser.error(f"--out: must end in .npy or .npz, got {out}")
    if args.tokens and out.suffix != ".npz":
        parser.error("--tokens: a .npy holds only the rows; write .npz")
    if not out.parent.is_dir():
        parser.error(f"--out: folder {out.parent} does not exist")
    size, free = trace_bytes(args.positions, args.vocab, args.dtype, args.tokens), shutil.disk_usage(out.parent).free
    if size > free:
        parser.error(f"--positions {args.positions} --vocab {args.vocab}: the trace needs {size / 2**30:,.1f} GiB, "
                     f"more than the {free / 2**30:,.1f} GiB free in {out.parent}")
    return out


def main(argv: Sequence[str] | None = None, prog: str = "make_trace") -> int:
    """Entry point of ``thermospec make-trace`` (and ``python -m scripts.make_trace``); returns the exit status.

    Bad options: one line, 2.  A failed write or too little memory: one line, 1.  Ctrl-C: 130,
    SIGTERM: 143.  In every failure the partial ``FILE.part`` is removed and nothing is left.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    out = _check(parser, args)
    install_termination_handler()
    started = time.perf_counter()
    try:
        path = write_trace(out, args.positions, args.vocab, args.exponent, args.seed, dtype=args.dtype,
                           jitter=args.jitter, tokens=args.tokens, progress=False if args.quiet else None)
    except STOPS as exc:
        return stopped(prog, [out], exc)
    size = path.stat().st_size
    print(f"wrote {path}: {args.positions} x {args.vocab} {args.dtype}, {size / 2**20:.1f} MiB "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


def abandon(prog: str, outs: Sequence[Path], message: str, status: int) -> int:
    """Remove what a failed write may have left (each ``OUT.part``), print ``PROG: MESSAGE``, return `status`."""
    for out in outs:
        out.with_name(out.name + ".part").unlink(missing_ok=True)
    print(f"{prog}: {message}", file=sys.stderr)
    return status


STOPS = (OSError, MemoryError, KeyboardInterrupt, Terminated)
"""What stops a trace's write part-way; `stopped` reports each (``except STOPS as exc``)."""


def stopped(prog: str, outs: Sequence[Path], exc: BaseException) -> int:
    """Report a write of `outs` stopped by `exc` (one of `STOPS`) in one line, remove its part files; the status.

    A failed write (a full disk) or too little memory: 1; Ctrl-C: 130; SIGTERM: 143.  The one
    mapping of ``make-trace`` and ``record-trace`` (anything else is raised again).
    """
    names = " and ".join(str(out) for out in outs)
    unwritten = f"{names} {'was' if len(outs) == 1 else 'were'} not written"
    if isinstance(exc, KeyboardInterrupt):
        return abandon(prog, outs, f"interrupted; {unwritten}", EXIT_INTERRUPTED)
    if isinstance(exc, Terminated):
        return abandon(prog, outs, f"terminated (SIGTERM); {unwritten}", EXIT_TERMINATED)
    if isinstance(exc, MemoryError):
        return abandon(prog, outs, f"error: {names}: not enough memory", EXIT_FAILED)
    if isinstance(exc, OSError):
        return abandon(prog, outs, f"error: {names}: {exc.strerror or exc}", EXIT_FAILED)
    raise exc
