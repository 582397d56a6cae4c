"""Crafted trace files (issue 18, items 3-7 and 20): each is refused in one line, in bounded memory, without hanging.

Zip bombs in the small members, headers whose length field is short, shapes of ``True``
or a negative length, V above the maximum, a ``tokens`` header declaring 128 GiB, a
``meta`` nested 100,000 deep, a FIFO, a row longer than the scan's chunk, and a file
truncated while a run reads it: ``run`` and ``check`` print one line naming the file
and exit 2 (a file truncated mid-run: 1, the run stops as interrupted).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts.make_trace import write_trace
from tests.conftest import REPO, run_cli
from thermospec.targets import trace_file
from thermospec.targets.trace import MAX_VOCAB, TraceError, load_trace
from thermospec.targets.trace_file import META_MAX_BYTES

GOOD = np.zeros((4, 8), dtype=np.float16)


def npy_bytes(array: Any) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def header_only(shape: str, descr: str = "<f2") -> bytes:
    """A .npy 1.0 header with a shape written as given (no data)."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    text += " " * (63 - (10 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


def short_header(data: bytes) -> bytes:
    """The same .npy with its header-length field ending inside the header's dict (before its last 5 characters)."""
    length = int.from_bytes(data[8:10], "little")
    text = data[10:10 + length].rstrip()
    return data[:8] + (len(text) - 5).to_bytes(2, "little") + data[10:]


def npz(path: Path, members: dict[str, bytes], deflated: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            kind = zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED
            zf.writestr(zipfile.ZipInfo(f"{name}.npy"), data, compress_type=kind, compresslevel=1)
    return path


def refused(path: Path, reason: str, **options: Any) -> float:
    """Assert one-line refusal naming the file; the traced peak (MiB) of the attempt."""
    tracemalloc.start()
    try:
        with pytest.raises(TraceError) as caught:
            load_trace(path, **options)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message, message
    return peak


@pytest.mark.parametrize("member", ["tokens", "vocab", "meta"])
def test_a_zip_bomb_member_is_refused_from_its_declared_size(
    tmp_path: Path, member: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace_file, "VOCAB_MAX_BYTES", 2**20)  # the vocab cap as meta's: a 33 MiB bomb is past it
    bomb = header_only(f"({2**22},)", "<i8") + bytes(32 * 2**20)  # inflates to 32 MiB, some KB on disk
    path = npz(tmp_path / "bomb.npz", {"logprobs": npy_bytes(GOOD), member: bomb}, deflated=(member,))
    assert path.stat().st_size < 200_000
    assert refused(path, f"'{member}' declares") < 4


def test_a_member_that_inflates_past_what_it_declares_is_refused_within_its_cap(tmp_path: Path) -> None:
    meta = npy_bytes(np.asarray(json.dumps({"pad": "x" * 1000})))
    path = npz(tmp_path / "liar.npz", {"logprobs": npy_bytes(GOOD), "meta": meta}, deflated=("meta",))
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("meta.npy")
    raw = bytearray(path.read_bytes())  # the entry now declares fewer inflated bytes than it holds
    for at in (info.header_offset + 22, raw.rindex(b"PK\x01\x02") + 24):
        raw[at:at + 4] = (100).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    refused(path, "cannot be read")


@pytest.mark.parametrize(("case", "reason"), [
    ("npy", "the array is not a valid .npy array"),
    ("logprobs", "'logprobs' is not a valid .npy array"),
    ("tokens", "'tokens' is not a valid .npy array"),
])
def test_a_header_length_shorter_than_the_header_is_one_line(tmp_path: Path, case: str, reason: str) -> None:
    if case == "npy":
        path = tmp_path / "t.npy"
        path.write_bytes(short_header(npy_bytes(GOOD)))
    else:
        members = {"logprobs": npy_bytes(GOOD), "tokens": npy_bytes(np.arange(4))}
        members[case] = short_header(members[case])
        path = npz(tmp_path / "t.npz", members)
    refused(path, reason)


@pytest.mark.parametrize(("shape", "reason"), [
    ("(True, 8)", "header shape (True, 8)"),
    ("(-4, 8)", "header shape (-4, 8)"),
    (f"(1, {MAX_VOCAB + 1})", f"at most {MAX_VOCAB:,} tokens"),
    (f"(1, {2**32})", f"at most {MAX_VOCAB:,} tokens"),
])
def test_shapes_of_bools_negative_lengths_and_too_wide_rows_are_refused_at_the_header(
    tmp_path: Path, shape: str, reason: str
) -> None:
    path = tmp_path / "t.npy"
    with open(path, "wb") as f:
        f.write(header_only(shape))
        f.truncate(f.tell() + (2 * (MAX_VOCAB + 1) if "True" not in shape and "-4" not in shape else 64))
    refused(path, reason)


def test_tokens_declaring_128_gib_and_meta_nested_100000_deep_are_refused(tmp_path: Path) -> None:
    path = npz(tmp_path / "big.npz", {"logprobs": npy_bytes(GOOD), "tokens": header_only(f"({2**34},)", "<i8")})
    assert refused(path, "'tokens' must be (4,) integers") < 4
    deep = npy_bytes(np.asarray("[" * 100_000 + "]" * 100_000))
    refused(npz(tmp_path / "deep.npz", {"logprobs": npy_bytes(GOOD), "meta": deep}), "'meta' is nested too deeply")
    wide = npy_bytes(np.asarray(json.dumps({"pad": "x" * META_MAX_BYTES})))
    refused(npz(tmp_path / "wide.npz", {"logprobs": npy_bytes(GOOD), "meta": wide}), "'meta' declares")


def test_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "trace.npy"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_trace(fifo)
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=5)
    if worker.is_alive():  # blocked in open(): release it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=5)
        pytest.fail("load_trace blocked opening a FIFO")
    assert isinstance(outcome[0], TraceError) and "not a regular file" in str(outcome[0]), outcome


