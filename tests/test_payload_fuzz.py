"""Fuzzing the ψ decoder: any bytes give a valid payload or a `PayloadError`, nothing else.

The property checked on every input: `decode_payload` either raises
`PayloadError` (never another exception) or returns a payload that re-encodes to
exactly the same bytes and programs a `SimTSU` whose F(ψ) is a finite
probability vector.  Inputs: arbitrary bytes, valid payloads mutated (with and
without the CRC repaired, so the mutations reach the field checks behind the
checksum), and headers built field by field.  The coverage-guided fuzzer
(atheris, extra ``fuzz``) runs the same property in ``scripts/fuzz_payload.py``;
a short run of it is part of this file when atheris is installed.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts.fuzz_payload import one_input
from thermospec import craft_payload, decode_payload, encode_payload

REPO = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def check_decoder_property(data: bytes) -> None:
    """The fuzzing oracle, shared with the atheris harness: raises AssertionError on a violation."""
    one_input(data)


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def seeds() -> list[bytes]:
    """A few valid payloads to mutate: narrow and wide ids, K = 1, K = V, ε = 0."""
    rng = np.random.default_rng(0)
    out = []
    for V, K, eps in [(2, 1, "auto"), (16, 16, "auto"), (256, 64, "auto"), (300, 5, 0.0), (70_000, 3, "auto")]:
        p = rng.dirichlet(np.full(V, 0.3))
        out.append(encode_payload(craft_payload(p, K, 1.0, eps)))  # type: ignore[arg-type]
    return out


SEEDS = seeds()


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    check_decoder_property(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=8))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[at]
    if draw(st.booleans()) and len(data) > 4:
        return with_crc(bytes(data[:-4]))  # repair the checksum: the mutation reaches the field checks
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_valid_payloads(data: bytes) -> None:
    check_decoder_property(data)


special_floats = st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 1e-45, 3.4e38, float("inf"), float("-inf"), float("nan"), 1e-8, 0.5, 0.99]
)


@st.composite
def built(draw: st.DrawFn) -> bytes:
    V = draw(st.sampled_from([0, 1, 2, 3, 17, 256, 65536, 65537, 2**32 - 1]))
    K = draw(st.integers(0, 40))
    wide = draw(st.booleans())
    version = draw(st.sampled_from([1, 1, 1, 0, 2]))
    flags = int(wide) | (draw(st.sampled_from([0, 0, 0, 2, 128])))
    tau, eps, delta = (draw(st.one_of(special_floats, st.floats(width=32))) for _ in range(3))
    header = struct.pack("<4sBBHIfff", b"PSI1", version, flags, K, V, tau, eps, delta)
    id_type = "<u4" if wide else "<u2"
    ids = np.array(draw(st.lists(st.integers(0, 70_000), min_size=K, max_size=K)), dtype=np.int64)
    ids = np.clip(ids, 0, 2**32 - 1 if wide else 2**16 - 1).astype(id_type)
    codes = np.sort(np.array(draw(st.lists(st.integers(0, 255), min_size=K, max_size=K)), dtype=np.uint8))
    if draw(st.booleans()) and K:
        codes[0] = 0
    return with_crc(header + ids.tobytes() + codes.tobytes())


@FUZZ
@given(built())
def test_headers_built_field_by_field(data: bytes) -> None:
    check_decoder_property(data)


def test_the_oracle_sees_valid_payloads() -> None:
    """The fuzz property is not vacuous: seeds decode, and a repaired single-byte change can still be valid."""
    for data in SEEDS:
        check_decoder_property(data)
        assert encode_payload(decode_payload(data)) == data
    body = bytearray(SEEDS[2][:-4])
    body[-1] = min(255, body[-1] + 1)  # the last code, still non-decreasing: a different valid payload
    changed = with_crc(bytes(body))
    assert decode_payload(changed).codes[-1] == body[-1]


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("atheris") is None, reason="atheris not installed (extra 'fuzz')"
)
def test_atheris_short_run(tmp_path: Path) -> None:
    """A short coverage-guided run (100,000 inputs, fixed seed); a crash exits non-zero with the input saved."""
    temp = tmp_path / "temp"
    temp.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "scripts.fuzz_payload", "-runs=100000", "-seed=1", f"-artifact_prefix={tmp_path}/"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONHASHSEED": "0", "TMPDIR": str(temp)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Done 100000 runs" in result.stderr
    assert not list(temp.iterdir()), "the seed corpus folder was left behind"


def test_fuzz_payload_help_prints_usage_and_does_not_fuzz() -> None:
    result = subprocess.run([sys.executable, "-m", "scripts.fuzz_payload", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "fuzz_payload" in result.stdout and "-runs=" in result.stdout
    assert "INFO:" not in result.stderr and "Done" not in result.stderr
