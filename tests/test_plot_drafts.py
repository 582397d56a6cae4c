"""The drafts sweep's figure: plotted from its folder too, its speed-up modelled with the TSU draws the
verifier uses (and with all N charged, dashed); the measured and the exact gain share have two names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.lines import Line2D

from thermospec.cli.drafts_sweep import main as drafts_sweep_main
from thermospec.cli.report import headline
from thermospec.cli.sweep import plot_main
from thermospec.experiments.drafts_plots import drafts_figure, read_drafts_rows, speedup
from thermospec.experiments.drafts_sweep import DRAFTS_CSV, DRAFTS_PNG, drafts_table
from thermospec.experiments.plots import draw_folder, folder_kinds
from thermospec.experiments.sweeps import SWEEP_JSON
from thermospec.runs.config import RunConfig


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("drafts-sweep")
    assert drafts_sweep_main(["--vocab", "32", "--Ks", "4", "--Ns", "1", "2", "4", "--verifiers", "recursive",
                              "optimal", "--steps", "400", "--quiet", "--runs-dir", str(runs)]) == 0
    (folder,) = runs.iterdir()
    return folder


def _lines(folder: Path, panel: int) -> list[Line2D]:
    ((drawn,),) = [draw_folder(folder)]
    return list(drawn.figure.axes[panel].lines)


def test_a_drafts_sweep_folder_is_plotted(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`plot` of a drafts-sweep folder said "no ... to plot"; it redraws the figure from the CSV."""
    assert folder_kinds(sweep) == ["drafts-sweep"]
    (sweep / DRAFTS_PNG).unlink()
    assert plot_main([str(sweep)]) == 0
    assert f"wrote {sweep / DRAFTS_PNG}" in capsys.readouterr().out
    assert (sweep / DRAFTS_PNG).read_bytes()[:4] == b"\x89PNG"


def test_title_comes_from_sweep_json_when_there_is_one(sweep: Path, tmp_path: Path) -> None:
    """Titled from the folder's ``sweep.json`` (the swept K, N and verifier left out), else from the CSV."""
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / DRAFTS_CSV).write_bytes((sweep / DRAFTS_CSV).read_bytes())
    ((drawn,),) = [draw_folder(folder)]
    assert drawn.figure.get_suptitle() == f"drafts sweep · 400 steps per point (no {SWEEP_JSON})"
    config = RunConfig(vocab=32, steps=400, seed=7, K=64).as_dict()
    (folder / SWEEP_JSON).write_text(json.dumps({"kind": "drafts", "config": config}), encoding="utf-8")
    ((drawn,),) = [draw_folder(folder)]
    title = drawn.figure.get_suptitle()
    assert "synthetic V = 32" in title and "seed 7" in title and "400 steps per point" in title
    assert "K = 64" not in title


def test_speedup_counts_the_draws_the_verifier_uses(sweep: Path) -> None:
    """Solid: (1 + a) / (d c + 1) with d the verifier's mean draws; dashed: d = N. Recursive rejection stops at
    the first acceptance, so its solid line is above its dashed one once N > 1; optimal draws all N."""
    rows = read_drafts_rows(sweep / DRAFTS_CSV)
    lines = _lines(sweep, 1)
    solid = [line for line in lines if line.get_linestyle() == "-"]
    dashed = [line for line in lines if line.get_linestyle() == "--"]
    assert len(solid) == len(dashed) == 2  # one of each per verifier
    for verifier, modelled, charged in zip(("recursive", "optimal"), solid, dashed, strict=True):
        mine = sorted((r for r in rows if r["verifier"] == verifier), key=lambda r: r["N"])
        drawn = [speedup(r["exact_acceptance"], r["expected_draws"], r["cost_ratio"]) for r in mine]
        every = [(1 + r["exact_acceptance"]) / (r["N"] * r["cost_ratio"] + 1) for r in mine]
        np.testing.assert_allclose(np.asarray(modelled.get_ydata(), dtype=np.float64), drawn)
        np.testing.assert_allclose(np.asarray(charged.get_ydata(), dtype=np.float64), every)
        if verifier == "recursive":
            assert all(r["expected_draws"] < r["N"] for r in mine if r["N"] > 1)
            assert all(d > e for d, e, r in zip(drawn, every, mine, strict=True) if r["N"] > 1)
        else:
            np.testing.assert_allclose(drawn, every)  # all N drafts drawn: the two models agree


@pytest.mark.parametrize("panels", [1, 2])
def test_legend_is_inside_the_figure_and_off_the_axes(sweep: Path, panels: int) -> None:
    """One K (the synthetic default's figure) or more: the legend below the panels, all of it on the page."""
    rows = read_drafts_rows(sweep / DRAFTS_CSV)
    figure = drafts_figure([r | {"K": r["K"] * 2 ** k} for k in range(panels) for r in rows], "a sweep")
    figure.draw_without_rendering()
    (legend,) = figure.legends
    box, frame = legend.get_window_extent(), figure.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0, (box, frame)
    assert not any(box.overlaps(ax.get_window_extent()) for ax in figure.axes)
    assert len(figure.axes) == 2 * panels


def test_speedup_model() -> None:
    assert speedup(0.9330, 2.45, 0.05) == pytest.approx(1.722, abs=1e-3)  # recursive, N = 16 (docs/drafts.md)
    assert speedup(0.9330, 16, 0.05) == pytest.approx(1.074, abs=1e-3)  # the same, all 16 draws charged


def test_measured_and_exact_gain_shares_have_two_names() -> None:
    """The run headline's share is of the measured acceptance; the sweep's (and the docs') of the exact one."""
    summary = {
        "config": {"c": 50.0, "eps": "auto", "K_used": 8, "tau": 1.0, "seed": 7}, "target": {"source": "synthetic",
                                                                                              "V": 64},
        "steps": 100, "accept_rate": 0.9, "mean_overlap": 0.91, "drafts": 2, "verifier": "optimal",
        "mean_drafts_used": 2.0, "single_draft_acceptance": 0.85, "acceptance_optimum": 0.91,
        "acceptance_bound": 0.92, "gain_fraction": 0.83,
    }
    text = headline(summary)
    assert "measured gain share 0.83" in text and "of the optimum's gain" not in text
    row = {"K": 8, "N": 2, "verifier": "optimal", "accept_rate": 0.9, "exact_acceptance": 0.91,
           "single_draft": 0.85, "optimum": 0.91, "bound": 0.92, "gain_fraction": 1.0, "expected_draws": 2.0}
    table = drafts_table([row])
    assert "exact gain share" in table.splitlines()[0] and "measured gain share" not in table
