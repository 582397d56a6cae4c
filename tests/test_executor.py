"""One executor, one summary envelope: every mode's summary carries the same fields."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from thermospec.cli.m1 import main

ENVELOPE = ("elapsed_s", "tokens_per_s", "config", "target", "telemetry", "thermospec_version", "versions",
            "interrupted", "interrupted_by", "metrics_sha256", "steps")
MODES = {
    "chain": [],
    "chain-none": ["--telemetry", "none"],
    "chains": ["--chains", "3"],
    "gamma": ["--gamma", "3"],
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_writes_the_same_envelope(mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    assert main(["run", "--vocab", "32", "--steps", "2000", "--quiet", "--runs-dir", str(runs), *MODES[mode]]) == 0
    capsys.readouterr()
    (run_dir,) = runs.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    missing = [key for key in ENVELOPE if key not in summary]
    assert not missing, f"{mode}: summary lacks {missing}"
    assert summary["interrupted"] is False and summary["interrupted_by"] is None
    assert summary["config"]["steps"] == 2000 and summary["target"]["V"] == 32
    assert summary["versions"]["thermospec"] == summary["thermospec_version"]
    # The digest is of the records written: present wherever one file holds them all.
    if mode in ("chain", "gamma"):
        (records,) = [p for p in run_dir.iterdir() if p.suffix == ".jsonl"]
        assert summary["metrics_sha256"] == hashlib.sha256(records.read_bytes()).hexdigest()
    else:
        assert summary["metrics_sha256"] is None
