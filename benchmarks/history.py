"""Speed against earlier commits: the guide's grid sweep and ``check`` (8c61bf3), M1's sinks (843c551).

Each earlier commit is checked out from this repository's history into a temporary
folder (``git archive``: the repository's own work tree and worktree list are not
touched) and its extension is built in place with its own ``setup.py``; a commit the
history lacks (a shallow clone, an archive) skips its sections with one line.  Both
sides run as the user runs them, a fresh ``python -m scripts...`` process each time,
with this interpreter and warm bytecode caches (one untimed run of each side first);
the runs alternate (old, new, old, new, ...) and the medians are compared.  Before a
ratio is quoted the two sides' outputs are compared: the grid's CSV rows, the check's
printed lines, the SHA-256 of the runs' telemetry files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GRID_COMMIT = "8c61bf3"
"""Before the redesign: the grid sweep and ``check`` must be no slower than here."""
SINK_COMMIT = "843c551"
"""Before issue 16's one-loop work: M1 with each sink must be no slower than here (rows/s)."""
GRID_ARGS = ("--Ks", "64", "--taus", "1.0", "--seeds", "7", "--jobs", "1")
Row = tuple[str, str, str]


@dataclass(frozen=True)
class Tree:
    """A source tree to run commands from: its folder (``src/`` goes on PYTHONPATH) and a label."""

    root: Path
    label: str


class Checkouts:
    """Earlier commits checked out and built in one temporary folder, each once, removed by `close`."""

    def __init__(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="thermospec-bench-"))
        self._trees: dict[str, Tree | str] = {}
        self.pycache = self._folder / "pycache"

    def tree(self, commit: str) -> Tree | str:
        """The checkout of `commit`, or why there is none (one line)."""
        if commit not in self._trees:
            self._trees[commit] = self._checkout(commit)
        return self._trees[commit]

    def _checkout(self, commit: str) -> Tree | str:
        if shutil.which("git") is None or not (REPO / ".git").exists():
            return f"commit {commit}: no git history here (git or .git missing)"
        found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                               capture_output=True)
        if found.returncode != 0:
            return f"commit {commit} is not in this repository's history"
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                                 capture_output=True, check=True).stdout
        root = self._folder / commit
        root.mkdir()
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse links and paths out of the folder
                tar.extractall(root, filter="data")
            else:
                tar.extractall(root)  # our own history's archive
        built = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=root,
                               capture_output=True)
        label = commit if built.returncode == 0 else f"{commit} (kernel not built: its NumPy fallback)"
        return Tree(root, label)

    def close(self) -> None:
        """Remove every checkout."""
        shutil.rmtree(self._folder, ignore_errors=True)


