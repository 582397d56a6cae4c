"""Tests of the figures: each PNG exists, decodes and is not blank; bad folders are one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thermospec.cli.sweep import grid_main, plot_main, seed_main
from thermospec.experiments.plots import (
    CE_GAP_PNG,
    CONTEXT_PNG,
    GRID_PNG,
    RUNNING_PNG,
    SEEDS_PNG,
    PlotError,
    folder_kinds,
    plot_folder,
    read_run_trace,
)
from thermospec.runs.config import RunConfig
from thermospec.runs.executor import execute_run
from thermospec.runs.prepare import prepare_run


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


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real run, a real grid sweep and a real seed sweep, small."""
    root = tmp_path_factory.mktemp("plots")
    run_dir = root / "run"
    run_dir.mkdir()
    execute_run(prepare_run(RunConfig(vocab=64, K=8, steps=5_000, seed=3)), run_dir)
    assert grid_main(["--vocab", "64", "--steps", "2000", "--Ks", "4", "8", "16", "--taus", "0.8", "1.0",
                      "--seeds", "1", "2", "--jobs", "1", "--quiet", "--runs-dir", str(root / "grid")]) == 0
    assert seed_main(["--vocab", "64", "--K", "8", "--steps", "2000", "--seeds", "1", "2", "3", "--jobs", "1",
                      "--quiet", "--runs-dir", str(root / "seeds")]) == 0
    (grid,) = (root / "grid").iterdir()
    (seeds,) = (root / "seeds").iterdir()
    return {"run": run_dir, "grid": grid, "seeds": seeds}


def test_blank_check_has_power(tmp_path: Path) -> None:
    """Negative control: a one-colour PNG is caught by the check the figures pass."""
    from matplotlib.figure import Figure

    blank = tmp_path / "blank.png"
    Figure(figsize=(2, 2)).savefig(blank)
    with pytest.raises(AssertionError, match="is blank"):
        _assert_real_png(blank)


def test_run_folder_gets_three_figures(folders: dict[str, Path]) -> None:
    written = plot_folder(folders["run"])
    assert [p.name for p in written] == [RUNNING_PNG, CONTEXT_PNG, CE_GAP_PNG]
    for path in written:
        _assert_real_png(path)


def test_grid_folder_gets_heatmaps(folders: dict[str, Path]) -> None:
    assert folder_kinds(folders["grid"]) == ["grid"]
    (path,) = plot_folder(folders["grid"])
    assert path.name == GRID_PNG
    _assert_real_png(path)


def test_seed_folder_gets_per_seed_points(folders: dict[str, Path]) -> None:
    assert folder_kinds(folders["seeds"]) == ["seeds"]
    (path,) = plot_folder(folders["seeds"])
    assert path.name == SEEDS_PNG
    _assert_real_png(path)
    _assert_real_png(plot_folder(folders["seeds"] / "seed_2")[0])  # each seed's run folder is a run folder


def test_plot_command_writes_beside_the_data(folders: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert plot_main([str(folders["grid"]), str(folders["run"])]) == 0
    out = capsys.readouterr().out
    assert f"wrote {folders['grid'] / GRID_PNG}" in out and f"wrote {folders['run'] / CE_GAP_PNG}" in out


def test_infinite_ce_gaps_are_counted_not_drawn(tmp_path: Path) -> None:
    run_dir = tmp_path / "zero-eps"
    run_dir.mkdir()
    execute_run(prepare_run(RunConfig(vocab=32, K=4, eps=0.0, steps=2_000, seed=1)), run_dir)
    trace = read_run_trace(run_dir / "m1_metrics.jsonl")
    assert np.isinf(trace.ce_gap).all()
    for path in plot_folder(run_dir):
        _assert_real_png(path)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such folder"),
        ("empty", "no m1_metrics.jsonl, m1_sweep.csv or m1_seeds.csv to plot"),
        ("bad-jsonl", "m1_metrics.jsonl: line 2 is not a telemetry record"),
        ("bad-csv", "m1_sweep.csv: missing column(s)"),
    ],
)
def test_bad_folders_are_one_line_and_draw_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    folder = tmp_path / setup
    if setup != "missing":
        folder.mkdir()
    if setup == "bad-jsonl":
        (folder / "m1_metrics.jsonl").write_text(
            '{"step":0,"prev_token":1,"accepted":true,"overlap_mass":0.5,"ce_gap_nats":0.1}\nnot json\n'
        )
    if setup == "bad-csv":
        (folder / "m1_sweep.csv").write_text("K,tau\n1,1.0\n")
    good = tmp_path / "untouched"
    good.mkdir()
    assert plot_main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plot: error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.rglob("*.png"))
    with pytest.raises(PlotError):
        plot_folder(folder)
