"""What ``run`` prints when a summary leaves a figure null: ``n/a``, never a traceback after the files are written."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.make_trace import write_trace
from tests.conftest import run_cli
from thermospec.runs import keyed_drafts_run


def test_n_drafts_on_a_trace_print_na_for_the_optimum_the_trace_does_not_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyed_drafts_run, "OPTIMUM_MAX_ENTRIES", 0)  # as a wide trace's many positions leave it
    trace = write_trace(tmp_path / "t.npz", 16, 2048, 1.0, 7, tokens=True, progress=False)
    status, out, err = run_cli(["run", "--trace", str(trace), "--K", "16", "--drafts", "2", "--verifier",
                                "recursive", "--steps", "400", "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 0, err
    assert "optimum n/a, bound 0." in out, out
    assert "Traceback" not in err