def _env(tree: Tree, pycache: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree.root / "src"), PYTHONPYCACHEPREFIX=str(pycache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # warm caches on both sides, as an installed package has
    return env


def _timed(tree: Tree, args: list[str], pycache: Path) -> tuple[float, str]:
    """Wall seconds and stdout of ``python ARGS`` run from `tree`."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=tree.root, env=_env(tree, pycache), capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{tree.label}: python {' '.join(args)} exited with {done.returncode}: "
                           f"{done.stderr.strip().splitlines()[-1:]}")
    return seconds, done.stdout


Measure = Callable[[Tree], tuple[float, str]]


def alternated(old: Tree, new: Tree, measure: Measure, repeats: int) -> tuple[list[float], list[float], bool]:
    """`measure` on each side, alternated after one untimed run of each; (old values, new values, same output)."""
    outputs = {measure(old)[1], measure(new)[1]}
    olds: list[float] = []
    news: list[float] = []
    for _ in range(repeats):
        for side, values in ((old, olds), (new, news)):
            value, output = measure(side)
            values.append(value)
            outputs.add(output)
    return olds, news, len(outputs) == 1


def _latest(folder: Path, name: str) -> Path:
    found = sorted(folder.rglob(name))
    if not found:
        raise RuntimeError(f"no {name} under {folder}")
    return found[-1]


def bench_grid(checkouts: Checkouts, steps: int, repeats: int) -> list[Row]:
    """``sweep_m1_grid --steps N --Ks 64 --taus 1.0 --seeds 7 --jobs 1``: wall time of the command, old / new."""
    old = checkouts.tree(GRID_COMMIT)
    if isinstance(old, str):
        return [("grid sweep vs " + GRID_COMMIT, "skipped", old)]

    def measure(tree: Tree) -> tuple[float, str]:
        with tempfile.TemporaryDirectory() as runs:
            seconds, _ = _timed(tree, ["-m", "scripts.sweep_m1_grid", "--steps", str(steps), *GRID_ARGS,
                                       "--runs-dir", runs], checkouts.pycache)
            rows = list(csv.reader(_latest(Path(runs), "m1_sweep.csv").read_text().splitlines()))
        return seconds, json.dumps(rows)

    olds, news, same = alternated(old, Tree(REPO, "this tree"), measure, repeats)
    return _ratio_rows(f"grid sweep, 1 configuration x {steps:,} steps", old, olds, news,
                       f"same CSV rows: {'yes' if same else 'NO'}")


def bench_check(checkouts: Checkouts, repeats: int) -> list[Row]:
    """``run_m1 check`` (the default target): wall time of the command, old / new."""
    old = checkouts.tree(GRID_COMMIT)
    if isinstance(old, str):
        return [("check vs " + GRID_COMMIT, "skipped", old)]

    def measure(tree: Tree) -> tuple[float, str]:
        return _timed(tree, ["-m", "scripts.run_m1", "check"], checkouts.pycache)

    olds, news, same = alternated(old, Tree(REPO, "this tree"), measure, repeats)
    return _ratio_rows("run_m1 check", old, olds, news, f"same printed lines: {'yes' if same else 'NO'}")


def _ratio_rows(name: str, old: Tree, olds: list[float], news: list[float], same: str) -> list[Row]:
    """Two rows: the new side's median seconds and its speed against the old one (old time / new time)."""
    old_s, new_s = statistics.median(olds), statistics.median(news)
    paired = statistics.median(o / n for o, n in zip(olds, news, strict=True))
    return [
        (name, f"{new_s:.2f} s", f"{old.label}: {old_s:.2f} s; {same}"),
        (f"  speed vs {GRID_COMMIT}", f"{old_s / new_s:.2f}x",
         f">= 1 (old / new time, medians of {len(olds)} alternated; paired {paired:.2f}x)"),
    ]


def bench_sinks(checkouts: Checkouts, steps: int, repeats: int) -> list[Row]:
    """The default M1 run with the JSONL and with the Parquet sink: rows/s of its summary, old / new."""
    old = checkouts.tree(SINK_COMMIT)
    if isinstance(old, str):
        return [("M1 sinks vs " + SINK_COMMIT, "skipped", old)]
    rows: list[Row] = []
    for sink in ("jsonl", "parquet"):

        def measure(tree: Tree, fmt: str = sink) -> tuple[float, str]:
            with tempfile.TemporaryDirectory() as runs:
                _timed(tree, ["-m", "scripts.run_m1", "run", "--steps", str(steps), "--telemetry", fmt, "--quiet",
                              "--runs-dir", runs], checkouts.pycache)
                summary = json.loads(_latest(Path(runs), "summary.json").read_text())
                digest = hashlib.sha256(_latest(Path(runs), f"m1_metrics.{fmt}").read_bytes()).hexdigest()
            return float(summary["tokens_per_s"]), digest

        try:
            olds, news, same = alternated(old, Tree(REPO, "this tree"), measure, repeats)
        except RuntimeError as exc:  # no pyarrow: the Parquet sink is refused on both sides
            rows.append((f"M1 run, {sink} sink", "skipped", str(exc)[:80]))
            continue
        old_r, new_r = statistics.median(olds), statistics.median(news)
        paired = statistics.median(n / o for o, n in zip(olds, news, strict=True))
        rows.append((f"M1 run, {sink} sink, {steps:,} steps", f"{new_r / 1e6:.2f} M rows/s",
                     f"{old.label}: {old_r / 1e6:.2f} M rows/s; same bytes: {'yes' if same else 'NO'}"))
        rows.append((f"  rows/s vs {SINK_COMMIT}", f"{new_r / old_r:.2f}x",
                     f">= 1 (summary tokens_per_s, medians of {repeats} alternated; paired {paired:.2f}x)"))
    return rows
