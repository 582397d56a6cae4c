"""Figures of runs and sweeps, written as PNGs beside their data.

- a run folder (``m1_metrics.jsonl``): the running acceptance rate against the
  running mean overlap, per-context acceptance against overlap (with the
  y = x line and ±2 standard-error bars), and the histogram of the CE gap;
- a grid-sweep folder (``m1_sweep.csv``): heatmaps of acceptance, overlap and
  CE gap over (K, τ), averaged over seeds;
- a seed-sweep folder (``m1_seeds.csv``): per-seed points with their mean.

Matplotlib is imported inside the drawing functions, and only through its
object API with the Agg canvas: no display, no global pyplot state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from thermospec.experiments.grid import aggregate_grid
from thermospec.experiments.sweeps import GRID_CSV, SEEDS_CSV, read_csv_rows
from thermospec.runs.storage import METRICS_FILE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CE_GAP_PNG",
    "CONTEXT_PNG",
    "GRID_PNG",
    "RUNNING_PNG",
    "SEEDS_PNG",
    "PlotError",
    "RunTrace",
    "folder_kinds",
    "plot_folder",
    "plot_grid",
    "plot_run",
    "plot_seeds",
    "read_run_trace",
]


RUNNING_PNG = "m1_acceptance.png"
CONTEXT_PNG = "m1_context_acceptance.png"
CE_GAP_PNG = "m1_ce_gap_hist.png"
GRID_PNG = "m1_sweep_heatmaps.png"
SEEDS_PNG = "m1_seeds.png"
MAX_TRACE_POINTS = 4000
DPI = 100


class PlotError(ValueError):
    """A folder or file that cannot be plotted; the message names it and says why."""


@dataclass(frozen=True, eq=False)
class RunTrace:
    """What the run figures need from a telemetry stream.

    Attributes
    ----------
    accepted : ndarray of bool, shape (N,)
    overlap : ndarray of float64, shape (N,)
        Overlap mass of each step's context.
    ce_gap : ndarray of float64, shape (N,)
        CE gap of each step's context (``inf`` where the JSONL has null).
    context : ndarray of int64, shape (N,)
    """

    accepted: NDArray[np.bool_]
    overlap: NDArray[np.float64]
    ce_gap: NDArray[np.float64]
    context: NDArray[np.int64]


def read_run_trace(path: Path) -> RunTrace:
    """Read the fields the figures use from ``m1_metrics.jsonl``.

    Raises
    ------
    PlotError
        Unreadable file, a line that is not a telemetry record, or no record.
    """
    accepted: list[bool] = []
    overlap: list[float] = []
    ce_gap: list[float] = []
    context: list[int] = []
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    record = json.loads(line)
                    accepted.append(bool(record["accepted"]))
                    overlap.append(float(record["overlap_mass"]))
                    gap = record["ce_gap_nats"]
                    ce_gap.append(math.inf if gap is None else float(gap))
                    context.append(int(record["prev_token"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise PlotError(f"{path}: line {number} is not a telemetry record ({exc})") from None
    except OSError as exc:
        raise PlotError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not accepted:
        raise PlotError(f"{path}: has no telemetry record")
    return RunTrace(
        accepted=np.array(accepted, dtype=np.bool_),
        overlap=np.array(overlap, dtype=np.float64),
        ce_gap=np.array(ce_gap, dtype=np.float64),
        context=np.array(context, dtype=np.int64),
    )


def _figure(width: float = 6.4, height: float = 4.2) -> Figure:
    from matplotlib.figure import Figure  # deferred: only plotting pays for matplotlib

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _trace_points(n: int) -> NDArray[np.int64]:
    """At most MAX_TRACE_POINTS step indices, log-spaced: the early wobble and the long tail both show."""
    if n <= MAX_TRACE_POINTS:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.geomspace(1, n, MAX_TRACE_POINTS).astype(np.int64) - 1)


def plot_running_acceptance(trace: RunTrace, path: Path) -> Path:
    """Running acceptance rate against the running mean overlap, with a ±2 standard-error band."""
    n = trace.accepted.size
    t = np.arange(1, n + 1, dtype=np.float64)
    running_accept = np.cumsum(trace.accepted) / t
    running_overlap = np.cumsum(trace.overlap) / t
    band = 2 * np.sqrt(np.cumsum(trace.overlap * (1 - trace.overlap))) / t
    keep = _trace_points(n)
    settled = slice(min(n - 1, 99), n)  # the first hundred steps would set the scale for nothing
    low = float(min(running_accept[settled].min(), (running_overlap - band)[settled].min()))
    high = float(max(running_accept[settled].max(), (running_overlap + band)[settled].max()))
    margin = max(0.005, 0.1 * (high - low))
    fig = _figure()
    ax = fig.add_subplot()
    ax.fill_between(t[keep], (running_overlap - band)[keep], (running_overlap + band)[keep],
                    color="tab:orange", alpha=0.25, linewidth=0, label="overlap ± 2 s.e.")
    ax.plot(t[keep], running_overlap[keep], color="tab:orange", label="running mean overlap Σ min(p, q)")
    ax.plot(t[keep], running_accept[keep], color="tab:blue", label="running acceptance rate")
    ax.set_xscale("log")
    ax.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
    ax.set_xlabel("step (emitted tokens, log scale)")
    ax.set_ylabel("fraction of drafts accepted")
    ax.set_title(f"acceptance {running_accept[-1]:.4f} vs mean overlap {running_overlap[-1]:.4f} ({n} steps)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_context_acceptance(trace: RunTrace, path: Path) -> Path:
    """Per-context acceptance rate against the context's overlap, ±2 standard errors, with y = x."""
    counts = np.bincount(trace.context)
    visited = np.flatnonzero(counts)
    accepted = np.bincount(trace.context, weights=trace.accepted.astype(np.float64))[visited]
    overlap = np.zeros(counts.size)
    overlap[trace.context] = trace.overlap  # constant per context
    o = overlap[visited]
    n = counts[visited].astype(np.float64)
    rate = accepted / n
    err = 2 * np.sqrt(o * (1 - o) / n)
    fig = _figure(5.6, 5.0)
    ax = fig.add_subplot()
    low = float(min(o.min(), rate.min()))
    span = np.array([max(0.0, low - 0.02), 1.0])
    ax.plot(span, span, color="grey", linestyle="--", linewidth=1, label="y = x")
    ax.errorbar(o, rate, yerr=err, fmt="o", markersize=3, elinewidth=0.8, alpha=0.7, color="tab:blue",
                label="one context (±2 s.e.)")
    ax.set_xlim(*span)
    ax.set_ylim(*span)
    ax.set_xlabel("overlap mass Σ min(p, q) of the context")
    ax.set_ylabel("acceptance rate in the context")
    ax.set_title(f"per-context acceptance, {visited.size} contexts")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_ce_gap_histogram(trace: RunTrace, path: Path) -> Path:
    """Histogram of the CE gap of each step's context (infinite gaps counted in the title)."""
    finite = trace.ce_gap[np.isfinite(trace.ce_gap)]
    infinite = trace.ce_gap.size - finite.size
    fig = _figure()
    ax = fig.add_subplot()
    if finite.size:
        ax.hist(finite, bins=50, color="tab:green", alpha=0.8)
        ax.axvline(float(finite.mean()), color="black", linestyle="--", linewidth=1,
                   label=f"mean {finite.mean():.4g} nats")
        ax.legend(loc="upper right")
    ax.set_xlabel("CE gap H(p, q) − H(p) of the step's context (nats)")
    ax.set_ylabel("steps")
    extra = f", {infinite} steps with an infinite gap not shown" if infinite else ""
    ax.set_title(f"CE gap over {trace.ce_gap.size} steps{extra}")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_run(folder: Path) -> list[Path]:
    """The three figures of a run folder; returns the PNG paths."""
    trace = read_run_trace(folder / METRICS_FILE)
    return [
        plot_running_acceptance(trace, folder / RUNNING_PNG),
        plot_context_acceptance(trace, folder / CONTEXT_PNG),
        plot_ce_gap_histogram(trace, folder / CE_GAP_PNG),
    ]


