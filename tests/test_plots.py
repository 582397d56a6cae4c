"""Tests of the figures: every kind of run and sweep folder gets its PNGs, each decodes and is not blank,
is titled with what was run, is printed at ≥ 150 dpi, keeps its legend off the data; bad folders are one line."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from thermospec.cli.sweep import grid_main, plot_main, seed_main
from thermospec.experiments.plot_base import describe_run, save_figure
from thermospec.experiments.plots import (
    BLOCK_HIST_PNG,
    BLOCK_POSITION_PNG,
    CE_GAP_PNG,
    CHAINS_PNG,
    CONTEXT_PNG,
    GRID_PNG,
    LOSSES_PNG,
    RUNNING_PNG,
    SEEDS_PNG,
    SPEEDUP_PNG,
    PlotError,
    RunTrace,
    draw_folder,
    folder_kinds,
    plot_folder,
    read_run_trace,
)
from thermospec.experiments.run_plots import (
    CONTEXT_BINS,
    MAX_CONTEXT_POINTS,
    ce_gap_figure,
    context_figure,
    read_parquet_trace,
)
from thermospec.runs.config import RunConfig
from thermospec.runs.executor import execute_run
from thermospec.runs.prepare import prepare_run
from thermospec.runs.telemetry import TelemetryFormat

PRINT_DPI = 150


def _pixels(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    image: np.ndarray = imread(path)
    return image


def _assert_real_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = _pixels(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(pixels[..., :3].var()) > 0, f"{path} is blank"


def _png_size_and_dpi(path: Path) -> tuple[int, int, float]:
    """(width px, height px, dots per inch) from the PNG's IHDR and pHYs chunks."""
    data = path.read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    at = data.find(b"pHYs")
    assert at > 0, f"{path}: no pHYs chunk"
    per_metre = struct.unpack(">I", data[at + 4:at + 8])[0]
    return width, height, per_metre * 0.0254


