"""Tests of the progress bar: drawn on a terminal only, never with --quiet, never on stdout."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from thermospec.cli.m1 import main as run_main
from thermospec.runs.progress import progress_bar, shows_progress


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        if self.closed:  # as a real closed file does
            raise ValueError("I/O operation on closed file")
        return True


def test_a_bar_is_drawn_on_a_terminal() -> None:
    stream = _Terminal()
    with progress_bar(3, "grid", "config", stream=stream, min_interval_s=0) as bar:
        for _ in range(3):
            bar.update(1)
    text = stream.getvalue()
    assert "grid" in text and "3/3" in text


@pytest.mark.parametrize(("stream", "quiet"), [(io.StringIO(), False), (_Terminal(), True)])
def test_no_bar_off_a_terminal_or_when_quiet(stream: io.StringIO, quiet: bool) -> None:
    with progress_bar(3, "grid", "config", quiet=quiet, stream=stream) as bar:
        bar.update(3)
        bar.set_postfix_str("done")
    assert stream.getvalue() == ""


def test_shows_progress_copes_with_closed_streams() -> None:
    closed = _Terminal()
    closed.close()
    assert shows_progress(False, closed) is False
    assert shows_progress(False, _Terminal()) is True
    assert shows_progress(True, _Terminal()) is False


def test_the_bar_is_closed_on_ctrl_c() -> None:
    stream = _Terminal()
    with pytest.raises(KeyboardInterrupt), progress_bar(10, "run", "step", stream=stream, min_interval_s=0) as bar:
        bar.update(4)
        raise KeyboardInterrupt
    assert "4.00/10.0" in stream.getvalue()


def test_run_draws_its_bar_on_stderr_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert run_main(["run", "--steps", "2000", "--K", "8", "--runs-dir", str(tmp_path)]) == 0
    assert "run:" in terminal.getvalue() and "/2.00k" in terminal.getvalue()
    assert "\r" not in capsys.readouterr().out
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert run_main(["run", "--steps", "2000", "--K", "8", "--runs-dir", str(tmp_path), "--quiet"]) == 0
    assert "run:" not in quiet.getvalue()
