"""Figures of sweep folders, drawn from their CSV (and titled from their ``sweep.json``).

- a grid sweep (``m1_sweep.csv``): heatmaps of acceptance, overlap and CE gap
  over (K, τ), averaged over seeds;
- a seed sweep (``m1_seeds.csv``): per-seed points with their mean (± std band),
  the acceptance with ±2 standard errors around the overlap;
- a γ sweep (``m1_gamma_sweep.csv``): the speed-up figure of
  `gamma_sweep.plot_speedup`, redrawn from the CSV.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from thermospec.experiments.gamma_sweep import GAMMA_CSV, SPEEDUP_PNG, plot_speedup
from thermospec.experiments.grid import aggregate_grid
from thermospec.experiments.plot_base import (
    Drawn,
    PlotError,
    describe_sweep,
    legend_below,
    new_figure,
    save_figure,
    seeds_text,
)
from thermospec.experiments.sweeps import GRID_CSV, SEEDS_CSV, SWEEP_JSON, read_csv_rows

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["GRID_PNG", "SEEDS_PNG", "draw_gamma_sweep", "draw_grid", "draw_seeds", "read_table"]


GRID_PNG = "m1_sweep_heatmaps.png"
SEEDS_PNG = "m1_seeds.png"


def read_table(path: Path, needed: Sequence[str], optional: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The CSV's rows, the `needed` columns as floats (`optional` ones as floats or None where empty).

    Raises
    ------
    PlotError
        Unreadable file, no rows, a missing column or a cell that is not a number.
    """
    try:
        rows = read_csv_rows(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise PlotError(f"{path}: cannot be read ({exc})") from None
    if not rows:
        raise PlotError(f"{path}: has no rows")
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        raise PlotError(f"{path}: missing column(s) {', '.join(missing)}")
    parsed: list[dict[str, Any]] = []
    for number, row in enumerate(rows, start=2):
        try:
            values: dict[str, Any] = {c: float(row[c]) for c in needed}
            values |= {c: float(row[c]) if row.get(c) not in (None, "") else None for c in optional}
        except (TypeError, ValueError):
            raise PlotError(f"{path}: line {number} has a value that is not a number") from None
        parsed.append(values)
    return parsed


def _heatmap(fig: Figure, ax: Any, values: NDArray[np.float64], Ks: list[int], taus: list[float],
             title: str, colour_label: str, cmap: str) -> None:
    shown = np.where(np.isfinite(values), values, np.nan)
    image = ax.imshow(shown, cmap=cmap, aspect="auto", origin="lower")
    ax.set_xticks(range(len(taus)), [f"{t:g}" for t in taus])
    ax.set_yticks(range(len(Ks)), [str(k) for k in Ks])
    ax.set_xlabel("temperature τ")
    ax.set_ylabel("top-K ids sent")
    ax.set_title(title, fontsize=10)
    finite = shown[np.isfinite(shown)]
    middle = float(np.nanmean(finite)) if finite.size else 0.0
    for i in range(len(Ks)):
        for j in range(len(taus)):
            v = values[i, j]
            text = "inf" if np.isinf(v) else f"{v:.3f}"
            dark = np.isfinite(v) and (v < middle) == (cmap != "viridis_r")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label=colour_label, shrink=0.85)


def draw_grid(folder: Path) -> list[Drawn]:
    """Heatmaps of acceptance, overlap and CE gap over (K, τ), means over seeds."""
    path = folder / GRID_CSV
    fields = ("K", "tau", "seed", "steps", "accept_rate", "overlap_mass", "ce_gap_nats", "topk_mass", "psi_bytes")
    rows = _read_grid(path, fields)
    means = aggregate_grid(rows)
    Ks = sorted({int(m["K"]) for m in means})
    taus = sorted({float(m["tau"]) for m in means})
    cells = {(int(m["K"]), float(m["tau"])): m for m in means}
    panels = (("accept_rate", "acceptance rate", "fraction accepted", "viridis"),
              ("overlap_mass", "overlap mass Σ min(p, q)", "probability mass", "viridis"),
              ("ce_gap_nats", "CE gap H(p, q) − H(p)", "nats", "viridis_r"))
    seeds = sorted({int(r["seed"]) for r in rows})
    steps = int(rows[0]["steps"])
    fallback = f"(K, τ) grid · {seeds_text(seeds)} · {steps:,} fixed-context steps (no {SWEEP_JSON})"
    description = describe_sweep(folder, seeds, "fixed-context steps", fallback)
    fig = new_figure(4.0 * len(panels), 3.8, f"{description} · means over seeds")
    for index, (key, title, unit, cmap) in enumerate(panels, start=1):
        values = np.array([[cells[(k, t)][key] if (k, t) in cells else np.nan for t in taus] for k in Ks])
        _heatmap(fig, fig.add_subplot(1, len(panels), index), values, Ks, taus, title, unit, cmap)
    return [save_figure(fig, folder / GRID_PNG)]