def _run(folder: Path, telemetry: TelemetryFormat = "jsonl", chains: int = 1, **config: Any) -> Path:
    folder.mkdir()
    settings: dict[str, Any] = {"vocab": 64, "K": 8, "steps": 2_000, "seed": 3} | config
    execute_run(prepare_run(RunConfig(**settings)), folder, telemetry=telemetry, chains=chains)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real folder of every kind, small."""
    root = tmp_path_factory.mktemp("plots")
    made = {
        "run": _run(root / "run", steps=5_000),
        "parquet": _run(root / "parquet", telemetry="parquet", steps=5_000),
        "gamma": _run(root / "gamma", gamma=4),
        "chains": _run(root / "chains", chains=3),
        "chains-parquet": _run(root / "chains-parquet", telemetry="parquet", chains=3),
        "chains-none": _run(root / "chains-none", telemetry="none", chains=3),
        "none": _run(root / "none", telemetry="none"),
    }
    assert grid_main(["--vocab", "64", "--steps", "2000", "--Ks", "4", "8", "16", "--taus", "0.8", "1.0",
                      "--seeds", "1", "2", "--jobs", "1", "--quiet", "--runs-dir", str(root / "grid")]) == 0
    assert seed_main(["--vocab", "64", "--K", "8", "--steps", "2000", "--seeds", "1", "2", "3", "--jobs", "1",
                      "--quiet", "--runs-dir", str(root / "seeds")]) == 0
    assert grid_main(["--vocab", "64", "--steps", "1000", "--Ks", "8", "--taus", "0.9", "--seeds", "1", "2",
                      "--gammas", "1", "2", "4", "--jobs", "1", "--quiet", "--runs-dir", str(root / "gammas")]) == 0
    for sweep in ("grid", "seeds", "gammas"):
        (made[sweep],) = (root / sweep).iterdir()
    return made


@pytest.fixture(scope="module")
def drawn(folders: dict[str, Path]) -> dict[str, list[tuple[Path, Figure]]]:
    """Every figure of every plottable folder, drawn once."""
    return {kind: [(d.path, d.figure) for d in draw_folder(folder)]
            for kind, folder in folders.items() if kind not in ("none",)}


def test_blank_check_has_power(tmp_path: Path) -> None:
    """Negative control: a one-colour PNG is caught by the check the figures pass."""
    blank = tmp_path / "blank.png"
    Figure(figsize=(2, 2)).savefig(blank)
    with pytest.raises(AssertionError, match="is blank"):
        _assert_real_png(blank)


@pytest.mark.parametrize(
    ("kind", "kinds", "names"),
    [
        ("run", ["run"], [RUNNING_PNG, CONTEXT_PNG, CE_GAP_PNG, LOSSES_PNG]),
        ("parquet", ["run"], [RUNNING_PNG, CONTEXT_PNG, CE_GAP_PNG, LOSSES_PNG]),
        ("gamma", ["blocks"], [BLOCK_HIST_PNG, BLOCK_POSITION_PNG, LOSSES_PNG]),
        ("chains", ["chains"], [CHAINS_PNG]),
        ("chains-parquet", ["chains"], [CHAINS_PNG]),
        ("chains-none", ["chains"], [CHAINS_PNG]),
        ("grid", ["grid"], [GRID_PNG]),
        ("seeds", ["seeds"], [SEEDS_PNG]),
        ("gammas", ["gamma-sweep"], [SPEEDUP_PNG]),
    ],
)
def test_every_kind_of_folder_gets_its_figures(
    folders: dict[str, Path], drawn: dict[str, list[tuple[Path, Figure]]], kind: str, kinds: list[str],
    names: list[str],
) -> None:
    """Parquet runs, γ runs, chains and γ sweeps are plotted, not refused ("no m1_metrics.jsonl ...")."""
    assert folder_kinds(folders[kind]) == kinds
    written = [path for path, _ in drawn[kind]]
    assert [p.name for p in written] == names
    assert all(p.parent == folders[kind] for p in written)
    for path in written:
        _assert_real_png(path)


def test_each_chain_and_seed_run_is_a_run_folder(folders: dict[str, Path]) -> None:
    chain = folders["chains"] / "chain_0001"
    assert folder_kinds(chain) == folder_kinds(folders["seeds"] / "seed_2") == ["run"]
    assert describe_run(chain) == ("synthetic V = 64 (c = 50) · K = 8 · τ = 1 · ε = auto · seed 3 · 2,000 steps"
                                   " · chain 1")  # its own summary has no configuration: the parent's


def test_parquet_trace_is_the_jsonl_trace(folders: dict[str, Path], tmp_path: Path) -> None:
    jsonl = read_run_trace(folders["run"] / "m1_metrics.jsonl")
    parquet = read_parquet_trace(folders["parquet"] / "m1_metrics.parquet")
    for field in ("accepted", "overlap", "ce_gap", "context"):
        np.testing.assert_array_equal(getattr(parquet, field), getattr(jsonl, field))
    assert parquet.chain is None
    zero_eps = read_parquet_trace(_run(tmp_path / "zero-eps", telemetry="parquet", eps=0.0) / "m1_metrics.parquet")
    assert np.isinf(zero_eps.ce_gap).all()  # null in Parquet is an infinite gap, as null in JSONL


@pytest.mark.parametrize("kind", ["run", "parquet", "gamma", "chains", "chains-parquet", "chains-none"])
def test_run_titles_say_what_was_run(drawn: dict[str, list[tuple[Path, Figure]]], kind: str) -> None:
    """Each figure's title line names target and V, K, τ, ε, seed and steps (and γ, chains)."""
    assert drawn[kind]
    for path, figure in drawn[kind]:
        title = figure.get_suptitle()
        for part in ("synthetic V = 64", "K = 8", "τ = 1", "ε = auto", "seed 3"):
            assert part in title, (path.name, title)
        if kind in ("run", "parquet"):
            assert "5,000 steps" in title
        if kind == "gamma":
            assert "γ = 4" in title
        if kind.startswith("chains"):
            assert "3 chains × 2,000 steps" in title


def test_sweep_titles_say_what_was_swept(drawn: dict[str, list[tuple[Path, Figure]]]) -> None:
    (grid,) = (f.get_suptitle() for _, f in drawn["grid"])
    assert "synthetic V = 64" in grid and "seeds 1, 2" in grid and "2,000 fixed-context steps" in grid
    (seeds,) = (f.get_suptitle() for _, f in drawn["seeds"])
    assert "K = 8" in seeds and "τ = 1" in seeds and "seeds 1, 2, 3" in seeds and "2,000 steps" in seeds
    (gammas,) = (f.get_suptitle() for _, f in drawn["gammas"])
    assert "K = 8" in gammas and "τ = 0.9" in gammas and "seeds 1, 2" in gammas


