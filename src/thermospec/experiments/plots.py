"""Figures of runs and sweeps of every kind, written as PNGs beside their data (``python -m scripts.plot``).

What a folder holds (`folder_kinds`) and what is drawn for it (`draw_folder`):

- ``"run"`` (``m1_metrics.jsonl`` or ``m1_metrics.parquet``): the running
  acceptance against the running mean overlap, per-context acceptance against
  overlap (binned above a few thousand contexts) and the CE-gap histogram
  (`run_plots`); an ``--order N`` run's contexts are its backed-off contexts, a
  ``--trace`` run's are its positions, and a ``--drafts N`` run's overlap is the
  verifier's exact acceptance (so named on the axes);
- ``"blocks"`` (``run --gamma``: ``m1_blocks.jsonl``): the accepted-length
  histogram and the per-position acceptance, measured against exact (`mode_plots`);
- ``"chains"`` (``run --chains B``): each chain's acceptance against the pooled
  overlap ± 2 s.e. (`mode_plots`); each ``chain_<b>/`` with its own JSONL is a run folder;
- ``"grid"`` (``m1_sweep.csv``), ``"seeds"`` (``m1_seeds.csv``) and
  ``"gamma-sweep"`` (``m1_gamma_sweep.csv``): `sweep_plots`;
- ``"drafts-sweep"`` (``m1_drafts_sweep.csv``): acceptance and modelled speed-up
  against N per verifier (`drafts_plots`).

Every figure is titled with what was run (from ``summary.json`` / ``sweep.json``),
printed at `DPI` with its legend clear of the data, through matplotlib's object
API and the Agg canvas only.  A folder with nothing to plot is one `PlotError`
line naming the folder and the reason.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from thermospec.engine.blocks import BLOCKS_FILE
from thermospec.experiments.drafts_plots import draw_drafts_sweep
from thermospec.experiments.drafts_sweep import DRAFTS_CSV, DRAFTS_PNG
from thermospec.experiments.gamma_sweep import GAMMA_CSV, SPEEDUP_PNG
from thermospec.experiments.mode_plots import block_figures, chain_rates, chains_figure, read_block_lengths
from thermospec.experiments.plot_base import (
    DPI,
    Drawn,
    PlotError,
    acceptance_name,
    describe_run,
    read_json,
    save_figure,
)
from thermospec.experiments.run_plots import (
    RunTrace,
    ce_gap_figure,
    context_figure,
    losses_figure,
    read_parquet_trace,
    read_run_trace,
    running_figure,
)
from thermospec.experiments.sweep_plots import GRID_PNG, SEEDS_PNG, draw_gamma_sweep, draw_grid, draw_seeds
from thermospec.experiments.sweeps import GRID_CSV, SEEDS_CSV
from thermospec.runs.storage import METRICS_FILE, SUMMARY_FILE
from thermospec.runs.telemetry import PARQUET_FILE

__all__ = [
    "BLOCK_HIST_PNG",
    "BLOCK_POSITION_PNG",
    "CE_GAP_PNG",
    "CHAINS_PNG",
    "CONTEXT_PNG",
    "DPI",
    "DRAFTS_PNG",
    "GRID_PNG",
    "LOSSES_PNG",
    "RUNNING_PNG",
    "SEEDS_PNG",
    "SPEEDUP_PNG",
    "Drawn",
    "PlotError",
    "RunTrace",
    "draw_folder",
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
LOSSES_PNG = "m1_losses.png"
BLOCK_HIST_PNG = "m1_accepted_length_hist.png"
BLOCK_POSITION_PNG = "m1_position_acceptance.png"
CHAINS_PNG = "m1_chains_acceptance.png"
DATA_FILES = (METRICS_FILE, PARQUET_FILE, BLOCKS_FILE, GRID_CSV, SEEDS_CSV, GAMMA_CSV, DRAFTS_CSV)


def _chain_count(folder: Path) -> int:
    """B of a ``--chains B`` run folder (its pooled summary, or its ``chain_<b>/`` folders), else 0."""
    summary = read_json(folder / SUMMARY_FILE) or {}
    chains = summary.get("chains")
    if isinstance(chains, int) and not isinstance(chains, bool) and chains > 1:
        return chains
    return len(list(folder.glob(f"chain_*/{SUMMARY_FILE}")))


def _nothing_to_plot(folder: Path) -> PlotError:
    """Why a folder without any data file has nothing to plot, as specifically as its summary tells."""
    summary = read_json(folder / SUMMARY_FILE)
    if summary is not None and summary.get("telemetry") == "none":
        return PlotError(f"{folder}: nothing to plot: the run was made with --telemetry none, so it kept no "
                         f"per-step records, only {SUMMARY_FILE} (rerun with --telemetry jsonl or parquet)")
    chain = summary.get("chain") if summary is not None else None
    if isinstance(chain, int) and (folder.parent / PARQUET_FILE).is_file():
        return PlotError(f"{folder}: nothing to plot here: chain {chain}'s steps are in "
                         f"{folder.parent / PARQUET_FILE}; plot {folder.parent}")
    if summary is not None:
        return PlotError(f"{folder}: nothing to plot: {SUMMARY_FILE} but no per-step records "
                         f"({', '.join(DATA_FILES[:3])})")
    return PlotError(f"{folder}: no {', '.join(DATA_FILES[:-1])} or {DATA_FILES[-1]} to plot")


def folder_kinds(folder: Path) -> list[str]:
    """What a folder holds: ``"run"``, ``"blocks"``, ``"chains"``, ``"grid"``, ``"seeds"``, ``"gamma-sweep"``,
    ``"drafts-sweep"``.

    Raises
    ------
    PlotError
        Not a folder, a Parquet file without pyarrow, or nothing to plot (the message says why).
    """
    if not folder.is_dir():
        raise PlotError(f"{folder}: no such folder")
    has = {name: (folder / name).is_file() for name in DATA_FILES}
    if has[PARQUET_FILE] and not has[METRICS_FILE] and find_spec("pyarrow") is None:
        raise PlotError(f"{folder / PARQUET_FILE}: reading Parquet needs pyarrow (pip install 'thermospec[parquet]')")
    chains = _chain_count(folder) > 1
    kinds = [kind for kind, present in (
        ("run", (has[METRICS_FILE] or has[PARQUET_FILE]) and not chains),
        ("blocks", has[BLOCKS_FILE]),
        ("chains", chains),
        ("grid", has[GRID_CSV]),
        ("seeds", has[SEEDS_CSV]),
        ("gamma-sweep", has[GAMMA_CSV]),
        ("drafts-sweep", has[DRAFTS_CSV]),
    ) if present]
    if not kinds:
        raise _nothing_to_plot(folder)
    return kinds


def _read_trace(folder: Path) -> RunTrace:
    if (folder / METRICS_FILE).is_file():
        return read_run_trace(folder / METRICS_FILE)
    return read_parquet_trace(folder / PARQUET_FILE)


def _draw_run(folder: Path) -> list[Drawn]:
    trace = _read_trace(folder)
    description = describe_run(folder)
    config = (read_json(folder / SUMMARY_FILE) or {}).get("config")
    exact = acceptance_name(config if isinstance(config, dict) else None)
    return [
        save_figure(running_figure(trace, description, exact), folder / RUNNING_PNG),
        save_figure(context_figure(trace, description, exact), folder / CONTEXT_PNG),
        save_figure(ce_gap_figure(trace, description), folder / CE_GAP_PNG),
        *_draw_losses(folder, description),
    ]


def _draw_losses(folder: Path, description: str) -> list[Drawn]:
    """The loss split of a run's summary (every summary since 2026-12-07 has one)."""
    figure = losses_figure(read_json(folder / SUMMARY_FILE) or {}, description)
    return [] if figure is None else [save_figure(figure, folder / LOSSES_PNG)]


