"""Figures of one run: its telemetry (``m1_metrics.jsonl`` or ``m1_metrics.parquet``) as a `RunTrace`.

- the running acceptance rate against the running mean overlap (±2 s.e. band);
- per-context acceptance against the context's overlap, with y = x and ±2
  standard errors: one point per context up to `MAX_CONTEXT_POINTS` contexts,
  above that (V = 65,536 visits tens of thousands) the contexts binned by overlap
  into `CONTEXT_BINS` bins of about equal steps, one pooled point per bin;
- the histogram of the CE gap of each step's context.

A step's context is what its draft was made for: the previous token (M1, ``--drafts``),
the text of the backed-off context (``--order N``: the record's ``context``) or the
trace position (``--trace``: the record's ``position``, the figure says "position").
The "overlap" is each step's exact acceptance probability: Σ min(p, q), or the
verifier's for a ``--drafts`` run (`AcceptanceName` names it on the axes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from thermospec.experiments.plot_base import OVERLAP, AcceptanceName, PlotError, legend_below, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CONTEXT_BINS",
    "MAX_CONTEXT_POINTS",
    "OVERLAP",
    "AcceptanceName",
    "RunTrace",
    "ce_gap_figure",
    "context_figure",
    "context_points",
    "read_parquet_trace",
    "read_run_trace",
    "running_figure",
]


MAX_TRACE_POINTS = 4000
MAX_CONTEXT_POINTS = 1000  # above this many contexts, one point each is a solid block: bin them
CONTEXT_BINS = 40  # at most; fewer for short runs, so that each bin pools at least STEPS_PER_BIN steps
STEPS_PER_BIN = 250


@dataclass(frozen=True, eq=False)
class RunTrace:
    """What the run figures need from a telemetry stream.

    Attributes
    ----------
    accepted : ndarray of bool, shape (N,)
    overlap : ndarray of float64, shape (N,)
        Overlap mass of each step's context.
    ce_gap : ndarray of float64, shape (N,)
        CE gap of each step's context (``inf`` where the telemetry has null).
    context : ndarray of int64, shape (N,)
        The context (or position) each step drafted in, as a small id: steps with
        the same id share their row and their draft.
    chain : ndarray of int64, shape (N,), optional
        The chain of each step (a ``--chains`` Parquet file's ``chain`` column).
    grouped_by : str
        What `context` is, in the figures' words: ``"context"`` or ``"position"`` (a trace run).
    """

    accepted: NDArray[np.bool_]
    overlap: NDArray[np.float64]
    ce_gap: NDArray[np.float64]
    context: NDArray[np.int64]
    chain: NDArray[np.int64] | None = None
    grouped_by: str = "context"


def _context_key(record: dict[str, Any], ids: dict[Any, int]) -> int:
    """The id of a record's context: its ``position`` (trace), its ``context`` text (order N), else ``prev_token``."""
    if "position" in record:
        return int(record["position"])
    if "context" in record:
        return ids.setdefault(str(record["context"]), len(ids))
    return int(record["prev_token"])


def read_run_trace(path: Path) -> RunTrace:
    """Read the fields the figures use from ``m1_metrics.jsonl`` (any mode's: module docstring for the context).

    Raises
    ------
    PlotError
        Unreadable file, a line that is not a telemetry record, or no record.
    """
    accepted: list[bool] = []
    overlap: list[float] = []
    ce_gap: list[float] = []
    context: list[int] = []
    ids: dict[Any, int] = {}
    positions = False
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    record = json.loads(line)
                    accepted.append(bool(record["accepted"]))
                    overlap.append(float(record["overlap_mass"]))
                    gap = record["ce_gap_nats"]
                    ce_gap.append(math.inf if gap is None else float(gap))
                    context.append(_context_key(record, ids))
                    positions = positions or "position" in record
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
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
        grouped_by="position" if positions else "context",
    )