def test_runs_that_differ_get_different_titles(tmp_path: Path) -> None:
    """The title line is the folder's own (`describe_run`, the suptitle of each run figure above)."""
    first = describe_run(_run(tmp_path / "a", seed=1, tau=0.8, steps=10))
    second = describe_run(_run(tmp_path / "b", seed=2, K=16, steps=10))
    assert "τ = 0.8" in first and "seed 1" in first and "K = 8" in first
    assert "K = 16" in second and "seed 2" in second and "τ = 1" in second
    (tmp_path / "c").mkdir()
    assert describe_run(tmp_path / "c") == "run c (no readable summary.json: configuration unknown)"


@pytest.mark.parametrize("kind", ["run", "gamma", "chains", "grid", "seeds", "gammas"])
def test_figures_are_printed_at_150_dpi_or_more(drawn: dict[str, list[tuple[Path, Figure]]], kind: str) -> None:
    assert drawn[kind]
    for path, _ in drawn[kind]:
        width, height, dpi = _png_size_and_dpi(path)
        assert dpi >= PRINT_DPI, (path.name, dpi)
        assert width >= 6 * PRINT_DPI and height >= 4 * PRINT_DPI, (path.name, width, height)
        assert width <= 16 * dpi and height <= 8 * dpi, (path.name, width, height)  # a page, not a poster


def _errorbar_boxes(figure: Figure) -> list[tuple[float, float, float, float]]:
    """Display-space boxes of the visible part of every error-bar segment (clipped to its axes)."""
    boxes = []
    for ax in figure.axes:
        frame = ax.get_window_extent()
        for container in ax.containers:
            for collection in getattr(container, "lines", [None, None, ()])[2]:
                for segment in collection.get_segments():
                    (x0, y0), (x1, y1) = ax.transData.transform(segment).min(axis=0), \
                        ax.transData.transform(segment).max(axis=0)
                    x0, y0, x1, y1 = max(x0, frame.x0), max(y0, frame.y0), min(x1, frame.x1), min(y1, frame.y1)
                    if x0 <= x1 and y0 <= y1:
                        boxes.append((x0, y0, x1, y1))
    return boxes


@pytest.mark.parametrize("kind", ["run", "gamma", "chains", "seeds", "gammas"])
def test_legends_cover_no_data(drawn: dict[str, list[tuple[Path, Figure]]], kind: str) -> None:
    """Every legend lies outside its axes, so it covers no error bar, point or line."""
    assert drawn[kind]
    for path, figure in drawn[kind]:
        FigureCanvasAgg(figure)  # what the figure was saved with
        figure.draw_without_rendering()
        for ax in figure.axes:
            legend = ax.get_legend()
            if legend is None:
                continue
            box = legend.get_window_extent()
            for x0, y0, x1, y1 in _errorbar_boxes(figure):
                assert x1 < box.x0 or x0 > box.x1 or y1 < box.y0 or y0 > box.y1, (path.name, "error bar under legend")
            assert not box.overlaps(ax.get_window_extent()), (path.name, "legend over the axes")


def test_seed_legend_clears_the_error_bars(drawn: dict[str, list[tuple[Path, Figure]]]) -> None:
    ((_, figure),) = drawn["seeds"]
    assert len(_errorbar_boxes(figure)) == 3  # one per seed: the check above had bars to compare


def _synthetic_trace(contexts: int, steps: int, seed: int = 0) -> RunTrace:
    rng = np.random.default_rng(seed)
    overlap_of = rng.uniform(0.6, 0.95, contexts)
    context = rng.integers(0, contexts, steps)
    overlap = overlap_of[context]
    return RunTrace(accepted=rng.random(steps) < overlap, overlap=overlap,
                    ce_gap=rng.gamma(2.0, 0.1, steps), context=context.astype(np.int64))


def _ydata(line: Line2D) -> np.ndarray:
    return np.asarray(line.get_ydata(), dtype=np.float64)


