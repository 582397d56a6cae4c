"""``python -m scripts.verifier_table``: exact acceptance of each multi-draft verifier against the limit.

For each target (Tiny Shakespeare at K = 8 and K = 32, the synthetic default V = 256,
K = 64) and each number of drafts N, prints the π-weighted (the bigram chain's
stationary law) exact acceptance of every verifier of `thermospec.core.verifiers`,
the optimum over all exact verifiers (closed form; the HiGHS transport LP too where
it is small enough), the per-token bound ``Σ min(p, 1 − (1 − q)^N)``, the share of
the optimum's gain over one draft that each verifier achieves, and the mean TSU
draws per step (drafts drawn only while needed).  Nothing is sampled: every number is exact.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thermospec.cli.options import OneLineParser
from thermospec.core.transport import LP_MAX_VOCAB, acceptance_bound, acceptance_optimum, lp_acceptance_optimum
from thermospec.core.verifiers import VERIFIERS, make_plan
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import PreparedRun, prepare_run

REPO = Path(__file__).resolve().parent.parent
CORPUS_CANDIDATES = (REPO / "data" / "tinyshakespeare.txt", REPO.parent / "shared" / "data" / "tinyshakespeare.txt")


@dataclass
class Row:
    """π-weighted exact numbers of one target at one N."""

    target: str
    n: int
    acceptance: dict[str, float]
    draws: dict[str, float]
    optimum: float
    bound: float
    lp: float | None


def table_rows(label: str, run: PreparedRun, drafts: Sequence[int], lp: bool) -> list[Row]:
    """Exact π-weighted acceptances of every verifier on `run`'s target, for each N in `drafts`."""
    target = run.target
    pi = np.asarray(target.pi, dtype=np.float64)
    contexts = [int(x) for x in np.flatnonzero(pi > 0)]
    rows = []
    for n in drafts:
        started = time.perf_counter()
        acc = dict.fromkeys(VERIFIERS, 0.0)
        draws = dict.fromkeys(VERIFIERS, 0.0)
        optimum = bound = 0.0
        use_lp = lp and n > 1 and LP_MAX_VOCAB.get(n, 0) >= target.V
        lp_value = 0.0
        for x in contexts:
            p = np.asarray(target.row(x), dtype=np.float64)
            q = run.proposer.draft(x).tsu.q
            w = float(pi[x])
            for name in VERIFIERS:
                plan = make_plan(name, p, q, n)
                acc[name] += w * plan.acceptance
                draws[name] += w * plan.expected_draws
            optimum += w * acceptance_optimum(p, q, n)
            bound += w * acceptance_bound(p, q, n)
            if use_lp:
                lp_value += w * lp_acceptance_optimum(p, q, n)
        rows.append(Row(label, n, acc, draws, optimum, bound, lp_value if use_lp else None))
        print(f"{label} N = {n}: {len(contexts)} contexts, {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return rows


def gain_share(value: float, one: float, best: float) -> str:
    """``(value − one) / (best − one)``, the share of the attainable gain over one draft ('—' if there is none)."""
    return "—" if best - one <= 1e-12 else f"{(value - one) / (best - one):.2f}"


def print_table(rows: list[Row]) -> None:
    """The Markdown tables: acceptance, share of the optimum's gain, mean TSU draws."""
    names = " | ".join(VERIFIERS)
    shares = " | ".join(f"share {v}" for v in VERIFIERS)
    draws = " | ".join(f"draws {v}" for v in VERIFIERS)
    print(f"| target | N | {names} | optimum | LP optimum | bound | {shares} | {draws} |")
    print("|---" * (5 + 3 * len(VERIFIERS)) + "|")
    one: dict[str, float] = {}
    for r in rows:
        if r.n == 1:
            one[r.target] = r.acceptance["recursive"]
        base = one.get(r.target, r.acceptance["recursive"])
        accs = " | ".join(f"{r.acceptance[v]:.4f}" for v in VERIFIERS)
        shares = " | ".join(gain_share(r.acceptance[v], base, r.optimum) for v in VERIFIERS)
        draws = " | ".join(f"{r.draws[v]:.2f}" for v in VERIFIERS)
        lp = "—" if r.lp is None else f"{r.lp:.4f}"
        print(f"| {r.target} | {r.n} | {accs} | {r.optimum:.4f} | {lp} | {r.bound:.4f} | {shares} | {draws} |")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table; return the exit status."""
    parser = OneLineParser(prog="verifier_table", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--corpus", metavar="PATH", help="Tiny Shakespeare (default: data/ or ../shared/data/)")
    parser.add_argument("--drafts", type=int, nargs="+", default=[1, 2, 4, 8], help="values of N (default: 1 2 4 8)")
    parser.add_argument("--no-lp", action="store_true", help="skip the HiGHS transport LP (a few seconds per target)")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.drafts):
        parser.error("--drafts: every N must be >= 1")
    drafts = sorted(set(args.drafts) | {1})
    corpus = args.corpus or next((str(c) for c in CORPUS_CANDIDATES if c.is_file()), None)
    targets: list[tuple[str, RunConfig]] = []
    if corpus is None:
        print("verifier_table: Tiny Shakespeare not found; synthetic target only", file=sys.stderr)
    else:
        targets += [(f"shakespeare K={k}", RunConfig(corpus=corpus, K=k)) for k in (8, 32)]
    targets.append(("synthetic V=256 K=64", RunConfig()))
    rows: list[Row] = []
    for label, config in targets:
        rows += table_rows(label, prepare_run(config), drafts, lp=not args.no_lp)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
