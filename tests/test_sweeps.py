"""Tests of the seed and (K, τ) grid sweeps: rows, streams, statistics, CSV, CLI and Ctrl-C."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from thermospec.cli.sweep import grid_main, seed_main
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import fixed_context_draws
from thermospec.experiments.grid import GridPoint, GridSweep, aggregate_grid, format_grid_table, grid_row, validate_grid
from thermospec.experiments.parallel import StopSignals, TaskRunner
from thermospec.experiments.seeds import (
    INCOMPLETE_FILE,
    SeedSweep,
    format_seed_table,
    run_seed,
    seed_row,
    settle_seed,
)
from thermospec.experiments.sweeps import (
    GRID_CSV,
    GRID_FIELDS,
    SEED_FIELDS,
    SEEDS_CSV,
    CsvRows,
    check_values,
    most_probable_context,
    read_csv_rows,
    resolve_context,
    run_sweep,
    target_of,
    tau_key,
)
from thermospec.runs.config import ConfigError, RunConfig
from thermospec.runs.executor import execute_run
from thermospec.runs.prepare import prepare_run
from thermospec.tsu.drafts import draft_for_row

REPO = Path(__file__).resolve().parent.parent
GUIDE_GRID = GridSweep(base=RunConfig(), steps=15_000, Ks=(32, 64, 128), taus=(0.9, 1.0, 1.1), seeds=(7, 11))


# --------------------------------------------------------------------------- axes and streams


def test_check_values_refuses_empty_and_repeated_values() -> None:
    assert check_values("--Ks", [32, 64]) == (32, 64)
    with pytest.raises(ConfigError, match=r"^--seeds: needs at least one value$"):
        check_values("--seeds", [])
    with pytest.raises(ConfigError, match=r"^--taus: 1.0 is given twice$"):
        check_values("--taus", [0.9, 1.0, 1.0])


def test_tau_key_is_exact() -> None:
    assert tau_key(1.0) != tau_key(math.nextafter(1.0, 2.0))
    assert tau_key(0.9) == tau_key(float("0.9"))


def test_points_cover_the_grid_k_slowest_seed_fastest() -> None:
    points = GUIDE_GRID.points()
    assert len(points) == 18
    assert points[0] == GridPoint(K=32, tau=0.9, seed=7)
    assert points[1] == GridPoint(K=32, tau=0.9, seed=11)
    assert points[-1] == GridPoint(K=128, tau=1.1, seed=11)
    assert len(set(points)) == 18


def test_a_row_depends_on_its_configuration_only() -> None:
    """The same (K, τ, seed) gives the same row whatever else is swept and in whichever order."""
    point = GridPoint(K=64, tau=1.0, seed=11)
    wide = grid_row(GUIDE_GRID, point)
    narrow = grid_row(replace(GUIDE_GRID, Ks=(64,), taus=(1.1, 1.0), seeds=(11,)), point)
    assert wide == narrow
    assert wide["context"] == most_probable_context(target_of(RunConfig(), 11))
    other = grid_row(GUIDE_GRID, GridPoint(K=64, tau=1.0, seed=7))
    assert other["accept_rate"] != wide["accept_rate"]


def test_grid_row_is_what_the_fixed_context_draws_give() -> None:
    point = GridPoint(K=32, tau=0.9, seed=7)
    row = grid_row(GUIDE_GRID, point)
    target = target_of(RunConfig(), 7)
    x = most_probable_context(target)
    draft = draft_for_row(target.row(x), x, 32, 0.9, "auto")
    draws = fixed_context_draws(target.row(x), draft, 15_000, random_stream(7, Stream.SWEEP, 32, tau_key(0.9)))
    assert row == {
        "K": 32, "tau": 0.9, "seed": 7, "context": x, "steps": 15_000,
        "accept_rate": float(draws.accepted.mean()), "overlap_mass": draft.overlap_mass,
        "ce_gap_nats": draft.ce_gap_nats, "topk_mass": draft.topk_mass, "psi_bytes": draft.psi_bytes,
        "eps_used": draft.payload.eps,
    }
    assert list(row) == list(GRID_FIELDS)


# --------------------------------------------------------------------------- acceptance tracks overlap


def _z_scores(accepts: Sequence[float], overlaps: Sequence[float], n: int) -> np.ndarray:
    a, o = np.asarray(accepts), np.asarray(overlaps)
    return np.asarray((a - o) / np.sqrt(o * (1 - o) / n))


def test_acceptance_tracks_overlap_over_the_guide_grid() -> None:
    """Each row's accept rate is a Binomial(n, overlap) fraction: the 18 z-scores are N(0, 1).

    The sum of their squares is χ²(18); a row off by more than 4 standard errors fails on its own.
    """
    rows = [grid_row(GUIDE_GRID, p) for p in GUIDE_GRID.points()]
    z = _z_scores([r["accept_rate"] for r in rows], [r["overlap_mass"] for r in rows], GUIDE_GRID.steps)
    assert np.max(np.abs(z)) < 4.0
    assert stats.chi2.sf(float(np.sum(z**2)), df=z.size) > 1e-3


def test_negative_control_a_proposer_that_is_not_its_payload_is_caught() -> None:
    """Drafting from the τ = 1.1 payload while claiming the τ = 0.9/1.0 overlap: the same test rejects."""
    target = target_of(RunConfig(), 7)
    x = most_probable_context(target)
    p = target.row(x)
    accepts, overlaps = [], []
    for k in (32, 64, 128):
        for claimed in (0.9, 1.0):
            real = draft_for_row(p, x, k, 1.1, "auto")
            draws = fixed_context_draws(p, real, GUIDE_GRID.steps, random_stream(7, Stream.SWEEP, k, tau_key(claimed)))
            accepts.append(float(draws.accepted.mean()))
            overlaps.append(draft_for_row(p, x, k, claimed, "auto").overlap_mass)
    z = _z_scores(accepts, overlaps, GUIDE_GRID.steps)
    assert stats.chi2.sf(float(np.sum(z**2)), df=z.size) < 1e-6


def test_aggregate_grid_means_over_seeds() -> None:
    rows = [
        {"K": 8, "tau": 1.0, "seed": s, "steps": 100, "accept_rate": a, "overlap_mass": o,
         "ce_gap_nats": g, "topk_mass": t, "psi_bytes": b}
        for s, a, o, g, t, b in ((1, 0.5, 0.4, 0.2, 0.7, 60), (2, 0.7, 0.6, math.inf, 0.9, 60))
    ]
    (agg,) = aggregate_grid(rows)
    assert agg["K"] == 8 and agg["tau"] == 1.0 and agg["seeds"] == 2
    assert agg["accept_rate"] == pytest.approx(0.6)
    assert agg["overlap_mass"] == pytest.approx(0.5)
    assert agg["accept_overlap_gap"] == pytest.approx(0.1)
    assert agg["accept_se"] == pytest.approx(math.sqrt(0.4 * 0.6 / 100 + 0.6 * 0.4 / 100) / 2)
    assert agg["ce_gap_nats"] == math.inf
    assert agg["topk_mass"] == pytest.approx(0.8)
    table = format_grid_table([agg])
    assert "inf" in table and "0.6000" in table


# --------------------------------------------------------------------------- contexts and validation


def test_resolve_context_on_a_synthetic_target() -> None:
    target = target_of(RunConfig(vocab=16), 3)
    assert resolve_context("15", target) == 15
    with pytest.raises(ConfigError, match=r"^--context 16: outside the vocabulary \(token ids 0..15\)$"):
        resolve_context("16", target)
    with pytest.raises(ConfigError, match="not a token id"):
        resolve_context("e", target)


def test_resolve_context_on_a_corpus(shakespeare: Path) -> None:
    target = target_of(RunConfig(corpus=str(shakespeare)), 7)
    assert target.vocabulary is not None
    assert target.vocabulary[resolve_context("e", target)] == "e"
    assert target.vocabulary[resolve_context("\\n", target)] == "\n"
    assert resolve_context("12", target) == 12
    with pytest.raises(ConfigError, match="not a character of the corpus"):
        resolve_context("@", target)


def test_validate_grid_names_what_cannot_run() -> None:
    validate_grid(replace(GUIDE_GRID, Ks=(300,)))  # a K above V is clamped, as in a run
    with pytest.raises(ConfigError, match=r"^--eps: \(V - K\) \* eps must be < 1"):
        validate_grid(replace(GUIDE_GRID, base=replace(RunConfig(), eps=0.01)))
    with pytest.raises(ConfigError, match=r"^--context 256: outside the vocabulary"):
        validate_grid(replace(GUIDE_GRID, context=256))
    with pytest.raises(ConfigError, match=r"^--Ks: every K must be an integer >= 1, got 0$"):
        validate_grid(replace(GUIDE_GRID, Ks=(0,)))


# --------------------------------------------------------------------------- the seed sweep


def test_a_seed_row_is_the_single_run_of_that_seed(tmp_path: Path) -> None:
    base = RunConfig(steps=3_000, K=16)
    sweep = SeedSweep(base=base, seeds=(5,))
    row = run_seed(sweep, str(tmp_path), 5)
    alone = tmp_path / "alone"
    alone.mkdir()
    summary = execute_run(prepare_run(replace(base, seed=5)), alone)
    assert row == seed_row(summary)
    assert list(row) == list(SEED_FIELDS)
    assert (tmp_path / "seed_5" / "m1_metrics.jsonl").read_bytes() == (alone / "m1_metrics.jsonl").read_bytes()


def test_seed_table_has_a_mean_and_std_row() -> None:
    rows = [{"seed": s, "accept_rate": a, "mean_overlap": a, "accept_overlap_gap": 0.0, "mean_ce_gap": 0.1,
             "p_value": 0.5} for s, a in ((1, 0.9), (2, 0.8))]
    table = format_seed_table(rows)
    assert table.splitlines()[-1].split()[:4] == ["mean±std", "0.8500", "±", f"{np.std([0.9, 0.8], ddof=1):.4f}"]


def test_seed_rows_append_the_loss_split_and_the_table_says_where_acceptance_goes() -> None:
    # The CSV's columns before the loss split keep their order: readers of m1_seeds.csv by position still work.
    assert SEED_FIELDS[:10] == ("seed", "steps", "accept_rate", "mean_overlap", "accept_overlap_gap", "mean_ce_gap",
                                "chi2_stat", "chi2_dof", "p_value", "psi_bytes_max")
    assert SEED_FIELDS[10:] == ("loss_draft_model", "loss_top_k", "loss_quantisation")
    rows = [{"seed": s, "accept_rate": 0.9, "mean_overlap": 0.9, "accept_overlap_gap": 0.0, "mean_ce_gap": 0.1,
             "p_value": 0.5, "loss_draft_model": 0.0, "loss_top_k": top_k, "loss_quantisation": 0.001}
            for s, top_k in ((1, 0.06), (2, 0.08))]
    last = format_seed_table(rows).splitlines()[-1]
    assert last == (f"lost to   draft model 0.0000 ± 0.0000   top-K 0.0700 ± {np.std([0.06, 0.08], ddof=1):.4f}   "
                    "8-bit codes 0.0010 ± 0.0000")


# --------------------------------------------------------------------------- CSV and interruption


def test_csv_rows_are_flushed_as_they_come_and_put_in_order_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    sink = CsvRows(path, ("a", "b"))
    sink.append({"a": 2, "b": 0.1})
    assert path.read_text() == "a,b\n2,0.1\n"  # already on disk
    sink.rewrite([{"a": 1, "b": math.inf}, {"a": 2, "b": 0.1}])
    assert path.read_text() == "a,b\n1,inf\n2,0.1\n"
    assert not list(tmp_path.glob(".*.tmp"))


class _InterruptedRunner(TaskRunner):
    """Finishes `finish` tasks (out of order), then behaves as if the user pressed Ctrl-C."""

    def __init__(self, finish: int) -> None:
        super().__init__(jobs=1)
        self.finish = finish

    def map_unordered(
        self, func: Callable[[Any], Any], items: Sequence[Any], stop: StopSignals | None = None
    ) -> Generator[tuple[int, Any], None, None]:
        for index in reversed(range(len(items) - self.finish, len(items))):
            yield index, func(items[index])
        raise KeyboardInterrupt


def test_run_sweep_keeps_finished_rows_on_ctrl_c(tmp_path: Path) -> None:
    sweep = replace(GUIDE_GRID, steps=500)
    points = sweep.points()
    outcome = run_sweep(partial_row(sweep), points, _InterruptedRunner(3), tmp_path / GRID_CSV, GRID_FIELDS)
    assert outcome.interrupted
    assert outcome.missing == list(range(15))
    rows = read_csv_rows(tmp_path / GRID_CSV)
    assert [(int(r["K"]), float(r["tau"]), int(r["seed"])) for r in rows] == [
        (p.K, p.tau, p.seed) for p in points[15:]
    ]


def test_run_sweep_settles_the_unfinished_configurations_after_an_interrupt(tmp_path: Path) -> None:
    """`settle` gives the row of a task that finished although its result was lost; it is kept as finished."""
    sweep = replace(GUIDE_GRID, steps=500)
    points = sweep.points()
    lost = points[4]
    asked: list[GridPoint] = []

    def settle(point: GridPoint) -> dict[str, Any] | None:
        asked.append(point)
        return grid_row(sweep, point) if point == lost else None

    outcome = run_sweep(partial_row(sweep), points, _InterruptedRunner(3), tmp_path / GRID_CSV, GRID_FIELDS,
                        settle=settle)
    assert asked == points[:15]
    assert outcome.missing == [i for i in range(15) if i != 4]
    assert outcome.interrupted_by == "SIGINT"
    assert [int(r["K"]) for r in read_csv_rows(tmp_path / GRID_CSV)] == [lost.K] + [p.K for p in points[15:]]


def test_settle_seed_recovers_a_finished_run_and_marks_an_unfinished_one(tmp_path: Path) -> None:
    sweep = SeedSweep(base=RunConfig(vocab=16, K=4, steps=500), seeds=(1, 2, 3, 4, 5))
    (tmp_path / "seed_1").mkdir()  # stopped before it wrote anything
    (tmp_path / "seed_2").mkdir()
    (tmp_path / "seed_2" / "m1_metrics.jsonl").write_text('{"t": 0')  # killed mid-record, before its summary
    assert settle_seed(sweep, str(tmp_path), 1) is None and not (tmp_path / "seed_1").exists()
    assert settle_seed(sweep, str(tmp_path), 2) is None
    assert "seed 2: the sweep was interrupted" in (tmp_path / "seed_2" / INCOMPLETE_FILE).read_text()
    assert settle_seed(sweep, str(tmp_path), 4) is None and not (tmp_path / "seed_4").exists()  # never started
    row = run_seed(sweep, str(tmp_path), 3)  # finished, but its row never reached the sweep
    assert settle_seed(sweep, str(tmp_path), 3) == row
    run_seed(sweep, str(tmp_path), 5)
    summary_path = tmp_path / "seed_5" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps(summary | {"interrupted": True}))  # stopped in the ordinary way
    assert settle_seed(sweep, str(tmp_path), 5) is None and not (tmp_path / "seed_5" / INCOMPLETE_FILE).exists()


def partial_row(sweep: GridSweep) -> Callable[[GridPoint], dict[str, Any]]:
    """`grid_row` bound to `sweep`."""
    return lambda point: grid_row(sweep, point)


# --------------------------------------------------------------------------- command lines


def test_grid_command_writes_the_csv_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = grid_main(["--steps", "2000", "--Ks", "8", "16", "--taus", "1.0", "0.5", "--seeds", "1", "2",
                        "--runs-dir", str(tmp_path), "--jobs", "1"])
    out = capsys.readouterr().out
    assert status == 0
    (folder,) = tmp_path.iterdir()
    with (folder / GRID_CSV).open(newline="") as handle:
        reader = csv.reader(handle)
        assert tuple(next(reader)) == GRID_FIELDS
        body = list(reader)
    assert len(body) == 8
    assert [(r[0], r[1], r[2]) for r in body[:2]] == [("8", "1.0", "1"), ("8", "1.0", "2")]
    assert "K  tau  accept  overlap" in out and "wrote" in out
    record = json.loads((folder / "sweep.json").read_text())
    assert record["missing"] == [] and record["finished"] == 8 and record["interrupted_by"] is None


def test_seed_command_writes_the_csv_and_prints_mean_and_std(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = seed_main(["--steps", "1000", "--K", "8", "--seeds", "3", "4", "--runs-dir", str(tmp_path),
                        "--jobs", "1"])
    out = capsys.readouterr().out
    assert status == 0
    (folder,) = tmp_path.iterdir()
    rows = read_csv_rows(folder / SEEDS_CSV)
    assert [r["seed"] for r in rows] == ["3", "4"]
    assert "mean±std" in out
    assert (folder / "seed_3" / "summary.json").is_file()
    record = json.loads((folder / "sweep.json").read_text())
    assert record["missing"] == [] and record["finished"] == 2 and record["interrupted_by"] is None


def test_one_seed_is_one_run_in_this_process_with_the_clamped_k(
    shakespeare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Singular nouns for one seed, where it really ran (one task: this process), the K actually used."""
    status = seed_main(["--corpus", str(shakespeare), "--K", "200", "--steps", "500", "--seeds", "3",
                        "--runs-dir", str(tmp_path), "--jobs", "2", "--quiet"])
    captured = capsys.readouterr()
    assert status == 0
    assert "using K = 65" in captured.err
    assert "seed sweep: 1 run of 500 steps, K = 65, τ = 1, ε = auto" in captured.out
    assert "and 1 run folder seed_<S>/ in" in captured.out and "(this process)" in captured.out
    (folder,) = tmp_path.iterdir()
    assert json.loads((folder / "sweep.json").read_text())["where"] == "this process"


