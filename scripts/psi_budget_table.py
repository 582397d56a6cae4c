"""``python -m scripts.psi_budget_table``: fixed K against K per context under a mean ψ-bytes budget.

On the Tiny Shakespeare character bigram (weights π, the chain's stationary law;
no draft model, so ψ is crafted from the target's own row), prints for each fixed
K its ψ size and exact one-draft acceptance ``Σ_c π_c Σ min(p_c, F(ψ_c))``, then
the budget allocation (`thermospec.tsu.budget`, K ≤ ``--K-max``) at the same bytes:
its design mean size, acceptance, gain over the fixed K and the range of K it
chose.  Nothing is sampled: every number is exact.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from thermospec.cli.options import OneLineParser
from thermospec.core.payload import payload_size
from thermospec.targets.characters import character_target
from thermospec.targets.corpus import CorpusError
from thermospec.tsu.budget import BudgetPlan, overlap_curves

REPO = Path(__file__).resolve().parent.parent
CORPUS_CANDIDATES = (REPO / "data" / "tinyshakespeare.txt", REPO.parent / "shared" / "data" / "tinyshakespeare.txt")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table; exit status 2 with one line on stderr when the corpus cannot be used."""
    parser = OneLineParser(prog="psi_budget_table", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--corpus", metavar="PATH", help="Tiny Shakespeare (default: data/ or ../shared/data/)")
    parser.add_argument("--K", type=int, nargs="+", default=[4, 8, 16, 32], help="fixed Ks (default: 4 8 16 32)")
    parser.add_argument("--K-max", type=int, default=64, help="largest K the budget may choose (default: 64)")
    parser.add_argument("--tau", type=float, default=1.0, help="temperature τ (default: 1)")
    args = parser.parse_args(argv)
    if args.K_max < 1 or any(k < 1 or k > args.K_max for k in args.K):
        parser.error("--K: every K must be in [1, --K-max]")
    if not (np.isfinite(args.tau) and args.tau > 0):
        parser.error("--tau: must be a finite number > 0")
    corpus = args.corpus or next((str(c) for c in CORPUS_CANDIDATES if c.is_file()), None)
    if corpus is None:
        print("psi_budget_table: Tiny Shakespeare not in data/ or ../shared/data/ (give --corpus)", file=sys.stderr)
        return 2
    try:
        target = character_target(corpus)
    except (CorpusError, OSError) as exc:
        print(f"psi_budget_table: --corpus {corpus}: {exc}", file=sys.stderr)
        return 2
    pi = np.asarray(target.pi, dtype=np.float64)
    rows = np.array([target.row(c) for c in range(target.V)])
    curves = overlap_curves(rows, target.V, args.K_max, args.tau, "auto")
    plan = BudgetPlan(curves, pi)
    fixed = pi @ curves.overlap
    print(f"Tiny Shakespeare character bigram, V = {target.V}, weights π, τ = {args.tau:g}, ε auto, K ≤ {args.K_max}")
    print(f"{'K':>4} {'bytes':>6} {'fixed K':>8} | {'budget mean B':>13} {'acceptance':>10} {'gain':>8} {'K range':>8}")
    for k in args.K:
        budget = float(payload_size(k, target.V))
        allocation = plan.allocate(budget)
        chosen = f"{allocation.K.min()}-{allocation.K.max()}"
        print(
            f"{k:>4} {budget:>6.0f} {fixed[k - 1]:>8.4f} | {allocation.mean_bytes:>13.2f} "
            f"{allocation.mean_overlap:>10.4f} {allocation.mean_overlap - fixed[k - 1]:>+8.4f} {chosen:>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
