"""``python -m scripts.draft_models_table``: where the acceptance goes on Tiny Shakespeare (docs/draft-models.md).

Three tables from seeded runs (``thermospec.run``, telemetry off), each row one run:

1. an order-5 target drafted by the order-M model of the same corpus, M = 1 … 5 (M = 5 is the
   target itself), K = 8: acceptance and the three losses (draft model, top-K, 8-bit codes);
2. the bigram target drafted by itself, K = 4 … 64: the three losses against K;
3. fixed K against ``--psi-budget`` at the same mean ψ bytes (K ≤ 32).

With ``--figure`` it also draws the losses of table 2 against K (``losses_vs_K.png``) in a new
folder of ``--runs-dir``, where the runs go too (``make figures`` calls it that way).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thermospec import api
from thermospec.cli.options import OneLineParser
from thermospec.core.payload import payload_size
from thermospec.runs.config import ConfigError
from thermospec.runs.storage import create_run_dir

REPO = Path(__file__).resolve().parent.parent
CORPUS_CANDIDATES = (REPO / "data" / "tinyshakespeare.txt", REPO.parent / "shared" / "data" / "tinyshakespeare.txt")
LOSSES = ("loss_draft_model", "loss_top_k", "loss_quantisation")
FIGURE = "losses_vs_K.png"


def _run(runs: Path, steps: int, **options: Any) -> dict[str, Any]:
    record: dict[str, Any] = api.run(runs_dir=runs, telemetry="none", steps=steps, seed=7, **options).summary.record
    return record


def _row(label: str, record: dict[str, Any]) -> str:
    losses = " ".join(f"{record[name]:>+10.4f}" for name in LOSSES)
    return f"{label:<22} {record['accept_rate']:>8.4f} {record['mean_overlap']:>8.4f} {losses}"


HEADER = f"{'':<22} {'accept':>8} {'overlap':>8} {'draft':>10} {'top-K':>10} {'codes':>10}"


def _draw(path: Path, Ks: Sequence[int], records: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for name, label in zip(LOSSES, ("draft model", "top-K, tail and τ", "8-bit codes"), strict=True):
        axes.plot(Ks, [r[name] for r in records], marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_xticks(list(Ks), [str(k) for k in Ks])
    axes.set_xlabel("K (ids sent in ψ)")
    axes.set_ylabel("acceptance lost (mean over steps)")
    axes.set_title("Tiny Shakespeare bigram drafted by itself: where the acceptance goes", fontsize=10)
    axes.axhline(0.0, color="grey", linewidth=0.5)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the three tables (and draw the figure); one line and exit status 2 on bad input."""
    parser = OneLineParser(prog="draft_models_table", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--corpus", metavar="PATH", help="Tiny Shakespeare (default: data/ or ../shared/data/)")
    parser.add_argument("--steps", type=int, default=200_000, help="steps per run (default: 200000)")
    parser.add_argument("--runs-dir", metavar="DIR", default="runs", help="where the runs go (default: runs)")
    parser.add_argument("--figure", action="store_true", help=f"also draw {FIGURE} in a new folder of --runs-dir")
    parser.add_argument("--quiet", action="store_true", help="accepted for make figures (nothing is drawn on stderr)")
    args = parser.parse_args(argv)
    corpus = args.corpus or next((str(c) for c in CORPUS_CANDIDATES if c.is_file()), None)
    if corpus is None:
        print("draft_models_table: Tiny Shakespeare not in data/ or ../shared/data/ (give --corpus)", file=sys.stderr)
        return 2
    if args.steps < 1:
        parser.error("--steps: must be an integer >= 1")
    folder = create_run_dir(Path(args.runs_dir))
    runs = folder / "runs"
    try:
        print(f"1. order-5 target drafted by the order-M model of the same corpus, K = 8, {args.steps:,} steps")
        print(HEADER)
        for M in range(1, 6):
            label = f"order {M}" + (" (itself)" if M == 5 else "")
            print(_row(label, _run(runs, args.steps, corpus=corpus, order=5, draft_order=M, K=8)))
        Ks = (4, 8, 16, 32, 64)
        print(f"\n2. bigram target drafted by itself, {args.steps:,} steps")
        print(HEADER)
        bigram = [_run(runs, args.steps, corpus=corpus, K=k) for k in Ks]
        for k, record in zip(Ks, bigram, strict=True):
            print(_row(f"K = {k}", record))
        print(f"\n3. fixed K against --psi-budget at the same mean ψ bytes (K <= 32), {args.steps:,} steps")
        print(f"{'':<22} {'accept':>8} {'overlap':>8} {'mean ψ B':>10}")
        for k in (4, 8, 16):
            size = payload_size(k, 65)  # ids of 2 bytes, as for any V <= 65,536
            fixed = _run(runs, args.steps, corpus=corpus, K=k)
            budget = _run(runs, args.steps, corpus=corpus, K=32, psi_budget=size)
            plan = budget["psi_budget"]
            print(f"{f'K = {k}':<22} {fixed['accept_rate']:>8.4f} {fixed['mean_overlap']:>8.4f} {size:>10.2f}")
            print(f"{f'--psi-budget {size}':<22} {budget['accept_rate']:>8.4f} {budget['mean_overlap']:>8.4f} "
                  f"{plan['realised_mean_bytes']:>10.2f}")
    except ConfigError as exc:
        print(f"draft_models_table: {exc}", file=sys.stderr)
        return 2
    if args.figure:
        _draw(folder / FIGURE, Ks, bigram)
        print(f"\nwrote {folder / FIGURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