def test_one_grid_configuration_is_singular_and_runs_in_this_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = grid_main(["--steps", "500", "--Ks", "8", "--taus", "1.0", "--seeds", "1", "--runs-dir", str(tmp_path),
                        "--jobs", "2"])
    out = capsys.readouterr().out
    assert status == 0
    assert "1 K × 1 τ × 1 seed = 1 configuration, 500 fixed-context steps each" in out
    assert "(1 row) in" in out and "(this process)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds"], "argument --seeds: expected at least one argument"),
        (["--Ks", "32", "32"], "--Ks: 32 is given twice"),
        (["--taus", "1.0", "1"], "--taus: 1.0 is given twice"),
        (["--seeds", "7", "7"], "--seeds: 7 is given twice"),
        (["--Ks", "0"], "argument --Ks: must be an integer >= 1, got '0'"),
        (["--taus", "-1"], "argument --taus: must be a finite number > 0"),
        (["--context", "256"], "--context 256: outside the vocabulary"),
        (["--vocab", "16", "--context", "x"], "--context 'x': not a token id"),
        (["--corpus", "no/such/file.txt"], "--corpus no/such/file.txt: no such file"),
        (["--eps", "0.5"], "--eps: (V - K) * eps must be < 1"),
        (["--scheduler", "not an address"], "--scheduler not an address: not a scheduler address"),
    ],
)
def test_grid_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exited:
        sys.exit(grid_main([*argv, "--runs-dir", str(runs), "--steps", "100", "--jobs", "1"]))
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert message in err
    assert err.count("\n") == 1
    assert not runs.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "1", "2", "1"], "--seeds: 1 is given twice"),
        (["--K", "0"], "argument --K: must be an integer >= 1"),
        (["--jobs", "0"], "argument --jobs: must be an integer >= 1"),
    ],
)
def test_seed_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exited:
        sys.exit(seed_main([*argv, "--runs-dir", str(runs), "--steps", "100"]))
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert message in err and err.count("\n") == 1
    assert not runs.exists()


