"""Order-N corpus targets: N = 2 is the bigram target bit for bit, longest-suffix back-off, bounded memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thermospec.targets.bigram import BigramTarget
from thermospec.targets.corpus import CorpusError, corpus_target
from thermospec.targets.order import MAX_ORDER, OrderTarget, order_target

Row = np.ndarray[Any, np.dtype[np.float64]]


def corpus(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def reference(tokens: list[int], V: int, order: int, history: list[int]) -> tuple[Row, tuple[int, ...]]:
    """SPEC §8 by brute force: the row and the longest suffix (<= N - 1 tokens) seen followed by a token."""
    recent = history[-(order - 1):]
    for k in range(len(recent), 0, -1):
        suffix = recent[-k:]
        counts = np.zeros(V)
        for i in range(len(tokens) - k):
            if tokens[i:i + k] == suffix:
                counts[tokens[i + k]] += 1
        if counts.sum() > 0 or k == 1:
            return (counts + 1) / (counts + 1).sum(), tuple(suffix)
    raise AssertionError("unreachable")


def test_order_2_is_the_character_bigram_target_bit_for_bit(shakespeare: Path) -> None:
    dense = corpus_target(shakespeare)
    target = order_target(shakespeare, 2)
    as_bigram: BigramTarget = target  # an order-2 target is a bigram target
    assert as_bigram.V == dense.V and target.context_count == dense.V
    for x in range(dense.V):
        assert target.context_id([x]) == x and target.context_id([7, x]) == x
        np.testing.assert_array_equal(target.row(x), dense.P[x])
        tokens, probs = target.support(x)
        d_tokens, d_probs = dense.support(x)
        np.testing.assert_array_equal(tokens, d_tokens)
        np.testing.assert_array_equal(probs, d_probs)
        assert target.next_context(5, x) == x
    np.testing.assert_array_equal(target.pi, dense.pi)
    assert (target.vocabulary, target.corpus_sha256, target.source) == (dense.vocabulary, dense.corpus_sha256, "corpus")
    assert target.stationary_unique == dense.stationary_unique and target.rows_stored
    assert target.widest_support() == dense.widest_support() == dense.V
    top4 = [target.context_text(c) for c in target.frequent_contexts()]
    assert top4[0] == " " and len(set(top4)) == 4


HAND = "abcabdbca"  # a0 b1 c2 d3; the final "a" is followed by nothing


@pytest.mark.parametrize(("order", "history", "counts", "effective"), [
    (3, "ab", [0, 0, 1, 1], "ab"),  # ab -> c, ab -> d
    (3, "db", [0, 0, 1, 0], "db"),  # db -> c
    (3, "cb", [0, 0, 2, 1], "b"),  # cb never occurs: back off to b (b -> c, d, c)
    (3, "ca", [0, 1, 0, 0], "ca"),  # the second "ca" ends the corpus: only ca -> b counts
    (3, "da", [0, 2, 0, 0], "a"),  # da never occurs; the corpus' last a is followed by nothing
    (3, "a", [0, 2, 0, 0], "a"),  # the start of a run: one token
    (4, "dbc", [1, 0, 0, 0], "dbc"),
    (4, "cab", [0, 0, 0, 1], "cab"),
    (4, "bca", [0, 1, 0, 0], "bca"),  # bca occurs twice, the second at the very end
    (4, "dcb", [0, 0, 2, 1], "b"),  # neither dcb nor cb: the bigram row of b
    (5, "xabca", [0, 1, 0, 0], "abca"),  # only the last N - 1 = 4 count ("x" is token 4 of a 5-letter corpus)
])
def test_back_off_to_the_longest_suffix_seen(
    tmp_path: Path, order: int, history: str, counts: list[int], effective: str
) -> None:
    text = HAND + ("x" if "x" in history else "")
    target = order_target(corpus(tmp_path, text), order)
    ids = {ch: i for i, ch in enumerate(target.vocabulary)}
    context = target.context_id([ids[ch] for ch in history])
    smoothed = np.array(counts + [0] * (target.V - 4), dtype=np.float64) + 1.0
    np.testing.assert_allclose(target.row(context), smoothed / smoothed.sum(), rtol=1e-15)
    assert target.context_text(context) == effective
    assert (context < target.V) == (len(effective) == 1)
    if len(effective) > 1:
        assert target.context_occurrences(context) == sum(counts)


@pytest.mark.parametrize(("order", "seed"), [(3, 0), (4, 1), (5, 2), (8, 3)])
def test_random_walks_match_the_brute_force_definition(tmp_path: Path, order: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    text = "".join(rng.choice(list("abcde"), p=[0.4, 0.3, 0.15, 0.1, 0.05], size=300))
    target = order_target(corpus(tmp_path, text), order)
    ids = {ch: i for i, ch in enumerate(target.vocabulary)}
    tokens = [ids[ch] for ch in text]
    history = [int(rng.choice(target.V, p=target.pi))]
    context = target.context_id(history)
    for _ in range(150):
        expected, suffix = reference(tokens, target.V, order, history)
        np.testing.assert_allclose(target.row(context), expected, rtol=1e-14)
        assert target.context_tokens(context) == suffix
        assert target.context_id(history) == context  # interned once
        y = int(rng.choice(target.V, p=target.row(context)))
        history.append(y)
        context = target.next_context(context, y)
        assert context == target.context_id(history)
    assert target.context_count == target.V + len({target.context_tokens(c) for c in range(target.V,
                                                                                          target.context_count)})


def test_frequent_contexts_are_the_most_frequent_full_contexts(tmp_path: Path) -> None:
    text = "the cat and the dog and the end"
    target = order_target(corpus(tmp_path, text), 4)
    grams: dict[str, int] = {}
    for i in range(len(text) - 3):
        grams[text[i:i + 3]] = grams.get(text[i:i + 3], 0) + 1
    best = sorted(grams.values(), reverse=True)[:4]
    found = target.frequent_contexts()
    assert [target.context_occurrences(c) for c in found] == best
    assert [grams[target.context_text(c)] for c in found] == best
    assert target.context_text(found[0]) in ("the", "he ", " th")


def test_order_8_on_tiny_shakespeare_in_bounded_memory(shakespeare: Path) -> None:
    tracemalloc.start()
    try:
        target = order_target(shakespeare, 8, row_cache_bytes=1000 * 8 * 65)
        build_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        rng = np.random.default_rng(0)
        context = target.context_id([int(rng.choice(target.V, p=target.pi))])
        for u in rng.random(3000):
            y = min(int(np.searchsorted(np.cumsum(target.row(context)), u)), target.V - 1)
            context = target.next_context(context, y)
        walk_peak = tracemalloc.get_traced_memory()[1]
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # The corpus is 1.1 M characters: the index holds 8 one-byte columns of it, the build a sort of it.
    assert build_peak < 40 * 2**20, f"build peak {build_peak / 2**20:.1f} MiB"
    assert held < 16 * 2**20 and walk_peak < 24 * 2**20, (held, walk_peak)
    assert target.row_capacity == 1000 and target.cached_rows() <= 1000
    top = target.frequent_contexts()
    assert len(top) == 4 and all(len(target.context_tokens(c)) == 7 for c in top)
    assert target.context_occurrences(top[0]) >= target.context_occurrences(top[3]) > 100
    assert target.source == "corpus (order 8)" and not target.rows_stored


def test_bad_orders_and_histories_are_refused(tmp_path: Path) -> None:
    path = corpus(tmp_path, HAND)
    for order in (1, 0, MAX_ORDER + 1, True, 2.5):
        with pytest.raises(ValueError, match="--order"):
            order_target(path, order)  # type: ignore[arg-type]
    target: OrderTarget = order_target(path, 3)
    for history in ([], [4], [-1], [0, 9]):
        with pytest.raises(ValueError, match="history"):
            target.context_id(history)
    with pytest.raises(IndexError):
        target.row(target.context_count)
    with pytest.raises(CorpusError, match="no such file"):
        order_target(tmp_path / "none.txt", 3)