def _errorbar_line(figure: Figure) -> Line2D:
    """The data line of the figure's one error-bar plot."""
    ((container,),) = [ax.containers for ax in figure.axes]
    assert isinstance(container, ErrorbarContainer)
    data_line = container.lines[0]
    assert isinstance(data_line, Line2D)
    return data_line


def _points(figure: Figure) -> int:
    return _ydata(_errorbar_line(figure)).size


def test_many_contexts_are_binned_few_are_not(tmp_path: Path) -> None:
    """At V = 65,536 one point per context is a solid block: above MAX_CONTEXT_POINTS they are binned."""
    many = _synthetic_trace(contexts=20_000, steps=60_000)
    figure = context_figure(many, "synthetic")
    assert np.unique(many.context).size > MAX_CONTEXT_POINTS
    assert _points(figure) <= CONTEXT_BINS
    assert "bins" in figure.axes[0].get_title()
    figure.savefig(tmp_path / "binned.png")
    _assert_real_png(tmp_path / "binned.png")
    few = _synthetic_trace(contexts=50, steps=5_000)
    assert _points(context_figure(few, "synthetic")) == 50


def test_binned_points_pool_their_contexts() -> None:
    """Each bin's point is the pooled acceptance of its steps; together they hold every step."""
    trace = _synthetic_trace(contexts=5_000, steps=40_000, seed=1)
    line = _errorbar_line(context_figure(trace, "synthetic"))
    x, rate = np.asarray(line.get_xdata(), dtype=np.float64), _ydata(line)
    assert np.all(np.diff(x) > 0)  # bins in order of overlap
    assert abs(float(rate.mean()) - float(trace.accepted.mean())) < 0.02  # ≈ equal steps per bin


def test_gamma_run_figures_hold_the_measured_and_exact_values(
    folders: dict[str, Path], drawn: dict[str, list[tuple[Path, Figure]]]
) -> None:
    import json

    summary = json.loads((folders["gamma"] / "summary.json").read_text())
    (_, hist), (_, per_position), _ = drawn["gamma"]  # then the loss split
    exact = [line for line in hist.axes[0].lines if line.get_label() == "exact P(L = j)"]
    (line,) = exact
    probabilities = _ydata(line)
    assert probabilities.sum() == pytest.approx(1.0)
    mean = float(np.arange(probabilities.size) @ probabilities)
    assert mean == pytest.approx(summary["expected"]["accepted_length"], rel=1e-9)
    assert f"{summary['mean_accepted_length']:.4f}" in hist.axes[0].get_title()
    np.testing.assert_allclose(_ydata(_errorbar_line(per_position)), summary["per_position_accept_rate"])


def test_chain_points_are_the_chains_rates(
    folders: dict[str, Path], drawn: dict[str, list[tuple[Path, Figure]]], tmp_path: Path
) -> None:
    import json

    rates = [json.loads((folders["chains"] / f"chain_000{b}" / "summary.json").read_text())["accept_rate"]
             for b in range(3)]
    ((_, figure),) = drawn["chains"]
    (accept,) = [line for line in figure.axes[0].lines if line.get_label() == "chain's acceptance rate"]
    np.testing.assert_allclose(_ydata(accept), rates)
    bare = tmp_path / "bare"  # a Parquet chains folder whose chain summaries are gone: rates from the chain column
    shutil.copytree(folders["chains-parquet"], bare)
    for chain in bare.glob("chain_*"):
        shutil.rmtree(chain)
    ((_, figure),) = [(d.path, d.figure) for d in draw_folder(bare)]
    (accept,) = [line for line in figure.axes[0].lines if line.get_label() == "chain's acceptance rate"]
    np.testing.assert_allclose(_ydata(accept), rates)  # the same seed and chains: the same rates


def test_speedup_crosses_are_drawn_over_the_exact_circles(drawn: dict[str, list[tuple[Path, Figure]]]) -> None:
    ((_, figure),) = drawn["gammas"]
    ax = figure.axes[0]
    exact = [line for line in ax.lines if line.get_marker() == "o"]
    measured = [line for line in ax.lines if line.get_marker() == "x"]
    assert exact and len(measured) == len(exact)
    for line in exact:
        assert line.get_markerfacecolor() == "none"  # hollow: the cross inside shows
    assert min(m.get_zorder() for m in measured) > max(e.get_zorder() for e in exact)


