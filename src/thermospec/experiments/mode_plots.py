"""Figures of the other run modes: ``run --gamma G`` (γ-token blocks) and ``run --chains B``.

- a γ run (``m1_blocks.jsonl`` + ``summary.json``): the histogram of accepted
  lengths (fraction of blocks) with the exact distribution, the measured mean
  (±2 s.e.) and the exact mean; and the acceptance rate at each draft position
  measured (±2 s.e.) against its exact value;
- a ``--chains`` run: each chain's acceptance rate (from ``chain_<b>/summary.json``
  or the ``chain`` column of ``m1_metrics.parquet``) against the pooled mean
  overlap with its ±2 standard-error band for one chain; with ``--telemetry
  none`` the per-chain rates are not kept, and the figure shows their recorded
  minimum, mean and maximum.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from thermospec.experiments.plot_base import PlotError, legend_below, new_figure, read_json
from thermospec.experiments.run_plots import RunTrace
from thermospec.runs.block_run import batch_means_se
from thermospec.runs.storage import SUMMARY_FILE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ChainRates", "block_figures", "chain_rates", "chains_figure", "read_block_lengths"]


def read_block_lengths(path: Path) -> tuple[NDArray[np.int64], int]:
    """The accepted length of every block in ``m1_blocks.jsonl``, and γ (the drafts per block).

    Raises
    ------
    PlotError
        Unreadable file, a line that is not a block record, or no record.
    """
    lengths: list[int] = []
    gamma = 0
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    record = json.loads(line)
                    lengths.append(int(record["accepted_length"]))
                    gamma = max(gamma, len(record["drafted"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise PlotError(f"{path}: line {number} is not a block record ({exc})") from None
    except OSError as exc:
        raise PlotError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not lengths:
        raise PlotError(f"{path}: has no block record")
    return np.array(lengths, dtype=np.int64), gamma


def _exact(summary: Mapping[str, Any] | None, gamma: int) -> tuple[float, NDArray[np.float64]] | None:
    """The exact mean accepted length and per-position rates of the summary, if it has them for γ."""
    expected = (summary or {}).get("expected")
    if not isinstance(expected, Mapping):
        return None
    rates = expected.get("per_position_accept_rate")
    mean = expected.get("accepted_length")
    if not isinstance(rates, list) or len(rates) != gamma or not isinstance(mean, (int, float)):
        return None
    return float(mean), np.array(rates, dtype=np.float64)


def block_figures(lengths: NDArray[np.int64], gamma: int, summary: Mapping[str, Any] | None,
                  description: str) -> tuple[Figure, Figure]:
    """The accepted-length histogram and the per-position acceptance of a γ run.

    Parameters
    ----------
    lengths : ndarray of int64
        Accepted length of each block (`read_block_lengths`).
    gamma : int
        Drafts per block (the summary's ``gamma`` wins if present).
    summary : mapping, optional
        The run's ``summary.json``: the measured standard error and the exact values.
    description : str
        The title line.
    """
    if summary and isinstance(summary.get("gamma"), int):
        gamma = summary["gamma"]
    blocks = lengths.size
    mean = float(lengths.mean())
    se = summary.get("mean_accepted_length_se") if summary else None
    se = float(se) if isinstance(se, (int, float)) else batch_means_se(lengths.astype(np.float64))
    exact = _exact(summary, gamma)
    positions = np.arange(gamma + 1)
    reached = np.array([(lengths >= j - 1).sum() for j in positions[1:]], dtype=np.float64)
    passed = np.array([(lengths >= j).sum() for j in positions[1:]], dtype=np.float64)

    hist = new_figure(6.4, 4.8, description)
    ax = hist.add_subplot()
    share = np.bincount(lengths, minlength=gamma + 1)[: gamma + 1] / blocks
    ax.bar(positions, share, width=0.7, color="tab:blue", alpha=0.75, label="measured (fraction of blocks)")
    ax.axvspan(mean - 2 * se, mean + 2 * se, color="tab:blue", alpha=0.15, linewidth=0)
    ax.axvline(mean, color="tab:blue", linewidth=1.5, label=f"measured mean {mean:.4f} ± {2 * se:.4f} (2 s.e.)")
    if exact is not None:
        at_least = np.concatenate([[1.0], np.cumprod(exact[1]), [0.0]])  # P(L ≥ j), j = 0..γ+1
        ax.plot(positions, at_least[:-1] - at_least[1:], linestyle="none", marker="o", markersize=8,
                markerfacecolor="none", markeredgewidth=1.5, color="black", label="exact P(L = j)", zorder=3)
        ax.axvline(exact[0], color="black", linestyle="--", linewidth=1.2, label=f"exact mean {exact[0]:.4f}")
    ax.set_xticks(positions)
    ax.set_xlabel("accepted length L (drafts accepted in a block)")
    ax.set_ylabel("fraction of blocks")
    exact_text = f", exact {exact[0]:.4f}" if exact is not None else " (exact not computed for this V)"
    ax.set_title(f"accepted length of {blocks:,} γ = {gamma} blocks: mean {mean:.4f}{exact_text}", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    legend_below(ax, columns=2)

    per = new_figure(6.4, 4.6, description)
    ax = per.add_subplot()
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = passed / reached
        centre = exact[1] if exact is not None else rate
        err = 2 * np.sqrt(centre * (1 - centre) / reached)
    ax.errorbar(positions[1:], rate, yerr=err, fmt="x", markersize=7, markeredgewidth=1.5, capsize=3,
                color="tab:blue", label="measured (±2 s.e.)", zorder=3)
    if exact is not None:
        ax.plot(positions[1:], exact[1], marker="o", markersize=8, markerfacecolor="none", color="black",
                linewidth=1, label="exact", zorder=2)
    ax.set_xticks(positions[1:])
    ax.set_xlabel("draft position j in the block")
    ax.set_ylabel("P(draft j accepted | drafts before it accepted)")
    ax.set_title(f"acceptance at each draft position ({blocks:,} blocks)", fontsize=10)
    ax.grid(True, alpha=0.3)
    legend_below(ax, columns=2)
    return hist, per


@dataclass(frozen=True, eq=False)
class ChainRates:
    """What the chains figure needs.

    Attributes
    ----------
    accept : ndarray of float64, shape (B,)
        Each chain's acceptance rate (empty if only their range was recorded).
    overlap : ndarray of float64, shape (B,)
        Each chain's mean overlap (empty if not recorded).
    steps : int
        Steps per chain.
    pooled_overlap, pooled_accept : float
        Over all chains.
    recorded : tuple of float, optional
        (min, mean, max) of the chains' acceptance rates, when only these were kept.
    chains : int
    """

    accept: NDArray[np.float64]
    overlap: NDArray[np.float64]
    steps: int
    pooled_overlap: float
    pooled_accept: float
    recorded: tuple[float, float, float] | None
    chains: int


def _number(document: Mapping[str, Any], key: str, path: Path) -> float:
    value = document.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlotError(f"{path}: no number {key!r}")
    return float(value)


def chain_rates(folder: Path, summary: Mapping[str, Any], trace: RunTrace | None) -> ChainRates:
    """Per-chain rates of a ``--chains`` run: from ``chain_<b>/summary.json``, else the Parquet trace, else the range.

    Raises
    ------
    PlotError
        The pooled summary lacks the pooled rates, or a chain's summary is unreadable.
    """
    pooled_path = folder / SUMMARY_FILE
    pooled_overlap = _number(summary, "mean_overlap", pooled_path)
    pooled_accept = _number(summary, "accept_rate", pooled_path)
    chains = int(summary.get("chains") or 0)
    steps = int(summary.get("steps_per_chain") or 0)
    empty = np.zeros(0)
    files = sorted(folder.glob("chain_*/" + SUMMARY_FILE))
    if files:
        documents = [(path, read_json(path, needed=True) or {}) for path in files]
        accept = np.array([_number(d, "accept_rate", p) for p, d in documents])
        overlap = np.array([_number(d, "mean_overlap", p) for p, d in documents])
        steps = steps or int(min(_number(d, "steps", p) for p, d in documents))
        return ChainRates(accept, overlap, steps, pooled_overlap, pooled_accept, None, accept.size)
    if trace is not None and trace.chain is not None:
        n = np.bincount(trace.chain).astype(np.float64)
        accept = np.bincount(trace.chain, weights=trace.accepted.astype(np.float64)) / n
        overlap = np.bincount(trace.chain, weights=trace.overlap) / n
        return ChainRates(accept, overlap, steps or int(n.min()), pooled_overlap, pooled_accept, None, n.size)
    keys = ("chain_accept_rate_min", "chain_accept_rate_mean", "chain_accept_rate_max")
    if all(isinstance(summary.get(k), (int, float)) for k in keys) and chains > 1 and steps > 0:
        low, mid, high = (float(summary[k]) for k in keys)
        return ChainRates(empty, empty, steps, pooled_overlap, pooled_accept, (low, mid, high), chains)
    raise PlotError(f"{folder}: a --chains run with no per-chain rates (no chain_<b>/{SUMMARY_FILE}, "
                    f"no chain column, no chain_accept_rate_min/mean/max in {SUMMARY_FILE})")


def chains_figure(rates: ChainRates, description: str) -> Figure:
    """Each chain's acceptance against the pooled overlap, with the ±2 standard-error band of one chain."""
    from matplotlib.ticker import MaxNLocator

    o = rates.pooled_overlap
    band = 2 * math.sqrt(o * (1 - o) / rates.steps) if rates.steps > 0 else 0.0
    fig = new_figure(6.4, 4.8, description)
    ax = fig.add_subplot()
    x = np.arange(rates.chains)
    ax.axhspan(o - band, o + band, color="tab:orange", alpha=0.2, linewidth=0,
               label=f"pooled overlap ± 2 s.e. of one chain ({rates.steps:,} steps)")
    ax.axhline(o, color="tab:orange", linewidth=1.2, label=f"pooled mean overlap {o:.4f}")
    if rates.recorded is None:
        outside = int((np.abs(rates.accept - o) > band).sum())
        ax.plot(x, rates.overlap, linestyle="none", marker="D", markersize=4, markerfacecolor="none",
                color="tab:orange", label="chain's mean overlap")
        ax.plot(x, rates.accept, linestyle="none", marker="o", markersize=5, color="tab:blue",
                label="chain's acceptance rate", zorder=3)
        title = (f"acceptance of {rates.chains} chains: {outside} outside ±2 s.e. "
                 f"(pooled acceptance {rates.pooled_accept:.4f})")
    else:
        low, mid, high = rates.recorded
        for value, style, what in ((low, ":", "min"), (mid, "-", "mean"), (high, ":", "max")):
            ax.axhline(value, color="tab:blue", linestyle=style, linewidth=1.2,
                       label=f"chains' acceptance {what} {value:.4f}")
        title = f"{rates.chains} chains: per-chain rates not kept (--telemetry none), only min, mean, max"
    ax.set_xlim(-0.5, rates.chains - 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("chain b")
    ax.set_ylabel("rate / probability mass")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    legend_below(ax, columns=2)
    return fig