def _read_table(path: Path, needed: Sequence[str]) -> list[dict[str, Any]]:
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
            parsed.append({c: float(row[c]) for c in needed})
        except (TypeError, ValueError):
            raise PlotError(f"{path}: line {number} has a value that is not a number") from None
    return parsed


def _heatmap(fig: Figure, ax: Any, values: NDArray[np.float64], Ks: list[int], taus: list[float],
             title: str, colour_label: str, cmap: str) -> None:
    shown = np.where(np.isfinite(values), values, np.nan)
    image = ax.imshow(shown, cmap=cmap, aspect="auto", origin="lower")
    ax.set_xticks(range(len(taus)), [f"{t:g}" for t in taus])
    ax.set_yticks(range(len(Ks)), [str(k) for k in Ks])
    ax.set_xlabel("temperature τ")
    ax.set_ylabel("top-K ids sent")
    ax.set_title(title)
    finite = shown[np.isfinite(shown)]
    middle = float(np.nanmean(finite)) if finite.size else 0.0
    for i in range(len(Ks)):
        for j in range(len(taus)):
            v = values[i, j]
            text = "inf" if np.isinf(v) else f"{v:.3f}"
            dark = np.isfinite(v) and (v < middle) == (cmap != "viridis_r")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label=colour_label, shrink=0.85)


