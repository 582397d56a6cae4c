"""``python -m scripts.sweep_bpe_k``: acceptance and overlap vs K on a byte-level BPE token bigram target.

Trains BPE of each N on the corpus, then for each K reports the payload size, the
pi-weighted top-K mass, overlap and CE gap over every context (exact), and the
acceptance rate measured on a chain.  Prints a Markdown table; ``--csv`` writes it.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from thermospec.cli.options import OneLineParser
from thermospec.experiments.k_sweep import k_sweep
from thermospec.targets.bpe import bpe_target, parse_tokenizer
from thermospec.targets.corpus import CorpusError

DEFAULT_KS = [8, 16, 32, 64, 128, 256, 512, 1024]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; return the exit status."""
    parser = OneLineParser(prog="sweep_bpe_k", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--corpus", required=True, metavar="PATH", help="UTF-8 text to train BPE on")
    parser.add_argument("--Ns", type=int, nargs="+", default=[4096, 16384], help="BPE sizes (default: 4096 16384)")
    parser.add_argument("--Ks", type=int, nargs="+", default=DEFAULT_KS,
                        help=f"payload K values (default: {' '.join(map(str, DEFAULT_KS))})")
    parser.add_argument("--steps", type=int, default=20_000,
                        help="chain steps per K for the acceptance rate (default: 20000)")
    parser.add_argument("--seed", type=int, default=7, help="RNG seed (default: 7)")
    parser.add_argument("--csv", metavar="PATH", help="also write the rows as CSV (default: print only)")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.Ks) or args.steps < 1:
        parser.error("--Ks and --steps must be integers >= 1")
    rows = []
    try:
        for n in args.Ns:
            parse_tokenizer(f"bpe:{n}")
            started = time.perf_counter()
            target = bpe_target(args.corpus, n)
            for row in k_sweep(target, sorted(args.Ks), args.steps, args.seed):
                rows.append({"N": n, "V": target.V, **asdict(row)})
            print(f"N = {n}: V = {target.V}, {target.n_tokens} tokens, {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)
    except (CorpusError, ValueError) as exc:
        print(f"sweep_bpe_k: error: {'--corpus ' if isinstance(exc, CorpusError) else ''}{exc}", file=sys.stderr)
        return 2
    print("| N | V | K | ψ bytes | top-K mass | overlap | accept (measured) | CE gap (nats) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        gap = "inf" if r["ce_gap_nats"] is None else f"{r['ce_gap_nats']:.4f}"
        print(f"| {r['N']} | {r['V']} | {r['K']} | {r['psi_bytes']} | {r['topk_mass']:.4f} | "
              f"{r['overlap_mass']:.4f} | {r['accept_rate']:.4f} | {gap} |")
    if args.csv:
        with Path(args.csv).open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
