"""Large vocabularies: lazy synthetic rows, their stationary law, bounded caches, exact chains."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from thermospec.core.statistics import pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import run_chain, run_chain_reference
from thermospec.engine.kernels import TableCache, slot_bytes
from thermospec.runs.config import RunConfig
from thermospec.runs.targets import load_target
from thermospec.targets.bigram import stationary_distribution
from thermospec.targets.synthetic import (
    DENSE_VOCAB_MAX,
    LAZY_BLOCK,
    LazySyntheticTarget,
    lazy_synthetic_target,
    synthetic_target,
)
from thermospec.tsu.drafts import Proposer


def test_synthetic_target_switches_to_lazy_rows_above_the_dense_limit() -> None:
    dense = synthetic_target(DENSE_VOCAB_MAX // 16, 50.0, np.random.default_rng(0))
    assert not isinstance(dense, LazySyntheticTarget)
    lazy = load_target(RunConfig(vocab=DENSE_VOCAB_MAX + 1))
    assert isinstance(lazy, LazySyntheticTarget)
    assert lazy.V == DENSE_VOCAB_MAX + 1 and not lazy.rows_stored  # no dense table
    assert lazy.widest_support() == lazy.atoms < lazy.V


def test_rows_are_reproducible_per_seed_and_context() -> None:
    a = lazy_synthetic_target(3000, 50.0, random_stream(5, Stream.TARGET))
    b = lazy_synthetic_target(3000, 50.0, random_stream(5, Stream.TARGET))
    c = lazy_synthetic_target(3000, 50.0, random_stream(6, Stream.TARGET))
    for x in (0, 1, LAZY_BLOCK - 1, LAZY_BLOCK, 2999):
        row = a.row(x)
        assert row.shape == (3000,) and row.min() >= 0 and row.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_array_equal(row, b.row(x))
        np.testing.assert_array_equal(row, a.row(x))  # again, from the cache
        assert not np.array_equal(row, c.row(x))
    # order of access does not matter: a fresh target asked in reverse gives the same rows
    fresh = lazy_synthetic_target(3000, 50.0, random_stream(5, Stream.TARGET))
    for x in (2999, 64, 0):
        np.testing.assert_array_equal(fresh.row(x), a.row(x))
    with pytest.raises(IndexError):
        a.row(3000)


def test_block_cache_is_bounded() -> None:
    target = lazy_synthetic_target(2048, 50.0, np.random.default_rng(1), row_cache_bytes=3 * LAZY_BLOCK * 256 * 12)
    for x in range(0, 2048, LAZY_BLOCK):
        target.row(x)
    assert target.cached_blocks() == 3


@pytest.mark.parametrize(("c", "support"), [(50.0, 256), (2.0, 16), (0.5, 4)])
def test_pi_matches_the_dense_solve(c: float, support: int) -> None:
    """pi by sparse power iteration equals the dense solver's on the same rows."""
    target = lazy_synthetic_target(400, c, np.random.default_rng(2), support=support)
    P = np.stack([target.row(x) for x in range(400)])
    pi, unique = stationary_distribution(P)
    assert unique == target.stationary_unique
    assert np.abs(pi - target.pi).max() < 1e-10
    assert np.abs(target.pi @ P - target.pi).sum() < 1e-10
    assert target.pi_residual < 1e-12


def test_pi_of_a_reducible_lazy_chain_is_the_long_run_average() -> None:
    """Rows with a single atom: a functional graph, several closed classes, pi from the uniform start."""
    target = lazy_synthetic_target(500, 1.0, np.random.default_rng(4), support=1)
    P = np.stack([target.row(x) for x in range(500)])
    pi, unique = stationary_distribution(P)
    assert not unique and not target.stationary_unique
    assert np.abs(pi - target.pi).max() < 1e-9


def test_chain_on_a_lazy_target_matches_the_reference_with_evictions() -> None:
    config = RunConfig(vocab=DENSE_VOCAB_MAX + 100, K=16, steps=400, seed=3)
    target = load_target(config)
    proposer = Proposer(target.row, config.K, config.tau, config.eps)
    ref = run_chain_reference(target.row, target.pi, proposer.draft, config.steps, random_stream(3, Stream.CHAIN))
    chunks = list(run_chain(target.row, target.pi, proposer.draft, config.steps, random_stream(3, Stream.CHAIN),
                            chunk=150, max_table_bytes=8 * slot_bytes(target.V)))
    np.testing.assert_array_equal(np.concatenate([c.emitted for c in chunks]), ref.emitted)
    np.testing.assert_array_equal(np.concatenate([c.proposed for c in chunks]), ref.proposed)


def test_table_cache_memory_is_bounded_at_65536() -> None:
    V = 65_536
    budget = 16 * 1024 * 1024
    cdf = np.linspace(1.0 / V, 1.0, V)
    cache = TableCache(V, lambda x: (cdf, np.ones(V), cdf), max_bytes=budget)
    assert cache.nbytes <= budget + 64 * V  # the slots plus the per-context index
    for x in range(0, V, 4099):
        cache.load(x)
    assert cache.filled == cache.slots


def test_lazy_emissions_follow_the_row_with_a_negative_control() -> None:
    """χ² of fixed-context emissions on a lazy row vs p(.|x); the uncorrected drafts fail the same test."""
    from thermospec.engine.chain import fixed_context_draws

    target = load_target(RunConfig(vocab=DENSE_VOCAB_MAX + 1, seed=9))
    x = int(np.argmax(target.pi))
    p = target.row(x)
    proposer = Proposer(target.row, 8, 2.0, "auto")  # a poor draft: low acceptance
    draws = fixed_context_draws(p, proposer.draft(x), 40_000, np.random.default_rng(0))
    emitted = np.bincount(draws.emitted, minlength=target.V).astype(np.float64)
    drafted = np.bincount(draws.proposed, minlength=target.V).astype(np.float64)
    assert draws.accepted.mean() < 0.9
    assert pooled_chi2(emitted, 40_000 * p).p_value > 1e-3
    assert pooled_chi2(drafted, 40_000 * p).p_value < 1e-6


@pytest.mark.parametrize(
    "text", ["ab", "abracadabra", "héllo wörld ✓ 𝄞 " * 300 + "x", "z" * 5 + "a" * 3, "\x00\x7f\x00"]
)
def test_streaming_bigram_counts_equal_the_direct_count(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import thermospec.targets.corpus

    monkeypatch.setattr(thermospec.targets.corpus, "COUNT_CHUNK", 7)  # many chunk boundaries
    alphabet, counts = thermospec.targets.corpus.bigram_counts(text)
    assert alphabet.tolist() == sorted({ord(ch) for ch in text})
    index = {cp: i for i, cp in enumerate(alphabet.tolist())}
    expected = np.zeros_like(counts)
    for a, b in itertools.pairwise(text):
        expected[index[ord(a)], index[ord(b)]] += 1
    np.testing.assert_array_equal(counts, expected)
