"""Tests of the task runners: serial, a pool of worker processes and a real Dask LocalCluster give identical rows."""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from thermospec.cli.sweep import grid_main
from thermospec.experiments import parallel
from thermospec.experiments.grid import GridSweep, grid_task
from thermospec.experiments.parallel import (
    SweepInterrupted,
    TaskInterrupted,
    TaskRunner,
    available_cores,
    open_runner,
    single_threaded_blas,
    stop_signals,
)
from thermospec.experiments.seeds import SeedSweep, seed_task
from thermospec.experiments.sweeps import GRID_CSV
from thermospec.runs.config import ConfigError, RunConfig

SMALL_GRID = GridSweep(base=RunConfig(vocab=64), steps=3_000, Ks=(4, 16), taus=(0.8, 1.0, 1.25), seeds=(3, 5))
SMALL_SEEDS = SeedSweep(base=RunConfig(vocab=64, K=8, steps=2_000), seeds=(1, 2, 3))


def _square(x: int) -> int:
    return x * x


def _fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two is not allowed")
    time.sleep(0.05 * x)
    return x


def _stopped_on_three(x: int) -> int:
    if x == 3:
        raise TaskInterrupted("stopped on a signal", int(signal.SIGTERM))
    return x


def _rows(runner_jobs: int | None, scheduler: str | None = None) -> list[dict[str, Any]]:
    points = SMALL_GRID.points()
    with open_runner(runner_jobs, scheduler) as runner:
        done = dict(runner.map_unordered(grid_task(SMALL_GRID), points))
    return [done[i] for i in range(len(points))]


def _seed_rows(runner_jobs: int | None, folder: Path, scheduler: str | None = None) -> list[dict[str, Any]]:
    folder.mkdir()
    with open_runner(runner_jobs, scheduler) as runner:
        done = dict(runner.map_unordered(seed_task(SMALL_SEEDS, folder), SMALL_SEEDS.seeds))
    return [done[i] for i in range(len(SMALL_SEEDS.seeds))]


@functools.cache
def _serial_rows() -> list[dict[str, Any]]:
    return _rows(1)


def test_available_cores_is_positive() -> None:
    assert available_cores() >= 1


def test_jobs_below_one_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^--jobs: must be an integer >= 1, got 0$"):
        open_runner(0)


def test_serial_runner_yields_every_index_once() -> None:
    with open_runner(1) as runner:
        assert runner.where == "this process"
        assert sorted(runner.map_unordered(_square, [3, 1, 2])) == [(0, 9), (1, 1), (2, 4)]
        assert list(runner.map_unordered(_square, [])) == []


def test_where_says_where_the_tasks_actually_run() -> None:
    runner = TaskRunner(jobs=4)
    assert runner.where == "4 local worker processes"
    assert runner.where_for(2) == "2 local worker processes"
    assert runner.where_for(1) == "this process"
    assert TaskRunner(jobs=1).where_for(10) == "this process"
    assert TaskRunner(jobs=2, address="tcp://h:1").where_for(1) == "Dask scheduler tcp://h:1"


def test_stop_signals_record_the_first_signal_and_restore_the_handlers() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with stop_signals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in before} == before
    with stop_signals() as stop, pytest.raises(SweepInterrupted) as raised, stop.raising():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # not reached: the signal raises
    assert raised.value.signum == signal.SIGINT and str(raised.value) == "interrupted by SIGINT"


def test_a_failed_task_in_a_worker_is_raised_here_and_no_worker_is_left() -> None:
    with open_runner(2) as runner, pytest.raises(ValueError, match="two is not allowed") as raised:
        list(runner.map_unordered(_fail_on_two, [0, 1, 2, 3, 40]))
    assert any("in worker process" in note for note in raised.value.__notes__)
    assert not [c for c in multiprocessing.active_children() if c.name == "thermospec-worker"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_task_stopped_by_a_signal_stops_the_sweep(jobs: int) -> None:
    """A task that reports TaskInterrupted (a run stopped by SIGTERM) ends the map with SweepInterrupted."""
    results: list[tuple[int, int]] = []
    with open_runner(jobs) as runner, pytest.raises(SweepInterrupted) as raised:
        results.extend(runner.map_unordered(_stopped_on_three, [0, 1, 2, 3, 4, 5, 6]))
    assert raised.value.signum == signal.SIGTERM
    assert set(results) <= {(i, i) for i in range(7)} and (3, 3) not in results
    assert len(results) < 7


def test_two_worker_processes_give_the_serial_rows(tmp_path: Path) -> None:
    """Randomness belongs to the configuration: a pool of 2 processes gives the same rows, bit for bit."""
    assert _rows(2) == _serial_rows()
    assert _seed_rows(2, tmp_path / "pool") == _seed_rows(1, tmp_path / "serial")


def test_rows_differ_when_the_configuration_does() -> None:
    """Negative control: the equality above is not vacuous (another seed list gives other rows)."""
    other = replace(SMALL_GRID, seeds=(4, 6))
    rows = [grid_task(other)(p) for p in other.points()]
    assert [r["accept_rate"] for r in rows] != [r["accept_rate"] for r in _serial_rows()]


def test_single_threaded_blas_is_in_force() -> None:
    from threadpoolctl import threadpool_info

    single_threaded_blas()
    single_threaded_blas()  # idempotent
    numpy_blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas" and "numpy" in pool["filepath"]]
    assert numpy_blas  # NumPy's BLAS solves π: it is the one that matters
    assert all(pool["num_threads"] == 1 for pool in numpy_blas)


def test_malformed_scheduler_address_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^--scheduler tcp://a b: not a scheduler address"):
        open_runner(scheduler="tcp://a b")


def test_unreachable_scheduler_is_one_clear_error() -> None:
    pytest.importorskip("distributed", reason="Dask distributed not installed (pip install 'thermospec[dask]')")
    with pytest.raises(ConfigError, match=r"^--scheduler tcp://127.0.0.1:1: cannot connect within 0.5 s"):
        open_runner(scheduler="tcp://127.0.0.1:1", timeout_s=0.5)


def test_unreachable_scheduler_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("distributed", reason="Dask distributed not installed (pip install 'thermospec[dask]')")
    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT_S", 0.5)
    runs = tmp_path / "runs"
    status = grid_main(["--scheduler", "tcp://127.0.0.1:1", "--runs-dir", str(runs), "--steps", "100"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("sweep_m1_grid: error: --scheduler tcp://127.0.0.1:1: cannot connect")
    assert err.count("\n") == 1
    assert not runs.exists()


def test_a_real_dask_local_cluster_gives_the_serial_rows(tmp_path: Path) -> None:
    """A LocalCluster on loopback, reached through its TCP address as a remote cluster would be."""
    distributed = pytest.importorskip(
        "distributed", reason="Dask distributed not installed (pip install 'thermospec[dask]')"
    )
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, host="127.0.0.1", protocol="tcp",
        dashboard_address=None,
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        assert _rows(None, address) == _serial_rows()
        assert _seed_rows(None, tmp_path / "dask", address) == _seed_rows(1, tmp_path / "serial")
        runs = tmp_path / "runs"
        argv = ["--vocab", "64", "--steps", "3000", "--Ks", "4", "16", "--taus", "0.8", "1.0", "1.25",
                "--seeds", "3", "5", "--quiet", "--runs-dir", str(runs)]
        assert grid_main([*argv, "--scheduler", address]) == 0
        assert grid_main([*argv, "--jobs", "1"]) == 0
    first, second = sorted(runs.iterdir())
    assert (first / GRID_CSV).read_bytes() == (second / GRID_CSV).read_bytes()
