"""The γ sweep: accepted length and modelled speed-up of γ-token blocks vs γ, and its plot.

``python -m scripts.sweep_m1_grid --gammas 1 2 4 8`` runs, for each (K, τ, seed, γ),
a chain of γ-token blocks of ``--steps`` tokens (`blocks.run_blocks`, stream
``random_stream(seed, Stream.CHAIN)`` as ``run --gamma`` uses) and reports the
measured mean accepted length (± batch-means standard error) beside its exact
expectation along the chain (`blocks.block_expectation`), tokens per target call,
and the modelled wall-time speed-up ``tokens per target call / (γ c + 1)`` for
each cost ratio c of ``--cost-ratios``.  Rows go to ``m1_gamma_sweep.csv``; the
figure ``m1_speedup_vs_gamma.png`` draws the exact speed-up against γ, one line per
c, with the measured points.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from thermospec.core.expectation import EXPECTATION_MAX_V, block_expectation, modelled_speedup
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.blocks import run_blocks
from thermospec.engine.chain import dense_matrices
from thermospec.engine.keys import BigramSource
from thermospec.engine.tally import BlockTally
from thermospec.runs.block_run import batch_means_se
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import prepare_run, sparse_rows

__all__ = [
    "DEFAULT_COST_RATIOS",
    "GAMMA_CSV",
    "SPEEDUP_PNG",
    "GammaPoint",
    "format_gamma_table",
    "gamma_fields",
    "gamma_points",
    "gamma_row",
    "gamma_task",
    "plot_speedup",
]


GAMMA_CSV = "m1_gamma_sweep.csv"


SPEEDUP_PNG = "m1_speedup_vs_gamma.png"


DEFAULT_COST_RATIOS = (0.0, 0.05, 0.1, 0.2)


def _speedup_key(c: float) -> str:
    return f"speedup_c{c:g}"


@dataclass(frozen=True)
class GammaPoint:
    """One configuration of a γ sweep: its row depends on nothing else (its own random stream)."""

    seed: int
    K: int
    tau: float
    gamma: int


def gamma_points(gammas: Sequence[int], Ks: Sequence[int], taus: Sequence[float],
                 seeds: Sequence[int]) -> list[GammaPoint]:
    """The configurations in the CSV's order: seed, then K, then τ, then γ."""
    return [GammaPoint(s, k, t, g) for s, k, t, g in itertools.product(seeds, Ks, taus, gammas)]


def gamma_fields(cost_ratios: Sequence[float]) -> list[str]:
    """The CSV's columns."""
    return ["gamma", "K", "tau", "seed", "blocks", "tokens", "mean_accepted_length", "mean_accepted_length_se",
            "expected_accepted_length", "iid_formula_accepted_length", "tokens_per_target_call",
            "expected_tokens_per_target_call", *[_speedup_key(c) for c in cost_ratios]]


def gamma_row(base: RunConfig, steps: int, cost_ratios: Sequence[float], point: GammaPoint) -> dict[str, Any]:
    """The row of one (K, τ, seed, γ): measured and exact accepted length, tokens per call, speed-ups."""
    run = prepare_run(dataclasses.replace(base, seed=point.seed, K=point.K, tau=point.tau, steps=steps, gamma=None))
    t, gamma = run.target, point.gamma
    tally = BlockTally(t.V, gamma)
    rng = random_stream(point.seed, Stream.CHAIN)
    for chunk in run_blocks(BigramSource(t), run.proposer.draft, gamma, steps, rng, sparse=sparse_rows(run)):
        tally.update(chunk)
    lengths = tally.accepted_lengths()
    measured_tpc = tally.tokens / tally.blocks
    exact = (block_expectation(*dense_matrices(t.row, run.proposer.draft, t.V), t.pi, gamma)
             if t.V <= EXPECTATION_MAX_V else None)
    row: dict[str, Any] = {
        "gamma": gamma, "K": point.K, "tau": point.tau, "seed": point.seed, "blocks": tally.blocks,
        "tokens": tally.tokens,
        "mean_accepted_length": float(lengths.mean()),
        "mean_accepted_length_se": batch_means_se(lengths),
        "expected_accepted_length": None if exact is None else exact.accepted_length,
        "iid_formula_accepted_length": None if exact is None else exact.iid_tokens_per_target_call - 1.0,
        "tokens_per_target_call": measured_tpc,
        "expected_tokens_per_target_call": None if exact is None else exact.tokens_per_target_call,
    }
    for c in cost_ratios:
        tpc = measured_tpc if exact is None else exact.tokens_per_target_call
        row[_speedup_key(c)] = modelled_speedup(tpc, gamma, c)
    return row


