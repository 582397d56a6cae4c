"""Figures of the modes beyond M1's chain tell the truth: an ``--order N`` run is grouped by its real
contexts (its points on y = x, its title saying the order), a ``--trace`` run is drawn per position, and a
``--drafts N`` run names N, its verifier and the verifier's exact acceptance where it is drawn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from scipy.stats import chi2

from thermospec.core.streams import Stream, random_stream
from thermospec.engine.drafts import run_drafts
from thermospec.experiments.plot_base import describe_run, title_lines
from thermospec.experiments.plots import CE_GAP_PNG, CONTEXT_PNG, LOSSES_PNG, RUNNING_PNG, draw_folder, folder_kinds
from thermospec.experiments.run_plots import RunTrace, context_figure, context_points, read_run_trace
from thermospec.runs.config import RunConfig
from thermospec.runs.drafts_run import drafts_lines, verifier_drafts
from thermospec.runs.executor import execute_run
from thermospec.runs.prepare import prepare_run

LETTERS = "abcde"


def _run(folder: Path, **config: Any) -> Path:
    folder.mkdir()
    execute_run(prepare_run(RunConfig(**({"seed": 7} | config))), folder, telemetry="jsonl")
    return folder


@pytest.fixture(scope="module")
def order_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An order-5 run on a corpus from a second-order chain: contexts that share a last letter differ."""
    root = tmp_path_factory.mktemp("order")
    rng = np.random.default_rng(0)
    rows = rng.dirichlet(np.full(len(LETTERS), 0.7), size=(len(LETTERS), len(LETTERS)))
    chars = [0, 1]
    for _ in range(20_000):
        chars.append(int(rng.choice(len(LETTERS), p=rows[chars[-2], chars[-1]])))
    corpus = root / "corpus.txt"
    corpus.write_text("".join(LETTERS[c] for c in chars), encoding="utf-8")
    return _run(root / "run", corpus=str(corpus), order=5, K=2, steps=4_000)


