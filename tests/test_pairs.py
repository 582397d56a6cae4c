"""(context, token) counts (`PairCounts`): every pair and its count, sorted, counted densely or by sorting."""

from __future__ import annotations

import numpy as np
import pytest

from thermospec.engine import pairs
from thermospec.engine.pairs import PairCounts


def _expected(context: np.ndarray, token: np.ndarray, V: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes, counts = np.unique(context * V + token, return_counts=True)
    return codes // V, codes % V, counts


@pytest.mark.parametrize(("V", "contexts", "chunks"), [(65, 64_000, 40), (7, 10, 5), (131_072, 1_000, 3), (65, 5, 60)])
def test_pairs_are_every_pair_counted(V: int, contexts: int, chunks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pairs, "MERGE_AT", 50_000)  # several merges, dense (small spans) and sorted (large ones)
    rng = np.random.default_rng(V + contexts)
    counted = PairCounts(V)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(chunks):
        n = int(rng.integers(1, 30_000))
        context, token = rng.integers(0, contexts, n), rng.integers(0, V, n)
        counted.add(context, token)
        seen.append((context, token))
    counted.add(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    got = counted.pairs()
    want = _expected(np.concatenate([c for c, _ in seen]), np.concatenate([t for _, t in seen]), V)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == np.int64
        np.testing.assert_array_equal(a, b)
    assert counted.pairs()[2].sum() == sum(c.shape[0] for c, _ in seen)  # pairs() again: the same counts


def test_no_pairs() -> None:
    context, token, count = PairCounts(5).pairs()
    assert context.shape == token.shape == count.shape == (0,)
