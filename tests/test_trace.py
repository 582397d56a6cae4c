"""Trace targets: exact float64 rows from float16/float32 files, refusals, bounded memory, ψ at LLM vocabularies."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts import make_trace
from thermospec.core.payload import craft_payload, craft_payload_from_support, decode_payload, encode_payload
from thermospec.core.statistics import pooled_chi2
from thermospec.targets.trace import PositionTarget, TraceError, TraceTarget, TraceWriter, load_trace, softmax64


def direct_softmax(row: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    """SPEC §8 written out: exp(x - max x) / sum, in float64."""
    x = np.asarray(row).astype(np.float64)
    e = np.exp(x - np.max(x))
    return np.asarray(e / np.sum(e), dtype=np.float64)


def logits(T: int, V: int, seed: int = 0, scale: float = 3.0) -> np.ndarray[Any, np.dtype[np.float32]]:
    return (scale * np.random.default_rng(seed).standard_normal((T, V))).astype(np.float32)


@pytest.mark.parametrize("kind", ["npy-float32", "npy-float16", "npz-writer", "npz-numpy"])
def test_rows_are_the_float64_softmax_of_the_stored_rows(tmp_path: Path, kind: str) -> None:
    x = logits(6, 40)
    x[2, :5] = -np.inf  # p = 0 there
    x[3, :7] = x[3].max() - 720.0  # close to float64's underflow: counted exactly
    stored = x.astype(np.float16 if kind == "npy-float16" else np.float32)
    path = tmp_path / ("t.npy" if kind.startswith("npy") else "t.npz")
    if kind.startswith("npy"):
        np.save(path, stored)
    elif kind == "npz-numpy":
        np.savez(path, logprobs=stored, tokens=np.arange(6) % 40)
    else:
        with TraceWriter(path, 6, 40, "float32") as writer:
            writer.write(stored[:4])
            writer.write(stored[4:])
            writer.finish(tokens=np.arange(6), vocabulary=[f"w{i}" for i in range(40)], meta={"model": "m"})
    target: PositionTarget = load_trace(path)
    assert (target.positions, target.V, target.rows_stored, target.source) == (6, 40, False, "trace")
    for t in range(6):
        expected = direct_softmax(stored[t])
        np.testing.assert_array_equal(target.row(t), expected)
        tokens, probs = target.support(t)
        np.testing.assert_array_equal(tokens, np.flatnonzero(expected))
        np.testing.assert_array_equal(probs, expected[tokens])
    assert load_trace(path).support_sizes.tolist() == [int(np.count_nonzero(direct_softmax(r))) for r in stored]
    assert target.widest_support() == 40
    assert load_trace(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    if kind == "npz-writer":
        trace = load_trace(path)
        assert trace.tokens is not None and trace.tokens.tolist() == list(range(6))
        assert trace.vocabulary == tuple(f"w{i}" for i in range(40)) and trace.metadata == {"model": "m"}


def test_vocabulary_of_131072_tokens_rows_exact_and_psi_uses_uint32_ids(tmp_path: Path) -> None:
    V = 131_072
    x = logits(4, V, seed=1, scale=4.0).astype(np.float16)
    x[1, ::3] = -np.inf
    x[2, 1000:1010] = x[2].max()  # ties at the top
    path = tmp_path / "wide.npy"
    np.save(path, x)
    trace = load_trace(path)
    assert trace.V == V and trace.dtype == "float16"
    for t in range(4):
        p = trace.row(t)
        np.testing.assert_array_equal(p, direct_softmax(x[t]))
        assert p.dtype == np.float64 and abs(p.sum() - 1.0) < 1e-12
    assert trace.support_sizes.tolist() == [V, V - (V + 2) // 3, V, V]
    for K, size in ((64, 348), (128, 668)):
        for t in range(4):
            data = encode_payload(craft_payload(trace.row(t), K, 1.0))
            assert len(data) == size and data[5] == 1  # flags: uint32 ids
            assert decode_payload(data).K == K
            fast = craft_payload_from_support(*trace.top_support(t, K), V, K, 1.0)  # O(V), no full sort
            assert encode_payload(fast) == data


def test_chi2_passes_draws_from_the_row_and_fails_a_wrong_row(tmp_path: Path) -> None:
    path = tmp_path / "z.npy"
    assert make_trace.main(["--positions", "3", "--vocab", "500", "--exponent", "1.1", "--seed", "3",
                            "--out", str(path), "--quiet"]) == 0
    trace = load_trace(path)
    rng = np.random.default_rng(2024)
    n = 40_000
    p = trace.row(1)
    def counts(q: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.bincount(rng.choice(trace.V, size=n, p=q), minlength=trace.V).astype(np.float64)

    right = counts(p)
    assert pooled_chi2(right, n * p).p_value > 0.01
    perturbed = p.copy()
    top = int(np.argmax(p))
    perturbed[top] -= 0.04  # 4% of the mass moved from the top token to the uniform
    perturbed += 0.04 / trace.V
    wrong = counts(perturbed / perturbed.sum())
    assert pooled_chi2(wrong, n * p).p_value < 1e-6
    other = counts(trace.row(2))  # the next position's row
    assert pooled_chi2(other, n * p).p_value < 1e-6


class _Unpickled:
    """Unpickling this creates a folder: the refusal test checks that it never exists."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _npy(array: Any) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "bad.npy"
        np.save(path, array, allow_pickle=True)
        return path
    return build