@pytest.mark.parametrize("command", ["run", "check"])
def test_run_and_check_refuse_crafted_files_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)
    shapes = tmp_path / "bool.npy"
    shapes.write_bytes(header_only("(True, 8)") + bytes(16))
    short = tmp_path / "short.npy"
    short.write_bytes(short_header(npy_bytes(GOOD)))
    for path in (fifo, shapes, short):
        runs = tmp_path / "runs"
        where = ["--runs-dir", str(runs)] if command == "run" else []
        status, _, err = run_cli([command, "--trace", str(path), "--steps", "100", *where], capsys)
        assert status == 2 and err.count("\n") == 1 and f"--trace {path}: " in err, err
        assert "Traceback" not in err and not runs.exists()


def test_a_row_longer_than_the_scan_chunk_is_scanned_in_bounded_memory(tmp_path: Path) -> None:
    V = 1 << 22  # 8 MiB of float16 in one row
    x = np.zeros((2, V), dtype=np.float16)
    x[0, 5], x[0, 7], x[1, :3] = 4.0, -np.inf, -800.0  # a -inf, and entries past float64's underflow
    np.save(tmp_path / "wide.npy", x)
    tracemalloc.start()
    try:
        trace = load_trace(tmp_path / "wide.npy", scan_chunk_bytes=256 * 1024, row_cache_bytes=8 * V)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak < 4, f"scan peak {peak:.1f} MiB"
    assert trace.support_sizes.tolist() == [V - 1, V - 3]
    x[1, 9] = np.nan
    np.save(tmp_path / "nan.npy", x)
    refused(tmp_path / "nan.npy", "row 1 holds NaN", scan_chunk_bytes=256 * 1024)


def test_a_trace_truncated_after_loading_gives_a_short_read_not_sigbus(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.npy", 40, 1000, 1.1, 2, progress=False)
    script = (
        "import os, sys\n"
        "from thermospec.targets.trace import TraceShrankError, load_trace\n"
        f"trace = load_trace({str(path)!r}, row_cache_bytes=8000)\n"
        "trace.row(0)\n"
        f"os.truncate({str(path)!r}, 4096)\n"
        "try:\n    trace.row(30)\nexcept TraceShrankError as exc:\n    print(exc)\n    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 3 and "shrank while in use" in done.stdout, (done.returncode, done.stderr[-500:])


@pytest.mark.parametrize(("positions", "vocab", "at_read"), [(64, 512, 20), (24, 65_536, 12)])
def test_a_run_whose_trace_shrinks_stops_as_interrupted_with_one_line(
    positions: int, vocab: int, at_read: int, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Narrow rows are held whole once read; wide ones (V = 65,536) are read again when a pass needs them,
    so the summary's checklist and loss split meet the shrunk file too: still one line and a summary."""
    path = write_trace(tmp_path / "t.npz", positions, vocab, 1.1, 3, tokens=True, progress=False)
    reads = {"n": 0}
    real = trace_file.RowReader.rows

    def truncating(self: trace_file.RowReader, start: int, count: int) -> Any:
        reads["n"] += 1
        if reads["n"] == at_read:  # someone truncates the file while the run reads it
            os.truncate(path, 2048)
        return real(self, start, count)

    monkeypatch.setattr(trace_file.RowReader, "rows", truncating)
    runs = tmp_path / "runs"
    status, _, err = run_cli(["run", "--trace", str(path), "--steps", "200000", "--quiet", "--runs-dir", str(runs)],
                             capsys)
    assert status == 1 and err.count("\n") == 1 and f"{path}: shrank while in use" in err, err
    (run_dir,) = runs.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is True and "shrank" in summary["interrupted_by"]
    records = (run_dir / "m1_metrics.jsonl").read_text()
    assert records.count("\n") == summary["steps"] and (not records or records.endswith("\n"))


def test_a_trace_that_shrinks_after_the_steps_still_gets_a_summary_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every step ran, then the file shrank before the summary's statistics read its wide rows again."""
    from thermospec.runs.trace_run import TraceMode

    path = write_trace(tmp_path / "t.npz", 24, 65_536, 1.1, 3, tokens=True, progress=False)
    real = TraceMode.statistics

    def truncated_first(self: TraceMode) -> Any:
        os.truncate(path, 2048)
        return real(self)

    monkeypatch.setattr(TraceMode, "statistics", truncated_first)
    runs = tmp_path / "runs"
    status, _, err = run_cli(["run", "--trace", str(path), "--steps", "500", "--quiet", "--runs-dir", str(runs)],
                             capsys)
    assert status == 1 and err.count("\n") == 1 and f"{path}: shrank while in use" in err, err
    (run_dir,) = runs.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is True and "shrank" in summary["interrupted_by"]
    assert summary["steps"] is None and summary["p_value"] is None