def gamma_task(base: RunConfig, steps: int, cost_ratios: Sequence[float]) -> Callable[[GammaPoint], dict[str, Any]]:
    """`gamma_row` bound to a sweep: picklable, so it runs in any worker."""
    return partial(gamma_row, base, steps, tuple(cost_ratios))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_gamma_table(rows: Sequence[Mapping[str, Any]], cost_ratios: Sequence[float]) -> str:
    """A Markdown table of the rows."""
    head = ["γ", "K", "τ", "seed", "accepted length (measured ± se)", "exact", "i.i.d. formula",
            "tokens / target call", *[f"speed-up c={c:g}" for c in cost_ratios]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            str(r["gamma"]), str(r["K"]), f"{r['tau']:g}", str(r["seed"]),
            f"{r['mean_accepted_length']:.4f} ± {r['mean_accepted_length_se']:.4f}",
            _fmt(r["expected_accepted_length"]), _fmt(r["iid_formula_accepted_length"]),
            _fmt(r["tokens_per_target_call"], 3), *[_fmt(r[_speedup_key(c)], 3) for c in cost_ratios],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_speedup(
    path: Path, rows: Sequence[Mapping[str, Any]], cost_ratios: Sequence[float], title: str | None = None
) -> Any:
    """Speed-up vs γ, one line per cost ratio, for the first (K, τ) of the rows, averaged over seeds.

    Exact values are lines with hollow circles; the measured values are crosses
    drawn on top of them (±2 standard errors of the mean over seeds), so neither
    hides the other.  The legend sits below the axes, over no data.

    Parameters
    ----------
    path : Path
        The PNG to write (200 dpi).
    rows : sequence of mappings
        `gamma_rows` rows, or the same read back from ``m1_gamma_sweep.csv`` (None where empty).
    cost_ratios : sequence of float
        The ``speedup_c<c>`` columns to draw.
    title : str, optional
        The figure's first title line (what was run); by default K, τ, the seeds and tokens of the rows.

    Returns
    -------
    matplotlib.figure.Figure
        The figure written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    first = rows[0]
    chosen = [r for r in rows if r["K"] == first["K"] and r["tau"] == first["tau"]]
    gammas = sorted({int(r["gamma"]) for r in chosen})

    def values_of(gamma: int, key: str) -> list[float]:
        return [float(r[key]) for r in chosen if r["gamma"] == gamma and r.get(key) is not None]

    def mean_of(gamma: int, key: str) -> float:
        values = values_of(gamma, key)
        return math.fsum(values) / len(values) if values else math.nan

    def se_of_mean(gamma: int) -> float:  # of tokens per call = 1 + accepted length: the same standard error
        ses = values_of(gamma, "mean_accepted_length_se")
        return math.sqrt(math.fsum(s * s for s in ses)) / len(ses) if ses else math.nan

    seeds = sorted({int(r["seed"]) for r in chosen})
    tokens = min(int(r["tokens"]) for r in chosen)
    if title is None:
        title = (f"K = {first['K']} · τ = {float(first['tau']):g} · seed{'s' if len(seeds) > 1 else ''} "
                 f"{', '.join(map(str, seeds))} · ≥ {tokens:,} tokens per γ")
    figure = Figure(figsize=(6.4, 4.6), dpi=200, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for c in cost_ratios:
        exact = [mean_of(g, _speedup_key(c)) for g in gammas]
        line = ax.plot(gammas, exact, marker="o", markersize=8, markerfacecolor="none", markeredgewidth=1.2,
                       zorder=2, label=f"c = {c:g}")[0]
        measured = [mean_of(g, "tokens_per_target_call") / (g * c + 1) for g in gammas]
        error = [2 * se_of_mean(g) / (g * c + 1) for g in gammas]
        ax.errorbar(gammas, measured, yerr=error, linestyle="none", marker="x", markersize=6, markeredgewidth=1.5,
                    elinewidth=1, capsize=2, color=line.get_color(), zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks(gammas, [str(g) for g in gammas])
    ax.set_xlabel("γ (drafts per target call)")
    ax.set_ylabel("modelled speed-up  (tokens per call) / (γ c + 1)")
    figure.suptitle(title, fontsize=9)
    ax.set_title("γ-token blocks: lines and ○ exact, × measured (±2 s.e.)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(title="cost ratio c", loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=len(cost_ratios),
              fontsize=8, title_fontsize=8, frameon=False)
    figure.savefig(path, dpi=200)
    return figure