def test_ctrl_c_keeps_whole_rows_and_says_how_many_are_missing(tmp_path: Path) -> None:
    """A real SIGINT to a real sweep: exit 130, whole rows only, the count of missing configurations."""
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "scripts.sweep_m1_grid", "--Ks", *map(str, range(1, 41)), "--taus", "1.0",
               "--seeds", "7", "--steps", "1000000", "--runs-dir", str(runs), "--jobs", "1"]  # lasts seconds
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # SIGINT may be ignored by a background parent
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list(runs.glob(f"*/{GRID_CSV}"))
        if found and found[0].read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    else:
        process.kill()
        pytest.fail("the sweep never wrote two rows")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    rows = read_csv_rows(found[0])
    assert len(rows) >= 2
    assert all(len(r) == len(GRID_FIELDS) and None not in r.values() and r["eps_used"] for r in rows)
    assert [int(r["K"]) for r in rows] == list(range(1, len(rows) + 1))
    assert f"interrupted: {len(rows)} of 40 configurations finished and kept in" in err
    assert f"; {40 - len(rows)} missing" in err


def test_grid_on_a_corpus_takes_a_character_as_context(
    shakespeare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = grid_main(["--corpus", str(shakespeare), "--context", "e", "--Ks", "4", "8", "--taus", "1.0",
                        "--seeds", "1", "--steps", "3000", "--jobs", "1", "--runs-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    target = target_of(RunConfig(corpus=str(shakespeare)), 1)
    assert target.vocabulary is not None
    e = target.vocabulary.index("e")
    assert f"context (given): {e} ('e') (seed 1)" in out
    (folder,) = tmp_path.iterdir()
    assert {r["context"] for r in read_csv_rows(folder / GRID_CSV)} == {str(e)}
