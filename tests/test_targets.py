"""Tests of the bigram targets (SPEC §5): synthetic Dirichlet rows, corpus counts, stationary π."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from thermospec.core.streams import Stream, random_stream
from thermospec.runs.config import RunConfig
from thermospec.runs.targets import load_target
from thermospec.targets.bigram import DenseTarget, stationary_distribution
from thermospec.targets.corpus import CorpusError, corpus_target
from thermospec.targets.synthetic import synthetic_target

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def cesaro_average(P: NDArray[np.float64], start: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    """``(1/n) Σ_{k<n} start P^k``, by brute force: the long-run average SPEC §5 asks for."""
    v, total = start.copy(), np.zeros_like(start)
    for _ in range(n):
        total += v
        v = v @ P
    averaged: NDArray[np.float64] = total / n
    return averaged


# --------------------------------------------------------------------------- synthetic


def test_synthetic_rows_are_the_seeded_dirichlet_draws() -> None:
    target = synthetic_target(64, 50.0, random_stream(7, Stream.TARGET))
    rows = random_stream(7, Stream.TARGET).dirichlet(np.full(64, 50.0 / 64), size=64)
    np.testing.assert_allclose(target.P, rows / rows.sum(axis=1, keepdims=True), rtol=1e-15)
    assert target.source == "synthetic"
    assert target.V == 64
    np.testing.assert_array_equal(target.row(5), target.P[5])


def test_synthetic_target_depends_only_on_seed_V_and_c() -> None:
    def table(config: RunConfig) -> np.ndarray:
        target = load_target(config)
        assert isinstance(target, DenseTarget)
        return target.P

    base = table(RunConfig(vocab=32, c=5.0, seed=3))
    for other in (RunConfig(vocab=32, c=5.0, seed=3, K=1, tau=0.3, eps=0.0, steps=10),
                  RunConfig(vocab=32, c=5.0, seed=3, K=128, tau=3.0, steps=99_999)):
        np.testing.assert_array_equal(table(other), base)
    for changed in (RunConfig(vocab=32, c=5.0, seed=4), RunConfig(vocab=32, c=6.0, seed=3)):
        assert not np.array_equal(table(changed), base)
    assert load_target(RunConfig(vocab=33, c=5.0, seed=3)).V == 33


def test_synthetic_rows_have_the_dirichlet_moments() -> None:
    """Entries of Dirichlet(c/V) have mean 1/V and variance (1/V)(1 - 1/V)/(c + 1); c = 40 would be 24 % off."""
    V, c = 256, 50.0
    P = synthetic_target(V, c, random_stream(7, Stream.TARGET)).P
    assert np.all(P >= 0)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    variance = (1 / V) * (1 - 1 / V) / (c + 1)
    # 65,536 entries (256 rows): the variance estimate is within ~3 % (a row's entries are nearly independent)
    assert P.var() == pytest.approx(variance, rel=0.06)
    wrong = (1 / V) * (1 - 1 / V) / (40 + 1)
    assert abs(P.var() - wrong) > 0.15 * wrong
    # the mean of each column over 256 rows: 1/V with sd sqrt(variance / 256)
    assert np.max(np.abs(P.mean(axis=0) - 1 / V)) < 5 * np.sqrt(variance / V)


def test_peaked_synthetic_rows_with_exact_zeros_are_legal() -> None:
    target = synthetic_target(50, 0.01, random_stream(1, Stream.TARGET))
    assert np.count_nonzero(target.P == 0) > 1000
    assert np.all(np.isfinite(target.P))
    np.testing.assert_allclose(target.P.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(target.pi @ target.P, target.pi, atol=1e-12)
    assert target.pi.sum() == pytest.approx(1.0)
    if not target.stationary_unique:
        np.testing.assert_allclose(target.pi, cesaro_average(target.P, np.full(50, 1 / 50), 20_000), atol=2e-3)


@pytest.mark.parametrize(("vocab", "c"), [(1, 50.0), (0, 50.0), (8, 0.0), (8, -1.0), (8, float("nan"))])
def test_synthetic_refuses_bad_options(vocab: int, c: float) -> None:
    with pytest.raises(ValueError, match=r"--vocab|--c"):
        synthetic_target(vocab, c, np.random.default_rng(0))


# --------------------------------------------------------------------------- corpus


def test_corpus_counts_by_hand(tmp_path: Path) -> None:
    text = "abcab\u00e9a"  # é (U+00E9) sorts after the ASCII letters
    path = tmp_path / "tiny.txt"
    path.write_text(text, encoding="utf-8")
    target = corpus_target(path)
    assert target.vocabulary == ("a", "b", "c", "\u00e9")
    # bigrams: ab, bc, ca, ab, bé, éa
    counts = np.array([
        [0, 2, 0, 0],  # a -> b twice
        [0, 0, 1, 1],  # b -> c, b -> é
        [1, 0, 0, 0],  # c -> a
        [1, 0, 0, 0],  # é -> a
    ], dtype=np.float64) + 1
    np.testing.assert_array_equal(target.P, counts / counts.sum(axis=1, keepdims=True))
    assert target.P[0].tolist() == [1 / 6, 3 / 6, 1 / 6, 1 / 6]
    assert target.corpus_sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert target.source == "corpus"
    assert target.stationary_unique
    np.testing.assert_allclose(target.pi @ target.P, target.pi, atol=1e-14)


def test_corpus_with_astral_characters_and_a_last_character_seen_once(tmp_path: Path) -> None:
    path = tmp_path / "emoji.txt"
    path.write_text("x\U0001f600x\U0001f600y", encoding="utf-8")  # y only ends the text: its row is all +1
    target = corpus_target(path)
    assert target.vocabulary == ("x", "y", "\U0001f600")
    np.testing.assert_array_equal(target.P[1], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_array_equal(target.P[0], [1 / 5, 1 / 5, 3 / 5])  # x -> 😀 twice


def test_tiny_shakespeare(shakespeare: Path) -> None:
    raw = shakespeare.read_bytes()
    assert len(raw) == 1_115_394
    text = raw.decode("utf-8")
    target = corpus_target(shakespeare)
    assert target.V == 65
    alphabet = sorted(set(text))
    assert list(target.vocabulary or ()) == alphabet
    index = {ch: i for i, ch in enumerate(alphabet)}
    counts = np.ones((65, 65))
    for (a, b), k in Counter(itertools.pairwise(text)).items():
        counts[index[a], index[b]] += k
    np.testing.assert_allclose(target.P, counts / counts.sum(axis=1, keepdims=True), rtol=1e-14)
    assert target.corpus_sha256 == hashlib.sha256(raw).hexdigest()
    assert target.stationary_unique
    np.testing.assert_allclose(target.pi @ target.P, target.pi, atol=1e-15)
    # the stationary law of the bigram chain is close to the corpus' character frequencies
    freq = np.bincount([index[ch] for ch in text], minlength=65) / len(text)
    assert np.abs(target.pi - freq).sum() < 0.01


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (b"\xff\xfe bad", "not UTF-8"), (b"caf\xc3", "not UTF-8"), (b"aaaa", "2"), (b"a", "2")],
)
def test_corpus_content_errors_name_the_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=reason) as info:
        corpus_target(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_corpus_missing_or_a_folder(tmp_path: Path) -> None:
    for path, reason in [(tmp_path / "absent.txt", "no such file"), (tmp_path, "folder")]:
        with pytest.raises(CorpusError, match=reason) as info:
            corpus_target(path)
        assert str(info.value).startswith(str(path))


def test_corpus_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.txt"
    path.write_text("ab")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)  # chmod 000 does not stop root
    with pytest.raises(CorpusError, match="cannot be read") as info:
        corpus_target(path)
    assert str(info.value).startswith(str(path))


# --------------------------------------------------------------------------- stationary distribution


def test_stationary_of_a_positive_chain() -> None:
    P = np.random.default_rng(0).dirichlet(np.ones(40), size=40)
    pi, unique = stationary_distribution(P)
    assert unique
    np.testing.assert_allclose(pi @ P, pi, atol=1e-15)
    assert pi.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(pi, np.linalg.matrix_power(P, 200)[0], atol=1e-12)


def test_two_closed_classes_and_a_transient_state() -> None:
    P = np.array([
        [0.2, 0.8, 0.0, 0.0],  # class A = {0, 1}, stationary (3/7, 4/7)
        [0.6, 0.4, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],  # class B = {2}, absorbing
        [0.3, 0.0, 0.5, 0.2],  # transient: enters A with probability 0.3 / 0.8, B with 0.5 / 0.8
    ])
    pi, unique = stationary_distribution(P)
    assert not unique
    weight_a = 0.25 + 0.25 + 0.25 * 0.375
    weight_b = 0.25 + 0.25 * 0.625
    expected = np.array([weight_a * 3 / 7, weight_a * 4 / 7, weight_b, 0.0])
    np.testing.assert_allclose(pi, expected, atol=1e-15)
    np.testing.assert_allclose(pi, cesaro_average(P, np.full(4, 0.25), 20_000), atol=1e-3)
    np.testing.assert_allclose(pi @ P, pi, atol=1e-15)


def test_one_closed_class_with_transient_states_is_unique() -> None:
    P = np.array([
        [0.5, 0.5, 0.0],
        [0.5, 0.5, 0.0],
        [0.1, 0.1, 0.8],
    ])
    pi, unique = stationary_distribution(P)
    assert unique
    np.testing.assert_allclose(pi, [0.5, 0.5, 0.0], atol=1e-15)


def test_periodic_chains() -> None:
    cycle = np.roll(np.eye(5), 1, axis=1)  # 0 -> 1 -> ... -> 4 -> 0
    pi, unique = stationary_distribution(cycle)
    assert unique
    np.testing.assert_allclose(pi, 0.2, atol=1e-15)
    bipartite = np.array([
        [0.0, 0.0, 0.3, 0.7],
        [0.0, 0.0, 0.9, 0.1],
        [0.5, 0.5, 0.0, 0.0],
        [0.2, 0.8, 0.0, 0.0],
    ])
    pi, unique = stationary_distribution(bipartite)
    assert unique
    np.testing.assert_allclose(pi @ bipartite, pi, atol=1e-15)
    np.testing.assert_allclose(pi, cesaro_average(bipartite, np.full(4, 0.25), 20_000), atol=1e-3)
    # two periodic closed classes, no transient state: each keeps its uniform-start share
    two = np.zeros((4, 4))
    two[0, 1] = two[1, 0] = two[2, 3] = two[3, 2] = 1.0
    pi, unique = stationary_distribution(two)
    assert not unique
    np.testing.assert_allclose(pi, 0.25, atol=1e-15)