def _records(run_dir: Path) -> list[dict[str, Any]]:
    with (run_dir / "m1_metrics.jsonl").open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def _points(figure: Figure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y and the ±2 s.e. half-length of each point of the figure's one error-bar plot."""
    ((container,),) = [ax.containers for ax in figure.axes]
    assert isinstance(container, ErrorbarContainer)
    line = container.lines[0]
    assert line is not None
    x = np.asarray(line.get_xdata(), dtype=np.float64)
    y = np.asarray(line.get_ydata(), dtype=np.float64)
    bars = container.lines[2][-1].get_segments()
    return x, y, np.array([abs(s[1][1] - s[0][1]) / 2 for s in bars])


def _off_the_diagonal(figure: Figure) -> bool:
    """Whether the points stray from y = x: Σ z² over the points beyond χ²'s 0.999 quantile."""
    x, y, bar = _points(figure)
    kept = bar > 0
    z = (y[kept] - x[kept]) / (bar[kept] / 2)
    return bool(float((z ** 2).sum()) > chi2.ppf(0.999, int(kept.sum())))


def test_order_run_points_are_its_contexts(order_run: Path) -> None:
    """One point per backed-off context, at the overlap every step of that context had."""
    records = _records(order_run)
    trace = read_run_trace(order_run / "m1_metrics.jsonl")
    texts = [r["context"] for r in records]
    assert np.unique(trace.context).size == len(set(texts)) > len({r["prev_token"] for r in records})
    for key in np.unique(trace.context)[:200]:
        steps = trace.context == key
        assert len({t for t, s in zip(texts, steps, strict=True) if s}) == 1  # one context text per id
        assert np.ptp(trace.overlap[steps]) == 0.0  # the context's overlap: the same at each of its steps
    overlap, steps, _, _ = context_points(trace)
    assert steps.sum() == len(records)
    assert np.allclose(np.sort(overlap), np.sort([trace.overlap[trace.context == c][0]
                                                  for c in np.unique(trace.context)]))


def test_order_run_points_lie_on_the_diagonal(order_run: Path) -> None:
    """Exact sampling puts each context's acceptance within its error bar of its overlap; negative control:
    grouped by the last character with the group's last overlap (the old figure), the points stray."""
    trace = read_run_trace(order_run / "m1_metrics.jsonl")
    assert not _off_the_diagonal(context_figure(trace, "order 5"))
    records = _records(order_run)
    prev = np.array([r["prev_token"] for r in records], dtype=np.int64)
    last = {r["prev_token"]: r["overlap_mass"] for r in records}
    by_last_character = RunTrace(accepted=trace.accepted, overlap=np.array([last[p] for p in prev.tolist()]),
                                 ce_gap=trace.ce_gap, context=prev)
    assert _off_the_diagonal(context_figure(by_last_character, "order 5"))


def test_order_run_titles_say_the_order(order_run: Path) -> None:
    title = describe_run(order_run)
    assert "corpus.txt chars, order 5, V = 5" in title and "K = 2" in title
    figure = context_figure(read_run_trace(order_run / "m1_metrics.jsonl"), title)
    assert "order 5" in figure.get_suptitle()


@pytest.fixture(scope="module")
def trace_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trace")
    logits = np.random.default_rng(5).standard_normal((24, 200)).astype(np.float32) * 2
    np.save(root / "model.npy", logits)
    return _run(root / "run", trace=str(root / "model.npy"), K=16, steps=2_400)


def test_trace_runs_are_drawn_per_position(trace_run: Path) -> None:
    """A trace run was refused ("not drawn yet"); it is drawn, one point per position."""
    assert folder_kinds(trace_run) == ["run"]
    drawn = draw_folder(trace_run)
    assert [d.path.name for d in drawn] == [RUNNING_PNG, CONTEXT_PNG, CE_GAP_PNG, LOSSES_PNG]
    trace = read_run_trace(trace_run / "m1_metrics.jsonl")
    assert trace.grouped_by == "position"
    np.testing.assert_array_equal(np.unique(trace.context), np.arange(24))
    context = drawn[1].figure
    ax = context.axes[0]
    assert ax.get_title() == "per-position acceptance, 24 positions"
    assert ax.get_xlabel() == "overlap Σ min(p, q) of the position"
    x, _, _ = _points(context)
    assert x.size == 24
    assert not _off_the_diagonal(context)
    title = context.get_suptitle()
    assert "trace model.npy, V = 200" in title and "synthetic" not in title
    assert drawn[2].figure.axes[0].get_xlabel() == "CE gap H(p, q) − H(p) of the step's position (nats)"


@pytest.fixture(scope="module")
def drafts_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``--drafts 2 --verifier spectr`` run's records and configuration (its checklist, tens of seconds, left out)."""
    folder = tmp_path_factory.mktemp("drafts")
    run = prepare_run(RunConfig(vocab=64, K=8, steps=2_000, seed=7, drafts=2, verifier="spectr"))
    view, plans = verifier_drafts(run)
    chunks = run_drafts(run.target.row, run.target.pi, run.proposer.draft, 2, "spectr", 2_000,
                        random_stream(7, Stream.CHAIN), plans=plans)
    (folder / "m1_metrics.jsonl").write_text("".join(drafts_lines(c, view) for c in chunks), encoding="utf-8")
    summary = {"config": run.config.as_dict(), "target": {"V": run.target.V}}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return folder


def test_drafts_run_figures_name_n_the_verifier_and_its_acceptance(drafts_run: Path) -> None:
    """No title said N or the verifier, and the axes said Σ min(p, q) where the verifier's acceptance is."""
    running, context, _ = (d.figure for d in draw_folder(drafts_run))
    for figure in (running, context):
        assert "N = 2 drafts, spectr verifier" in figure.get_suptitle().replace("\n", " · ")
    name = "spectr verifier's exact acceptance (N = 2)"
    assert context.axes[0].get_xlabel() == f"{name} of the context"
    legend = running.axes[0].get_legend()
    assert legend is not None
    labels = [text.get_text() for text in legend.get_texts()]
    assert f"running mean {name}" in labels and not any("Σ min(p, q)" in label for label in labels)
    assert "vs mean exact acceptance" in running.axes[0].get_title()


def test_long_titles_are_broken_at_their_separators() -> None:
    line = "a long target name · K = 8 · τ = 1 · ε = auto · N = 2 drafts, optimal verifier · seed 7"
    assert title_lines(line, 200) == line
    broken = title_lines(line, 40)
    assert broken.replace("\n", " · ") == line
    assert all(len(part) <= 40 for part in broken.split("\n")) and broken.count("\n") >= 2


def test_crafted_context_ids_cost_no_memory(tmp_path: Path) -> None:
    """A record's id is data: 10^15 or −3 is a context like any other (a table indexed by it was 8 PB)."""
    lines = [json.dumps({"step": s, "prev_token": token, "accepted": s % 2 == 0, "overlap_mass": 0.5,
                         "ce_gap_nats": 0.1}) for s, token in enumerate([10 ** 15, -3] * 50)]
    (tmp_path / "m1_metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    overlap, steps, accepted, _ = context_points(read_run_trace(tmp_path / "m1_metrics.jsonl"))
    np.testing.assert_array_equal(steps, [50, 50])  # −3 first: ids in their order
    np.testing.assert_array_equal(accepted, [0, 50])
    np.testing.assert_array_equal(overlap, [0.5, 0.5])
