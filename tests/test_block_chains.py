"""``run --gamma G --chains B``: the pooled summary carries the χ² of every chain's tokens, as M1's pooled summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.make_trace import write_trace
from tests.conftest import run_cli
from thermospec.core.statistics import pooled_chi2
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import prepare_run


def test_pooled_block_summary_has_the_chi2_of_every_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--vocab", "24", "--K", "4", "--gamma", "3", "--steps", "3000", "--quiet", "--chains", "3"]
    status, _, err = run_cli([*base, "--runs-dir", str(tmp_path)], capsys)
    assert status == 0, err
    (folder,) = tmp_path.iterdir()
    pooled = json.loads((folder / "summary.json").read_text())
    counts = np.zeros(24)
    for b in range(3):
        for line in (folder / f"chain_{b:04d}" / "m1_blocks.jsonl").read_text().splitlines():
            counts += np.bincount(json.loads(line)["emitted"], minlength=24)
    pi = prepare_run(RunConfig(vocab=24, K=4, gamma=3, steps=3000)).target.pi
    expected = pooled_chi2(counts, counts.sum() * pi)
    assert pooled["chi2_stat"] == expected.stat and pooled["p_value"] == expected.p_value
    assert pooled["chi2_dof"] == expected.dof and counts.sum() == pooled["tokens_emitted"]
    for key in ("accept_rate", "mean_overlap", "mean_ce_gap"):
        assert pooled[key] is not None


def test_pooled_trace_block_summary_has_the_chi2_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_trace(tmp_path / "t.npz", 12, 40, 1.2, 5, tokens=True, progress=False)
    status, _, err = run_cli(["run", "--trace", str(trace), "--K", "4", "--gamma", "2", "--steps", "1500", "--quiet",
                              "--chains", "2", "--telemetry", "none", "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 0, err
    (folder,) = (tmp_path / "runs").iterdir()
    pooled = json.loads((folder / "summary.json").read_text())
    assert {"chi2_stat", "p_value", "accept_rate", "mean_overlap", "mean_ce_gap"} <= pooled.keys()
