"""``thermospec make-trace``: refusals before anything is written, and stops that leave nothing behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thermospec.cli import make_trace


def test_a_trace_larger_than_the_free_space_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "huge.npy"
    with pytest.raises(SystemExit) as stop:  # was a MemoryError traceback (an 8 TB array of tokens)
        make_trace.main(["--positions", "1000000000000", "--vocab", "1000", "--out", str(out)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "GiB free in" in err, err
    assert list(tmp_path.iterdir()) == []
    # the control: a trace that fits is written
    assert make_trace.main(["--positions", "2", "--vocab", "1000", "--out", str(out), "--quiet"]) == 0
    assert out.is_file()


@pytest.mark.parametrize(("signum", "status", "says"), [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                         (signal.SIGINT, 130, "interrupted")])
def test_a_signal_mid_write_leaves_no_part_file(tmp_path: Path, signum: int, status: int, says: str) -> None:
    part = tmp_path / "t.npy.part"
    process = subprocess.Popen(
        [sys.executable, "-m", "thermospec", "make-trace", "--positions", "4000", "--vocab", "65536",
         "--out", "t.npy", "--quiet"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (part.is_file() and part.stat().st_size > 0) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        assert part.is_file(), "the part file never appeared"
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == status and says in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # SIGTERM left a .part of hundreds of MB