def _read_grid(path: Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    rows = read_table(path, fields)
    for row in rows:
        row["K"] = int(row["K"])
    return rows


def draw_seeds(folder: Path) -> list[Drawn]:
    """Per-seed acceptance, overlap and CE gap, with their means (± std band); legends below the axes."""
    path = folder / SEEDS_CSV
    rows = read_table(path, ("seed", "steps", "accept_rate", "mean_overlap", "mean_ce_gap"))
    seeds = [int(r["seed"]) for r in rows]
    steps = int(rows[0]["steps"])
    fallback = f"seed sweep · {seeds_text(seeds)} · {steps:,} steps (no {SWEEP_JSON})"
    fig = new_figure(9.6, 4.8, describe_sweep(folder, seeds, "steps", fallback))
    x = np.arange(len(rows))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for ax, key, label, colour, offset in (
        (left, "accept_rate", "acceptance rate", "tab:blue", -0.08),
        (left, "mean_overlap", "mean overlap", "tab:orange", 0.08),
        (right, "mean_ce_gap", "mean CE gap", "tab:green", 0.0),
    ):
        values = np.array([r[key] for r in rows])
        if key == "accept_rate":  # ±2 standard errors of the acceptance around the overlap
            err = np.array([2 * math.sqrt(r["mean_overlap"] * (1 - r["mean_overlap"]) / r["steps"]) for r in rows])
            ax.errorbar(x + offset, values, yerr=err, fmt="o", color=colour, capsize=3,
                        label=f"{label} per seed (±2 s.e.)")
        else:
            ax.plot(x + offset, values, "o", color=colour, label=f"{label} per seed")
        finite = values[np.isfinite(values)]
        if finite.size:
            mean = float(finite.mean())
            std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
            ax.axhline(mean, color=colour, linestyle="--", linewidth=1, label=f"mean {mean:.4f} ± {std:.4f} (std)")
            ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
    for ax in (left, right):
        ax.set_xticks(x, [str(s) for s in seeds])
        ax.set_xlabel("seed")
        ax.grid(True, alpha=0.3)
        legend_below(ax, columns=2)
    left.set_ylabel("rate / probability mass")
    left.set_title("acceptance and overlap by seed", fontsize=10)
    right.set_ylabel("nats")
    right.set_title("CE gap H(p, q) − H(p) by seed", fontsize=10)
    return [save_figure(fig, folder / SEEDS_PNG)]


def draw_gamma_sweep(folder: Path) -> list[Drawn]:
    """The speed-up vs γ figure of a γ sweep, redrawn from ``m1_gamma_sweep.csv``."""
    path = folder / GAMMA_CSV
    with path.open(encoding="utf-8") as probe:  # the speed-up columns name their cost ratios
        header = probe.readline().strip().split(",")
    ratios = [(column, float(match[1])) for column in header
              if (match := re.fullmatch(r"speedup_c([0-9.eE+-]+)", column))]
    needed = ("gamma", "K", "tau", "seed", "tokens", "mean_accepted_length", "tokens_per_target_call")
    optional = ("mean_accepted_length_se", "expected_accepted_length", "expected_tokens_per_target_call")
    if not ratios:
        raise PlotError(f"{path}: no speedup_c<C> column")
    rows = read_table(path, needed, optional + tuple(column for column, _ in ratios))
    for row in rows:
        row["gamma"], row["K"], row["seed"] = int(row["gamma"]), int(row["K"]), int(row["seed"])
    first = rows[0]
    chosen = [r for r in rows if r["K"] == first["K"] and r["tau"] == first["tau"]]
    seeds = sorted({int(r["seed"]) for r in chosen})
    shown = {"K": first["K"], "tau": first["tau"], "seed": None, "gamma": None}
    title = describe_sweep(folder, seeds, "tokens per γ", "", shown) or None  # None: plot_speedup's own line
    target = folder / SPEEDUP_PNG
    try:
        figure = plot_speedup(target, rows, [c for _, c in ratios], title=title)
    except OSError as exc:
        raise PlotError(f"{target}: cannot be written ({exc.strerror or exc})") from None
    return [Drawn(target, figure)]
