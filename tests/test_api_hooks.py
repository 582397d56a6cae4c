"""`run_m1 run|check` are `thermospec.run|check`: the hooks the commands use (replay, notices, the injected fault)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import thermospec
import thermospec.api
from tests.conftest import REPO
from thermospec.cli import m1
from thermospec.experiments import single_runs


def test_the_commands_call_the_api_functions() -> None:
    assert vars(m1)["run"] is thermospec.run is single_runs.run  # the names the commands call
    assert vars(m1)["check"] is thermospec.check is single_runs.check
    assert thermospec.api.RunResult is single_runs.RunResult


def test_run_m1_does_not_import_the_sweeps_or_generate() -> None:
    # thermospec.api imports them (about 50 ms of a ~1 s run): the commands import the run and check it exports
    code = ("import sys, thermospec.cli.m1; print(sorted(m for m in sys.modules if m.startswith('thermospec.') and "
            "('sweep' in m or m.endswith('generate') or m == 'thermospec.api')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_replay_through_the_api(tmp_path: Path) -> None:
    first = thermospec.run(vocab=16, K=4, steps=500, seed=3, runs_dir=tmp_path)
    again = thermospec.run(replay=first.run_dir, runs_dir=tmp_path)
    assert again.replay is not None and again.replay.identical
    assert again.replay.source == first.run_dir / "summary.json"
    assert again.summary.metrics_sha256 == first.summary.metrics_sha256
    assert first.replay is None and first.wall_s is not None and first.wall_s > 0
    with pytest.raises(thermospec.api.ConfigError, match=r"^--replay: takes every option from the summary; drop --K$"):
        thermospec.run(replay=first.run_dir, K=8, runs_dir=tmp_path)
    with pytest.raises(thermospec.api.ConfigError, match=r"^--replay .*nowhere: no such file"):
        thermospec.run(replay=tmp_path / "nowhere", runs_dir=tmp_path)


def test_notices_and_the_injected_fault_reach_the_hooks(tmp_path: Path) -> None:
    notices: list[str] = []
    thermospec.run(vocab=16, K=32, steps=200, runs_dir=tmp_path, notify=notices.append)
    assert notices == ["notice: --K 32 is above the vocabulary size V = 16; using K = 16"]
    announced: list[str] = []
    report = thermospec.check(vocab=16, K=4, check_steps=500, pooled_steps=500, fault="bias:0.2",
                              announce=announced.append)
    assert announced == ["injected fault: bias:0.2 (every context's TSU)"]
    assert report.results


@pytest.mark.parametrize(("runs_dir", "message"), [
    ("", "--runs-dir: must name a folder, got an empty string"),
    ("{file}", "--runs-dir {file}: is a file, not a folder"),
])
def test_run_refuses_a_runs_dir_that_is_no_folder(tmp_path: Path, runs_dir: str, message: str) -> None:
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(thermospec.api.ConfigError) as error:
        thermospec.run(vocab=16, K=4, steps=100, runs_dir=runs_dir.format(file=file))
    assert str(error.value) == message.format(file=file)
    assert os.listdir(tmp_path) == ["a_file"]
