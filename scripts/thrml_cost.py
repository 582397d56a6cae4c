"""``python -m scripts.thrml_cost``: what the THRML backend costs next to SimTSU (install size, time per draw).

For each V: one payload (K = 64, Dirichlet row), the time per draw of ``SimTSU.sample``
and of ``ThrmlTSU.sample`` (THRML block-Gibbs program, compiled once per V; the
compile time is reported apart), medians of ``--repeats`` timings of ``--draws`` draws.
Install size: the files of the distributions THRML brings in (thrml, jax, jaxlib,
equinox, jaxtyping, ml_dtypes, opt_einsum, wadler-lindig), from their metadata.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from thermospec.cli.options import OneLineParser
from thermospec.core.payload import craft_payload, encode_payload
from thermospec.tsu.sim import SimTSU
from thermospec.tsu.thrml import ThrmlSampler, ThrmlTSU, thrml_available

THRML_DISTRIBUTIONS = ("thrml", "jax", "jaxlib", "equinox", "jaxtyping", "ml_dtypes", "opt_einsum", "wadler_lindig")


def install_megabytes(names: Sequence[str] = THRML_DISTRIBUTIONS) -> float:
    """Total size of the installed files of the named distributions, in MB."""
    total = 0
    for name in names:
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            continue
        for f in files:
            path = Path(f.locate())
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6


def main(argv: Sequence[str] | None = None) -> int:
    """Print the cost table; return the exit status."""
    parser = OneLineParser(prog="thrml_cost", description="THRML backend vs SimTSU: install size, time per draw")
    parser.add_argument("--Vs", type=int, nargs="+", default=[256, 4096, 16384], metavar="V",
                        help="vocabulary sizes (default: 256 4096 16384)")
    parser.add_argument("--draws", type=int, default=100_000, help="draws timed per V (default: 100000)")
    parser.add_argument("--repeats", type=int, default=5, help="timings per V, the median is reported (default: 5)")
    args = parser.parse_args(argv)
    if not thrml_available():
        print("thrml_cost: error: THRML is not installed (pip install 'thermospec[thrml]')",
              file=sys.stderr)
        return 2
    print(f"install size of thrml and its dependencies: {install_megabytes():.0f} MB")
    print("| V | SimTSU µs/draw | THRML µs/draw | THRML nodes per call | THRML compile s |")
    print("|---|---|---|---|---|")
    for V in args.Vs:
        p = np.random.default_rng(V).dirichlet(np.full(V, 0.5))
        wire = encode_payload(craft_payload(p, min(64, V), 1.0, "auto"))
        sim = SimTSU(wire)
        sampler = ThrmlSampler(V)
        refills = iter(range(1 << 30))
        thrml_tsu = ThrmlTSU(wire, sampler, sampler.key(0), refills.__next__)
        started = time.perf_counter()
        thrml_tsu.sample(np.random.default_rng(0), 1)
        compile_s = time.perf_counter() - started
        times: dict[str, list[float]] = {"sim": [], "thrml": []}
        for r in range(args.repeats):
            for name, tsu in (("sim", sim), ("thrml", thrml_tsu)):
                rng = np.random.default_rng(r)
                started = time.perf_counter()
                tsu.sample(rng, args.draws)
                times[name].append((time.perf_counter() - started) / args.draws * 1e6)
        print(f"| {V} | {statistics.median(times['sim']):.3f} | {statistics.median(times['thrml']):.2f} | "
              f"{sampler.nodes} | {compile_s:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