def _npz(compressed: bool = False, **arrays: Any) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "bad.npz"
        (np.savez_compressed if compressed else np.savez)(path, **arrays)
        return path
    return build


def _raw(data: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "bad.npy"
        path.write_bytes(data)
        return path
    return build


def _truncated(folder: Path) -> Path:
    path = folder / "bad.npy"
    np.save(path, logits(4, 8))
    path.write_bytes(path.read_bytes()[:-5])
    return path


GOOD = logits(4, 8)
NAN_ROW = GOOD.copy()
NAN_ROW[2, 3] = np.nan
INF_ROW = GOOD.copy()
INF_ROW[1, 0] = np.inf
EMPTY_ROW = GOOD.copy()
EMPTY_ROW[3] = -np.inf
REFUSALS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "nan": (_npy(NAN_ROW), "row 2 holds NaN"),
    "+inf": (_npy(INF_ROW), "row 1 holds +inf"),
    "all -inf": (_npy(EMPTY_ROW), "row 3 holds only -inf"),
    "rank 1": (_npy(GOOD[0]), "2-D"),
    "rank 3": (_npy(GOOD[None]), "2-D"),
    "float64": (_npy(GOOD.astype(np.float64)), "float16 or float32"),
    "int": (_npy(np.zeros((4, 8), dtype=np.int32)), "float16 or float32"),
    "V < 2": (_npy(GOOD[:, :1]), "V = 1"),
    "T < 1": (_npy(GOOD[:0]), "no positions"),
    "fortran": (_npy(np.asfortranarray(GOOD)), "Fortran"),
    "truncated": (_truncated, "truncated"),
    "not numpy": (_raw(b"hello, world\n"), "neither a .npy"),
    "compressed": (_npz(compressed=True, logprobs=GOOD), "compressed"),
    "no logprobs": (_npz(rows=GOOD), "no 'logprobs'"),
    "tokens shape": (_npz(logprobs=GOOD, tokens=np.zeros(3, dtype=np.int64)), "'tokens' must be (4,)"),
    "tokens range": (_npz(logprobs=GOOD, tokens=np.array([0, 1, 8, 2])), "'tokens' must lie in [0, 8)"),
    "tokens float": (_npz(logprobs=GOOD, tokens=np.zeros(4)), "'tokens' must be (4,) integers"),
    "vocab length": (_npz(logprobs=GOOD, vocab=np.array(["a", "b"])), "'vocab' must be (8,) strings"),
    "meta": (_npz(logprobs=GOOD, meta=np.array("[1, 2]")), "'meta' must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_traces_are_refused_with_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    build, reason = REFUSALS[case]
    path = build(tmp_path)
    with pytest.raises(TraceError) as refused:
        load_trace(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message, message


@pytest.mark.parametrize("where", ["npy", "npz tokens"])
def test_object_arrays_are_refused_without_unpickling(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "unpickled"
    evil = np.array([_Unpickled(marker)] * 8, dtype=object)
    if where == "npy":
        path = tmp_path / "evil.npy"
        np.save(path, evil.reshape(2, 4), allow_pickle=True)
    else:
        path = tmp_path / "evil.npz"
        np.savez(path, logprobs=GOOD, tokens=evil[:4])
    with pytest.raises(TraceError, match="Python objects"):
        load_trace(path)
    assert not marker.exists()


def test_missing_file_and_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file"):
        load_trace(tmp_path / "none.npy")
    with pytest.raises(TraceError, match="is a folder"):
        load_trace(tmp_path)


def test_the_first_bad_row_is_named_whatever_chunk_it_is_in(tmp_path: Path) -> None:
    x = logits(50, 64).astype(np.float16)
    x[37, 5] = np.nan
    x[45, 0] = np.inf
    np.save(tmp_path / "t.npy", x)
    with pytest.raises(TraceError, match="row 37 holds NaN"):
        load_trace(tmp_path / "t.npy", scan_chunk_bytes=3 * 64 * 2)  # 3 rows a chunk


def test_row_cache_honours_its_byte_bound_and_rows_are_read_only(tmp_path: Path) -> None:
    V = 1000
    np.save(tmp_path / "t.npy", logits(20, V))
    trace = load_trace(tmp_path / "t.npy", row_cache_bytes=3 * 8 * V + 7)
    assert trace.row_capacity == 3
    for t in range(20):
        trace.row(t)
    assert trace.cached_rows() == 3
    with pytest.raises(ValueError, match="read-only"):
        trace.row(0)[0] = 1.0
    with pytest.raises(IndexError):
        trace.row(20)
    np.testing.assert_allclose(trace.expected_counts(2 * 20 + 3),
                               2 * sum(trace.row(t) for t in range(20)) + sum(trace.row(t) for t in range(3)))


def test_load_scans_in_bounded_memory_and_maps_rows(tmp_path: Path) -> None:
    T, V = 64, 65_536  # 8 MiB of float16: as float64 it would be 32 MiB
    path = tmp_path / "big.npy"
    with TraceWriter(path, T, V, "float16") as writer:
        for t in range(0, T, 8):
            writer.write(logits(8, V, seed=t))
        writer.finish()
    tracemalloc.start()
    try:
        trace = load_trace(path, scan_chunk_bytes=1 << 20, row_cache_bytes=2 * 10 * V)  # p and a float16 row's codes
        for t in range(T):
            trace.row(t)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert not isinstance(trace.reader.rows(0, 1), np.memmap) and trace.cached_rows() == 2


def test_writer_removes_its_part_file_on_error_and_checks_counts(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    with pytest.raises(RuntimeError), TraceWriter(path, 3, 5) as writer:
        writer.write(np.zeros((2, 5)))
        raise RuntimeError("interrupted")
    assert not path.exists() and not list(tmp_path.iterdir())
    with TraceWriter(path, 2, 5) as writer:
        with pytest.raises(ValueError, match="shape"):
            writer.write(np.zeros((3, 5)))
        writer.write(np.zeros((1, 5)))
        with pytest.raises(ValueError, match="1 written, 2 announced"):
            writer.finish()
        writer.write(np.zeros(5))
        writer.finish()
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("logprobs.npy").compress_type == zipfile.ZIP_STORED
    with pytest.raises(ValueError, match=r"write \.npz"), TraceWriter(tmp_path / "t.npy", 1, 5) as writer:
        writer.write(np.zeros(5))
        writer.finish(tokens=[0])


def test_make_trace_is_deterministic_zipf_and_a_prefix(tmp_path: Path) -> None:
    def make(name: str, *extra: str) -> TraceTarget:
        argv = ["--vocab", "300", "--exponent", "1.2", "--out", str(tmp_path / name), "--quiet", *extra]
        assert make_trace.main(argv) == 0
        return load_trace(tmp_path / name)

    a = make("a.npz", "--positions", "8", "--seed", "5", "--tokens")
    b = make("b.npz", "--positions", "8", "--seed", "5", "--tokens")
    c = make("c.npz", "--positions", "8", "--seed", "6", "--tokens")
    short = make("d.npy", "--positions", "3", "--seed", "5")
    assert a.sha256 == b.sha256 != c.sha256
    assert a.tokens is not None and a.tokens.min() >= 0 and a.tokens.max() < 300
    for t in range(3):
        np.testing.assert_array_equal(short.row(t), a.row(t))
    exact = make("e.npy", "--positions", "2", "--seed", "1", "--jitter", "0", "--dtype", "float32")
    ranks = np.arange(1, 301)
    zipf = ranks ** -1.2 / np.sum(ranks ** -1.2)
    for t in range(2):
        np.testing.assert_allclose(np.sort(exact.row(t))[::-1], zipf, rtol=1e-5)


@pytest.mark.parametrize(("argv", "reason"), [
    (["--positions", "2", "--vocab", "1", "--out", "x.npy"], "--vocab"),
    (["--positions", "0", "--vocab", "5", "--out", "x.npy"], "--positions"),
    (["--positions", "2", "--vocab", "5", "--exponent", "-1", "--out", "x.npy"], "--exponent"),
    (["--positions", "2", "--vocab", "5", "--out", "x.txt"], ".npy or .npz"),
    (["--positions", "2", "--vocab", "5", "--out", "x.npy", "--tokens"], "--tokens"),
    (["--positions", "2", "--vocab", "five", "--out", "x.npy"], "invalid int"),
])
def test_make_trace_errors_are_one_line(
    argv: list[str], reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        make_trace.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and reason in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_softmax64_is_exact_and_shift_invariant() -> None:
    x = np.array([1.0, 2.0, -np.inf, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(softmax64(x), direct_softmax(x))
    assert softmax64(x)[2] == 0.0
    np.testing.assert_allclose(softmax64(x + np.float32(100.0)), softmax64(x), rtol=1e-12)