def read_parquet_trace(path: Path) -> RunTrace:
    """Read the fields the figures use from ``m1_metrics.parquet`` (and its ``chain`` column, if any).

    Raises
    ------
    PlotError
        pyarrow not installed, an unreadable file, missing columns, or no row.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PlotError(f"{path}: reading Parquet needs pyarrow (pip install 'thermospec[parquet]')") from None
    wanted = ["accepted", "overlap_mass", "ce_gap_nats", "prev_token"]
    try:
        names = pq.read_schema(path).names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise PlotError(f"{path}: missing column(s) {', '.join(missing)}")
        table = pq.read_table(path, columns=wanted + ["chain"] * ("chain" in names))
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise PlotError(f"{path}: cannot be read as Parquet ({exc})") from None
    if table.num_rows == 0:
        raise PlotError(f"{path}: has no telemetry record")
    gap = table.column("ce_gap_nats").to_numpy(zero_copy_only=False).astype(np.float64)
    chain = table.column("chain").to_numpy().astype(np.int64) if "chain" in names else None
    return RunTrace(
        accepted=table.column("accepted").to_numpy(zero_copy_only=False).astype(np.bool_),
        overlap=table.column("overlap_mass").to_numpy(zero_copy_only=False).astype(np.float64),
        ce_gap=np.where(np.isnan(gap), np.inf, gap),  # null (an infinite gap) reads back as NaN
        context=table.column("prev_token").to_numpy(zero_copy_only=False).astype(np.int64),
        chain=chain,
    )


def _trace_points(n: int) -> NDArray[np.int64]:
    """At most MAX_TRACE_POINTS step indices, log-spaced: the early wobble and the long tail both show."""
    if n <= MAX_TRACE_POINTS:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.geomspace(1, n, MAX_TRACE_POINTS).astype(np.int64) - 1)


def running_figure(trace: RunTrace, description: str, exact: AcceptanceName = OVERLAP) -> Figure:
    """Running acceptance rate against the running mean overlap (`exact` names it), with a ±2 s.e. band."""
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
    fig = new_figure(6.4, 4.8, description)
    ax = fig.add_subplot()
    ax.fill_between(t[keep], (running_overlap - band)[keep], (running_overlap + band)[keep],
                    color="tab:orange", alpha=0.25, linewidth=0, label=f"{exact.short} ± 2 s.e.")
    ax.plot(t[keep], running_overlap[keep], color="tab:orange", label=f"running mean {exact.full}")
    ax.plot(t[keep], running_accept[keep], color="tab:blue", label="running acceptance rate")
    ax.set_xscale("log")
    ax.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
    ax.set_xlabel("step (emitted tokens, log scale)")
    ax.set_ylabel("fraction of drafts accepted")
    ax.set_title(f"acceptance {running_accept[-1]:.4f} vs mean {exact.short} {running_overlap[-1]:.4f} "
                 f"({n:,} steps)", fontsize=10)
    ax.grid(True, alpha=0.3)
    legend_below(ax, columns=2)
    return fig


def _binned(o: NDArray[np.float64], n: NDArray[np.float64], accepted: NDArray[np.float64],
            spread: NDArray[np.float64], bins: int) -> tuple[NDArray[np.float64], ...]:
    """Contexts sorted by overlap in `bins` bins of about equal steps: x, its range, pooled rate, 2 s.e."""
    order = np.argsort(o, kind="stable")
    o, n, accepted, spread = o[order], n[order], accepted[order], spread[order]
    middle = np.cumsum(n) - n / 2  # a context goes to the bin its middle step falls in
    which = np.minimum((middle / n.sum() * bins).astype(np.int64), bins - 1)
    steps = np.bincount(which, weights=n, minlength=bins)
    used = steps > 0
    steps = steps[used]
    x = np.bincount(which, weights=n * o, minlength=bins)[used] / steps
    rate = np.bincount(which, weights=accepted, minlength=bins)[used] / steps
    err = 2 * np.sqrt(np.bincount(which, weights=spread, minlength=bins)[used]) / steps
    starts = np.searchsorted(which, np.flatnonzero(used))
    ends = np.searchsorted(which, np.flatnonzero(used), side="right") - 1
    return x, x - o[starts], o[ends] - x, rate, err


def context_points(trace: RunTrace) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
                                             NDArray[np.float64]]:
    """Per visited context: its mean overlap, its steps, its accepted steps, and Σ o(1 − o) over its steps.

    The overlap is averaged over the context's own steps (it is the same at every
    step of a context: the mean is that value, and stays right if it were not).
    Contexts come in the order of their ids; any int64 id will do (they are
    renumbered 0, 1, … first, so a crafted id costs no memory).
    """
    _, dense = np.unique(trace.context, return_inverse=True)
    n = np.bincount(dense).astype(np.float64)

    def total(weights: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.bincount(dense, weights=weights).astype(np.float64)

    o = total(trace.overlap) / n
    return o, n, total(trace.accepted.astype(np.float64)), total(trace.overlap * (1 - trace.overlap))


def context_figure(trace: RunTrace, description: str, exact: AcceptanceName = OVERLAP) -> Figure:
    """Per-context acceptance rate against the context's overlap, ±2 standard errors, with y = x.

    Up to `MAX_CONTEXT_POINTS` visited contexts, one point each; above, `CONTEXT_BINS`
    bins of contexts of similar overlap (about equal steps each), one pooled point
    per bin with its overlap range as a horizontal bar.  A trace run's contexts are
    its positions.
    """
    o, n, accepted, spread = context_points(trace)
    group = trace.grouped_by
    fig = new_figure(5.6, 5.4, description)
    ax = fig.add_subplot()
    if o.size > MAX_CONTEXT_POINTS:
        bins = int(min(CONTEXT_BINS, max(8, trace.accepted.size // STEPS_PER_BIN)))
        x, left, right, rate, err = _binned(o, n, accepted, spread, bins)
        ax.errorbar(x, rate, xerr=np.vstack([left, right]), yerr=err, fmt="o", markersize=4, elinewidth=1,
                    capsize=2, color="tab:blue", label=f"{group}s binned by {exact.short} (±2 s.e.; bar: bin's range)")
        title = f"per-{group} acceptance: {o.size:,} {group}s in {x.size} bins of ≈ equal steps"
        low = float(min((x - left).min(), (rate - err).min()))
        high = float(max((x + right).max(), (rate + err).max()))
    else:
        rate = accepted / n
        err = 2 * np.sqrt(spread) / n
        ax.errorbar(o, rate, yerr=err, fmt="o", markersize=3, elinewidth=0.8, alpha=0.7, color="tab:blue",
                    label=f"one {group} (±2 s.e.)")
        title = f"per-{group} acceptance, {o.size:,} {group}s"
        low, high = float(min(o.min(), rate.min())), 1.0
    span = np.array([max(0.0, low - 0.02), min(1.0, high + 0.02)])
    ax.plot(span, span, color="grey", linestyle="--", linewidth=1, label="y = x", zorder=1)
    ax.set_xlim(span[0], span[1] + 0.005)  # a little room for the points at 1
    ax.set_ylim(span[0], span[1] + 0.005)
    ax.set_xlabel(f"{exact.full} of the {group}")
    ax.set_ylabel(f"acceptance rate at the {group}" if group == "position" else "acceptance rate in the context")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    legend_below(ax, columns=1)
    return fig


def ce_gap_figure(trace: RunTrace, description: str) -> Figure:
    """Histogram of the CE gap of each step's context (infinite gaps counted in the title)."""
    finite = trace.ce_gap[np.isfinite(trace.ce_gap)]
    infinite = trace.ce_gap.size - finite.size
    fig = new_figure(6.4, 4.6, description)
    ax = fig.add_subplot()
    if finite.size:
        ax.hist(finite, bins=50, color="tab:green", alpha=0.8, label="steps")
        ax.axvline(float(finite.mean()), color="black", linestyle="--", linewidth=1,
                   label=f"mean {finite.mean():.4g} nats")
        legend_below(ax, columns=2)
    ax.set_xlabel(f"CE gap H(p, q) − H(p) of the step's {trace.grouped_by} (nats)")
    ax.set_ylabel("steps")
    extra = f", {infinite:,} steps with an infinite gap not shown" if infinite else ""
    ax.set_title(f"CE gap over {trace.ce_gap.size:,} steps{extra}", fontsize=10)
    ax.grid(True, alpha=0.3)
    return fig


LOSS_BARS = (("loss_draft_model", "draft model"), ("loss_top_k", "top-K, tail, τ"),
             ("loss_quantisation", "8-bit codes"), ("gain_drafts", "N drafts gain"))


def losses_figure(summary: dict[str, Any], description: str) -> Figure | None:
    """Signed bars: where the one-draft acceptance goes (docs/draft-models.md); None without the split."""
    shown = [(label, float(summary[key])) for key, label in LOSS_BARS if summary.get(key) is not None]
    if not shown:
        return None
    fig = new_figure(6.4, 4.0, description)
    ax = fig.add_subplot()
    labels, values = zip(*shown, strict=True)
    colors = ["tab:red" if v >= 0 else "tab:green" for v in values]
    colors[-1] = "tab:blue" if labels[-1] == "N drafts gain" else colors[-1]
    ax.bar(range(len(values)), values, color=colors, alpha=0.85)
    for i, v in enumerate(values):
        ax.annotate(f"{v:+.4f}", (i, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=9)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(values)), labels)
    ax.set_ylabel("acceptance (mean over verified positions)")
    total = sum(v for label, v in shown if label != "N drafts gain")
    ax.set_title(f"losses add up to 1 − one-draft acceptance = {total:.4f} (signed)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return fig