def test_same_folder_same_bytes(folders: dict[str, Path]) -> None:
    first = [p.read_bytes() for p in plot_folder(folders["chains"])]
    assert [p.read_bytes() for p in plot_folder(folders["chains"])] == first


def test_plot_command_writes_beside_the_data(folders: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert plot_main([str(folders["chains-none"]), str(folders["gammas"])]) == 0
    out = capsys.readouterr().out
    for folder, name in (("chains-none", CHAINS_PNG), ("gammas", SPEEDUP_PNG)):
        assert f"wrote {folders[folder] / name}" in out


def test_infinite_ce_gaps_are_counted_not_drawn(tmp_path: Path) -> None:
    run_dir = _run(tmp_path / "zero-eps", vocab=32, K=4, eps=0.0, seed=1)
    trace = read_run_trace(run_dir / "m1_metrics.jsonl")
    assert np.isinf(trace.ce_gap).all()
    figure = ce_gap_figure(trace, describe_run(run_dir))
    assert "2,000 steps with an infinite gap not shown" in figure.axes[0].get_title()
    save_figure(figure, tmp_path / "gap.png")
    _assert_real_png(tmp_path / "gap.png")


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("none", "nothing to plot: the run was made with --telemetry none"),
        ("chains-parquet/chain_0001", "chain 1's steps are in"),
    ],
)
def test_nothing_to_plot_is_one_line_naming_the_folder(
    folders: dict[str, Path], capsys: pytest.CaptureFixture[str], kind: str, message: str
) -> None:
    head, _, tail = kind.partition("/")
    folder = folders[head] / tail if tail else folders[head]
    before = sorted(folders[head].rglob("*.png"))
    assert plot_main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"plot: error: {folder}: ") and message in err and err.count("\n") == 1
    assert sorted(folders[head].rglob("*.png")) == before


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such folder"),
        ("empty", "no m1_metrics.jsonl, m1_metrics.parquet, m1_blocks.jsonl, m1_sweep.csv, m1_seeds.csv, "
                  "m1_gamma_sweep.csv or m1_drafts_sweep.csv to plot"),
        ("bad-jsonl", "m1_metrics.jsonl: line 2 is not a telemetry record"),
        ("bad-csv", "m1_sweep.csv: missing column(s)"),
        ("bad-blocks", "m1_blocks.jsonl: line 1 is not a block record"),
        ("bad-parquet", "m1_metrics.parquet: cannot be read as Parquet"),
        ("bad-gamma-csv", "m1_gamma_sweep.csv: no speedup_c<C> column"),
    ],
)
def test_bad_folders_are_one_line_and_draw_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    folder = tmp_path / setup
    if setup != "missing":
        folder.mkdir()
    files = {
        "bad-jsonl": ("m1_metrics.jsonl",
                      '{"step":0,"prev_token":1,"accepted":true,"overlap_mass":0.5,"ce_gap_nats":0.1}\nnot json\n'),
        "bad-csv": ("m1_sweep.csv", "K,tau\n1,1.0\n"),
        "bad-blocks": ("m1_blocks.jsonl", '{"block":0}\n'),
        "bad-parquet": ("m1_metrics.parquet", "not parquet"),
        "bad-gamma-csv": ("m1_gamma_sweep.csv", "gamma,K\n1,8\n"),
    }
    if setup in files:
        name, text = files[setup]
        (folder / name).write_text(text)
    assert plot_main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plot: error: ") and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.rglob("*.png"))
    with pytest.raises(PlotError):
        plot_folder(folder)


def test_png_chunks_parse(tmp_path: Path) -> None:
    """The pHYs reader above reads what a PNG writer puts there (its own negative control)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 640, 420, 8, 6, 0, 0, 0))
           + chunk(b"pHYs", struct.pack(">IIB", 3937, 3937, 1)))
    path = tmp_path / "probe.png"
    path.write_bytes(png)
    width, height, dpi = _png_size_and_dpi(path)
    assert (width, height) == (640, 420) and dpi == pytest.approx(100, abs=0.1)
