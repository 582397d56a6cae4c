"""SIGINT / SIGTERM sent to a real sweep: nothing finished is lost, nothing is left running.

Each test starts ``python -m scripts.sweep_m1_grid`` or ``python -m scripts.sweep_m1``
as a subprocess, waits until it has demonstrably started (its first finished row
is on disk and its worker processes exist), signals it and checks that:

- it exits with 130 (SIGINT) or 143 (SIGTERM) within `EXIT_WITHIN_S`;
- none of its descendant processes (recorded while it ran) is still alive;
- the CSV, ``sweep.json``, stdout and stderr agree on which configurations
  finished and which did not, and every finished one has its row;
- for a seed sweep: every finished seed's folder holds a complete run
  (``"interrupted": false``, its JSONL's SHA-256 as recorded) whose summary gives
  its CSV row, and no unfinished seed's folder looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from thermospec.experiments.gamma_sweep import GAMMA_CSV
from thermospec.experiments.parallel import open_runner
from thermospec.experiments.seeds import seed_row
from thermospec.experiments.sweeps import GRID_CSV, SEEDS_CSV, SWEEP_JSON, read_csv_rows

REPO = Path(__file__).resolve().parent.parent
EXIT_WITHIN_S = 3.0  # from the signal to the end of the command, workers stopped and files written
START_WITHIN_S = 60.0
SIGNAL_NAMES: dict[int, str] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
GRID = ["--Ks", "8", "16", "32", "64", "--taus", "0.9", "1.0", "--seeds", "7", "11", "13", "17"]  # 32 configurations
SEEDS = ["7", "11", "13", "17", "19", "23"]

try:
    psutil: Any = importlib.import_module("psutil")
except ImportError:  # pragma: no cover - psutil comes with distributed
    psutil = None


# --------------------------------------------------------------------------- processes


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (psutil, else /proc/PID/task/*/children)."""
    if psutil is not None:
        try:
            return [int(c.pid) for c in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _identity(pid: int) -> str | None:
    """A token telling this process from a later one with the same pid (its start time), or None if gone."""
    if psutil is not None:
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return repr(process.create_time())
        except psutil.Error:
            return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # state, ..., starttime


class Descendants:
    """Every descendant process of `pid` seen while it runs (polled by a thread)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen: dict[int, str] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set():
            self.snapshot()
            time.sleep(0.01)

    def snapshot(self) -> list[int]:
        """The descendants alive now (and remember them)."""
        alive, todo = [], _children(self.pid)
        while todo:
            pid = todo.pop()
            identity = _identity(pid)
            if identity is not None:
                self.seen.setdefault(pid, identity)
                alive.append(pid)
                todo += _children(pid)
        return alive

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def left_behind(self) -> list[int]:
        """Descendants seen earlier that still run (the same process, not a reused pid)."""
        return [pid for pid, identity in self.seen.items() if _identity(pid) == identity]

    def kill_all(self) -> None:
        for pid in self.left_behind():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- one interrupted command


class Interrupted:
    """What an interrupted command left: status, time to exit, output and its folder."""

    def __init__(self, status: int, exit_s: float, out: str, err: str, folder: Path, left: list[int]) -> None:
        self.status, self.exit_s, self.out, self.err, self.folder, self.left = status, exit_s, out, err, folder, left

    @property
    def record(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.folder / SWEEP_JSON).read_text())
        return document


def _rows_on_disk(csv_path: Path) -> int:
    try:
        return max(0, csv_path.read_text().count("\n") - 1)
    except OSError:
        return 0


def interrupt(
    module: str, argv: Sequence[str], csv_name: str, runs: Path, signum: int, *,
    group: bool = False, workers: int = 2,
) -> Interrupted:
    """Start ``python -m module argv``; once a row is written and `workers` workers run, send `signum`."""
    runs.mkdir()
    out_path, err_path = runs.parent / "stdout.txt", runs.parent / "stderr.txt"
    with out_path.open("w") as out_file, err_path.open("w") as err_file:  # files: a stray worker cannot hold them
        process = subprocess.Popen(
            [sys.executable, "-m", module, *argv, "--runs-dir", str(runs), "--quiet"],
            cwd=REPO, stdout=out_file, stderr=err_file, text=True,
            # A background parent may have SIGINT ignored; the command must see it as a terminal user's would.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), start_new_session=group,
        )
    watch = Descendants(process.pid)
    try:
        deadline = time.monotonic() + START_WITHIN_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the sweep ended before the signal: {err_path.read_text()}")
            started = [p for p in runs.glob(f"*/{csv_name}") if _rows_on_disk(p) >= 1]
            if started and len(watch.snapshot()) >= workers:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the sweep wrote no row in time")
        sent = time.monotonic()
        if group:  # a Ctrl-C typed in a terminal reaches the whole foreground process group
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        process.wait(timeout=60)
        exit_s = time.monotonic() - sent
        watch.stop()
        time.sleep(0.05)  # a process killed as its parent exits may need a moment to be reaped
        left = watch.left_behind()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        watch.stop()
        watch.kill_all()
    out, err = out_path.read_text(), err_path.read_text()
    (folder,) = runs.iterdir()
    return Interrupted(process.returncode, exit_s, out, err, folder, left)


def _unfinished_on_stdout(out: str) -> list[dict[str, str]]:
    """The configurations the ``unfinished:`` line of stdout names, as text."""
    (line,) = [x for x in out.splitlines() if x.startswith("unfinished: ")]
    return [dict(cell.split("=") for cell in item.split()) for item in line.removeprefix("unfinished: ").split("; ")]


def _as_text(configs: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in c.items()} for c in configs]


def check_common(
    result: Interrupted, signum: int, prog: str, what: str, total: int, csv_name: str
) -> list[dict[str, str]]:
    """Status, time, processes, and CSV / sweep.json / stdout / stderr agreeing; returns the CSV rows."""
    assert result.status == 128 + signum, result.err
    assert result.exit_s < EXIT_WITHIN_S, f"exited {result.exit_s:.2f} s after the signal"
    assert result.left == [], f"processes left running: {result.left}"
    rows = read_csv_rows(result.folder / csv_name)
    assert rows, "the row seen before the signal was lost"
    record = result.record
    missing = record["missing"]
    assert isinstance(missing, list) and all(isinstance(m, dict) for m in missing)
    assert record["finished"] == len(rows) and len(rows) + len(missing) == total
    assert record["interrupted_by"] == SIGNAL_NAMES[signum]
    keys = list(missing[0]) if missing else []
    finished = [{k: r[k] for k in keys} for r in rows]
    assert not [m for m in _as_text(missing) if m in finished], "a configuration is both finished and missing"
    assert _unfinished_on_stdout(result.out) == _as_text(missing)
    assert f"{prog}: interrupted: {len(rows)} of {total} {what} finished and kept in" in result.err
    assert f"; {len(missing)} missing" in result.err
    assert f"by {SIGNAL_NAMES[signum]}" in result.err
    assert all(None not in r.values() and "" not in r.values() for r in rows), "a row was cut"
    return rows


# --------------------------------------------------------------------------- the grid sweep


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_grid_sweep_on_two_workers_stops_at_once_and_keeps_the_finished_rows(tmp_path: Path, signum: int) -> None:
    argv = [*GRID, "--steps", "2000000", "--jobs", "2"]  # about 0.5 s per configuration here, 8 s in all
    result = interrupt("scripts.sweep_m1_grid", argv, GRID_CSV, tmp_path / "runs", signum)
    rows = check_common(result, signum, "sweep_m1_grid", "configurations", 32, GRID_CSV)
    keys = [(int(r["K"]), float(r["tau"]), int(r["seed"])) for r in rows]
    order = [(k, t, s) for k in (8, 16, 32, 64) for t in (0.9, 1.0) for s in (7, 11, 13, 17)]
    assert keys == [p for p in order if p in keys], "the rows are not in configuration order"
    assert len(rows) < 32


@pytest.mark.parametrize("attempt", range(2))  # it failed 1 to 2 times in 3 before
def test_grid_sweep_stops_on_sigterm_to_its_process_group(tmp_path: Path, attempt: int) -> None:
    """``timeout -s TERM``: the workers get SIGTERM too, often before the parent; a stop all the same, not a failure."""
    argv = [*GRID, "--steps", "2000000", "--jobs", "2"]
    result = interrupt("scripts.sweep_m1_grid", argv, GRID_CSV, tmp_path / "runs", signal.SIGTERM, group=True)
    assert "a worker process ended" not in result.err
    rows = check_common(result, signal.SIGTERM, "sweep_m1_grid", "configurations", 32, GRID_CSV)
    assert len(rows) < 32


def test_gamma_sweep_keeps_the_finished_rows(tmp_path: Path) -> None:
    """``--gammas``: rows written as they finish, as in the other sweeps (it lost all of them before)."""
    argv = ["--Ks", "8", "16", "--taus", "1.0", "--seeds", "7", "11", "--gammas", "1", "2", "4", "8",
            "--steps", "60000", "--jobs", "2"]
    result = interrupt("scripts.sweep_m1_grid", argv, GAMMA_CSV, tmp_path / "runs", signal.SIGINT)
    rows = check_common(result, signal.SIGINT, "sweep_m1_grid", "configurations", 16, GAMMA_CSV)
    assert len(rows) < 16


def test_grid_sweep_in_this_process_exits_143_on_sigterm(tmp_path: Path) -> None:
    argv = [*GRID, "--steps", "2000000", "--jobs", "1"]
    result = interrupt("scripts.sweep_m1_grid", argv, GRID_CSV, tmp_path / "runs", signal.SIGTERM, workers=0)
    check_common(result, signal.SIGTERM, "sweep_m1_grid", "configurations", 32, GRID_CSV)


def test_grid_sweep_on_a_dask_cluster_cancels_and_keeps_the_finished_rows(tmp_path: Path) -> None:
    distributed = pytest.importorskip(
        "distributed", reason="Dask distributed not installed (pip install 'thermospec[dask]')"
    )
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, host="127.0.0.1", protocol="tcp",
        dashboard_address=None,
    ) as cluster:
        argv = [*GRID, "--steps", "1000000", "--scheduler", cluster.scheduler_address]
        result = interrupt("scripts.sweep_m1_grid", argv, GRID_CSV, tmp_path / "runs", signal.SIGINT, workers=0)
    check_common(result, signal.SIGINT, "sweep_m1_grid", "configurations", 32, GRID_CSV)


# --------------------------------------------------------------------------- the seed sweep


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_seed_folders(result: Interrupted, rows: list[dict[str, str]], steps: int, signum: int) -> None:
    """Finished seeds: a complete run giving the row.  Unfinished: no folder, or one marked unfinished."""
    finished = {int(r["seed"]): r for r in rows}
    for seed in map(int, SEEDS):
        folder = result.folder / f"seed_{seed}"
        summary_path = folder / "summary.json"
        if seed in finished:
            summary = json.loads(summary_path.read_text())
            assert summary["interrupted"] is False and summary["steps"] == steps
            assert _sha256(folder / "m1_metrics.jsonl") == summary["metrics_sha256"]
            row = finished[seed]
            assert {k: float(v) for k, v in row.items()} == {k: float(v) for k, v in seed_row(summary).items()}
        elif summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            assert summary["interrupted"] is True, f"seed {seed} looks finished but is listed as missing"
            assert summary["interrupted_by"] == SIGNAL_NAMES[signum]
            assert summary["steps"] < steps
        else:
            assert not folder.exists() or (folder / "INCOMPLETE").is_file(), f"seed {seed}: an unmarked folder"


@pytest.mark.parametrize(
    ("signum", "group"), [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c-to-the-group", "SIGTERM"]
)
def test_seed_sweep_on_two_workers_keeps_every_finished_seed_and_marks_the_others(
    tmp_path: Path, signum: int, group: bool
) -> None:
    steps = 200_000  # about half a second per seed here
    argv = ["--steps", str(steps), "--seeds", *SEEDS, "--jobs", "2"]
    result = interrupt("scripts.sweep_m1", argv, SEEDS_CSV, tmp_path / "runs", signum, group=group)
    rows = check_common(result, signum, "sweep_m1", "seeds", len(SEEDS), SEEDS_CSV)
    check_seed_folders(result, rows, steps, signum)
    started = sorted(p.name for p in result.folder.glob("seed_*"))
    assert len(started) < len(SEEDS), "seeds kept starting after the signal"


# --------------------------------------------------------------------------- the runner, in this process


def _slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _new_children(before: set[int]) -> set[int]:
    return set(_children(os.getpid())) - before


def test_a_pool_whose_results_are_no_longer_read_stops_its_workers_at_once() -> None:
    """The caller stops reading after one result: the busy workers are stopped, none is left."""
    before = set(_children(os.getpid()))
    with open_runner(2) as runner:
        results = runner.map_unordered(_slow, [0.0, 30.0, 30.0])
        assert next(results) == (0, 0.0)
        workers = _new_children(before)
        assert workers
        started = time.monotonic()
        results.close()
    assert time.monotonic() - started < EXIT_WITHIN_S
    assert not _new_children(before) & workers


def test_a_signal_to_a_pool_ends_it_at_once_with_an_interruption() -> None:
    """SIGINT while two workers sleep 30 s: the results end within seconds with SweepInterrupted, no worker left."""
    before = set(_children(os.getpid()))
    with open_runner(2) as runner:
        results = runner.map_unordered(_slow, [0.0, 30.0, 30.0, 30.0])
        assert next(results) == (0, 0.0)
        workers = _new_children(before)
        started = time.monotonic()
        with pytest.raises(BaseException) as raised:
            os.kill(os.getpid(), signal.SIGINT)
            next(results)
    assert time.monotonic() - started < EXIT_WITHIN_S
    assert type(raised.value).__name__ == "SweepInterrupted", repr(raised.value)
    assert getattr(raised.value, "signum", None) == signal.SIGINT
    assert not _new_children(before) & workers


# --------------------------------------------------------------------------- the drafts sweep (issue 18 item 17)


def test_drafts_sweep_stops_on_sigterm_and_lists_what_is_missing(tmp_path: Path) -> None:
    """SIGTERM killed it silently, with no ``sweep.json``; now: 143, the finished rows, the missing points named."""
    argv = ["--vocab", "64", "--Ks", "8", "16", "--Ns", "1", "2", "4", "--steps", "20000", "--seed", "5"]
    result = interrupt("scripts.sweep_drafts", argv, "m1_drafts_sweep.csv", tmp_path / "runs", signal.SIGTERM,
                       workers=0)
    assert result.status == 143, result.err
    assert result.exit_s < EXIT_WITHIN_S, f"exited {result.exit_s:.2f} s after the signal"
    rows = read_csv_rows(result.folder / "m1_drafts_sweep.csv")
    record = result.record
    assert record["kind"] == "drafts" and record["interrupted_by"] == "SIGTERM"
    assert record["config"]["seed"] == 5 and record["config"]["corpus"] is None
    assert record["finished"] == len(rows) >= 1 and len(rows) + len(record["missing"]) == 2 * 3 * 3
    done = [{"K": int(r["K"]), "N": int(r["N"]), "verifier": r["verifier"]} for r in rows]
    assert not [m for m in record["missing"] if m in done]
    assert result.err.count("\n") == 1 and f"{len(record['missing'])} missing" in result.err


def test_drafts_sweep_writes_its_sweep_json(tmp_path: Path) -> None:
    from thermospec.cli.drafts_sweep import main

    assert main(["--vocab", "32", "--Ks", "4", "--Ns", "1", "2", "--verifiers", "recursive", "--steps", "500",
                 "--seed", "3", "--quiet", "--runs-dir", str(tmp_path)]) == 0
    (folder,) = tmp_path.iterdir()
    record = json.loads((folder / SWEEP_JSON).read_text())
    assert record["config"]["seed"] == 3 and record["config"]["vocab"] == 32
    assert record["finished"] == 2 and record["missing"] == [] and record["interrupted_by"] is None
