"""The notebook API: docs/api.md's session runs as written, and the API writes what the CLI writes."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

import thermospec
from tests.conftest import REPO
from thermospec.cli.m1 import main

DOC = REPO / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_docs_api_session_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyarrow")
    blocks = python_blocks(DOC.read_text())
    assert blocks, "docs/api.md has no python block"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {"__name__": "docs_api"})
    assert len(list((tmp_path / "runs").iterdir())) == 5  # 3 runs, 2 sweeps: the bad-input call wrote nothing


def test_api_run_writes_the_cli_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = thermospec.run(vocab=32, K=4, steps=3000, seed=11, runs_dir=tmp_path / "api")
    assert main(["run", "--vocab", "32", "--K", "4", "--steps", "3000", "--seed", "11", "--quiet",
                 "--runs-dir", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    (cli_dir,) = (tmp_path / "cli").iterdir()
    api_bytes = (result.run_dir / "m1_metrics.jsonl").read_bytes()
    assert api_bytes == (cli_dir / "m1_metrics.jsonl").read_bytes()
    assert result.summary.metrics_sha256 == hashlib.sha256(api_bytes).hexdigest()
    assert thermospec.Summary.read(cli_dir).accept_rate == result.summary.accept_rate


def test_api_refuses_bad_input_before_writing(tmp_path: Path) -> None:
    with pytest.raises(thermospec.api.ConfigError, match="--chains"):
        thermospec.run(vocab=32, gamma=2, chains=2, runs_dir=tmp_path)
    with pytest.raises(thermospec.api.ConfigError, match="--telemetry"):
        thermospec.run(vocab=32, telemetry="csv", runs_dir=tmp_path)
    assert not os.listdir(tmp_path)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        thermospec.no_such_name  # noqa: B018
