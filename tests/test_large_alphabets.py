"""Issue 18 item 12: a corpus with many distinct characters is counted sparsely, or refused in one line."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from thermospec.runs.config import RunConfig
from thermospec.runs.targets import load_target
from thermospec.targets.corpus import DENSE_CORPUS_MAX_V, MAX_CORPUS_VOCAB


def alphabet_corpus(path: Path, V: int, length: int, seed: int = 1) -> Path:
    """`length` characters drawn from V distinct code points (each present), from U+20000 on."""
    codes = np.random.default_rng(seed).integers(0x20000, 0x20000 + V, size=length)
    codes[:V] = np.arange(0x20000, 0x20000 + V)
    path.write_text("".join(map(chr, codes.tolist())), encoding="utf-8")
    return path


def test_a_large_alphabet_is_counted_sparsely_with_the_laplace_rows(tmp_path: Path) -> None:
    V = DENSE_CORPUS_MAX_V + 100
    corpus = alphabet_corpus(tmp_path / "wide.txt", V, 3 * V)
    tracemalloc.start()
    try:
        target = load_target(RunConfig(corpus=str(corpus)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert target.V == V and peak < 40e6  # a dense V x V table alone is 8 V^2 = 141 MB
    text = corpus.read_text(encoding="utf-8")
    tokens = np.array([ord(ch) - 0x20000 for ch in text])
    for x in (0, 17, V - 1):
        following = tokens[1:][tokens[:-1] == x]
        expected = (np.bincount(following, minlength=V) + 1.0) / (following.size + V)
        np.testing.assert_allclose(target.row(x), expected, rtol=1e-15)
    np.testing.assert_allclose(target.pi @ np.array([target.row(x) for x in range(V)]), target.pi, atol=1e-12)
    assert target.vocabulary is not None and target.vocabulary[5] == chr(0x20005)


def test_a_large_alphabet_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = alphabet_corpus(tmp_path / "wide.txt", DENSE_CORPUS_MAX_V + 1, 10_000)
    status, out, _ = run_cli(["run", "--corpus", str(corpus), "--K", "8", "--steps", "200", "--quiet",
                              "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 0 and f"V = {DENSE_CORPUS_MAX_V + 1}" in out


def test_too_many_characters_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = alphabet_corpus(tmp_path / "huge.txt", MAX_CORPUS_VOCAB + 1, MAX_CORPUS_VOCAB + 1)
    status, out, err = run_cli(["run", "--corpus", str(corpus), "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 2 and not out and err.count("\n") == 1
    assert f"has {MAX_CORPUS_VOCAB + 1:,} distinct characters" in err and f"at most {MAX_CORPUS_VOCAB:,}" in err
    wide = alphabet_corpus(tmp_path / "wide.txt", DENSE_CORPUS_MAX_V + 1, DENSE_CORPUS_MAX_V + 1)
    status, _, err = run_cli(["run", "--corpus", str(wide), "--order", "3", "--runs-dir", str(tmp_path / "runs")],
                             capsys)
    assert status == 2 and err.count("\n") == 1 and f"at most {DENSE_CORPUS_MAX_V:,}" in err
    assert not (tmp_path / "runs").exists()