def plot_grid(folder: Path) -> list[Path]:
    """Heatmaps of acceptance, overlap and CE gap over (K, τ), means over seeds."""
    path = folder / GRID_CSV
    fields = ("K", "tau", "steps", "accept_rate", "overlap_mass", "ce_gap_nats", "topk_mass", "psi_bytes")
    rows = _read_table(path, fields)
    for row in rows:
        row["K"] = int(row["K"])
    means = aggregate_grid(rows)
    Ks = sorted({int(m["K"]) for m in means})
    taus = sorted({float(m["tau"]) for m in means})
    cells = {(int(m["K"]), float(m["tau"])): m for m in means}
    panels = (("accept_rate", "acceptance rate", "fraction accepted", "viridis"),
              ("overlap_mass", "overlap mass Σ min(p, q)", "probability mass", "viridis"),
              ("ce_gap_nats", "CE gap H(p, q) − H(p)", "nats", "viridis_r"))
    fig = _figure(4.0 * len(panels), 3.6)
    seeds = int(means[0]["seeds"])
    fig.suptitle(f"(K, τ) grid, mean over {seeds} seed{'s' if seeds != 1 else ''}, "
                 f"{int(rows[0]['steps'])} fixed-context steps each")
    for index, (key, title, unit, cmap) in enumerate(panels, start=1):
        values = np.array([[cells[(k, t)][key] if (k, t) in cells else np.nan for t in taus] for k in Ks])
        _heatmap(fig, fig.add_subplot(1, len(panels), index), values, Ks, taus, title, unit, cmap)
    return [_save(fig, folder / GRID_PNG)]


def plot_seeds(folder: Path) -> list[Path]:
    """Per-seed acceptance, overlap and CE gap, with their means (± std band)."""
    path = folder / SEEDS_CSV
    rows = _read_table(path, ("seed", "steps", "accept_rate", "mean_overlap", "mean_ce_gap"))
    seeds = [int(r["seed"]) for r in rows]
    x = np.arange(len(rows))
    fig = _figure(9.6, 4.0)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for ax, key, label, colour, offset in (
        (left, "accept_rate", "acceptance rate", "tab:blue", -0.08),
        (left, "mean_overlap", "mean overlap", "tab:orange", 0.08),
        (right, "mean_ce_gap", "mean CE gap", "tab:green", 0.0),
    ):
        values = np.array([r[key] for r in rows])
        if key == "accept_rate":  # ±2 standard errors of the acceptance around the overlap
            err = np.array([2 * math.sqrt(r["mean_overlap"] * (1 - r["mean_overlap"]) / r["steps"]) for r in rows])
            ax.errorbar(x + offset, values, yerr=err, fmt="o", color=colour, label=f"{label} per seed (±2 s.e.)")
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
        ax.legend(loc="best", fontsize=8)
    left.set_ylabel("rate / probability mass")
    left.set_title("acceptance and overlap by seed")
    right.set_ylabel("nats")
    right.set_title("CE gap H(p, q) − H(p) by seed")
    return [_save(fig, folder / SEEDS_PNG)]


def folder_kinds(folder: Path) -> list[str]:
    """What a folder holds: ``"run"``, ``"grid"`` and/or ``"seeds"``.

    Raises
    ------
    PlotError
        Not a folder, or none of the files the figures are drawn from.
    """
    if not folder.is_dir():
        raise PlotError(f"{folder}: no such folder")
    kinds = [kind for kind, name in (("run", METRICS_FILE), ("grid", GRID_CSV), ("seeds", SEEDS_CSV))
             if (folder / name).is_file()]
    if not kinds:
        raise PlotError(f"{folder}: no {METRICS_FILE}, {GRID_CSV} or {SEEDS_CSV} to plot")
    return kinds


def plot_folder(folder: Path) -> list[Path]:
    """Every figure the folder's data allows; returns the PNG paths written."""
    drawers = {"run": plot_run, "grid": plot_grid, "seeds": plot_seeds}
    written: list[Path] = []
    for kind in folder_kinds(folder):
        written.extend(drawers[kind](folder))
    return written