def _draw_blocks(folder: Path) -> list[Drawn]:
    lengths, gamma = read_block_lengths(folder / BLOCKS_FILE)
    hist, per_position = block_figures(lengths, gamma, read_json(folder / SUMMARY_FILE), describe_run(folder))
    return [save_figure(hist, folder / BLOCK_HIST_PNG), save_figure(per_position, folder / BLOCK_POSITION_PNG),
            *_draw_losses(folder, describe_run(folder))]


def _draw_chains(folder: Path) -> list[Drawn]:
    summary = read_json(folder / SUMMARY_FILE, needed=True) or {}
    needs_trace = not list(folder.glob(f"chain_*/{SUMMARY_FILE}")) and (folder / PARQUET_FILE).is_file()
    rates = chain_rates(folder, summary, read_parquet_trace(folder / PARQUET_FILE) if needs_trace else None)
    return [save_figure(chains_figure(rates, describe_run(folder)), folder / CHAINS_PNG)]


def draw_folder(folder: Path) -> list[Drawn]:
    """Every figure the folder's data allows, written beside it; returns (path, figure) pairs.

    Raises
    ------
    PlotError
        See `folder_kinds`; or a data file that cannot be read (the message names it).
    """
    drawers = {"run": _draw_run, "blocks": _draw_blocks, "chains": _draw_chains, "grid": draw_grid,
               "seeds": draw_seeds, "gamma-sweep": draw_gamma_sweep, "drafts-sweep": draw_drafts_sweep}
    drawn: list[Drawn] = []
    for kind in folder_kinds(folder):
        drawn.extend(drawers[kind](folder))
    return drawn


def plot_folder(folder: Path) -> list[Path]:
    """Every figure the folder's data allows; returns the PNG paths written."""
    return [d.path for d in draw_folder(folder)]


def plot_run(folder: Path) -> list[Path]:
    """The three figures of a run folder; returns the PNG paths."""
    return [d.path for d in _draw_run(folder)]


def plot_grid(folder: Path) -> list[Path]:
    """Heatmaps of acceptance, overlap and CE gap over (K, τ), means over seeds."""
    return [d.path for d in draw_grid(folder)]


def plot_seeds(folder: Path) -> list[Path]:
    """Per-seed acceptance, overlap and CE gap, with their means (± std band)."""
    return [d.path for d in draw_seeds(folder)]
