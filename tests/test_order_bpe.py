"""Order-N contexts over BPE token ids (``order_target(..., tokenizer="bpe:M")``).

On a small generated corpus (seeded, a few seconds of BPE training): the rows are
the Laplace rows of the tokens that follow the longest seen suffix (counted here by
brute force over the token ids), one-token rows are the BPE bigram target's bit for
bit, a context's text is its tokens decoded together, and the chain on these
contexts (move table and list tables alike, through `OrderSource` too) is the
step-by-step reference and passes the transition χ², which its uncorrected drafts fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from thermospec.core.statistics import context_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.contexts import ContextProposer, run_order_chain, run_order_reference
from thermospec.engine.keys import OrderSource
from thermospec.engine.pairs import PairCounts
from thermospec.targets.bpe import bpe_corpus, bpe_target
from thermospec.targets.order import ORDER_MOVES_BYTES, OrderTarget, order_target

pytest.importorskip("tokenizers")

WORDS = ("the", "king", "queen", "shall", "speak", "thee", "thou", "art", "love", "my", "lord", "and", "é", "naïve")
SIZE = 300


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~60 KB of text from a seeded second-order word chain (so order-3 token contexts carry information)."""
    rng = np.random.default_rng(7)
    nxt = rng.integers(0, len(WORDS), size=(len(WORDS), len(WORDS), 3))
    words = [0, 1]
    while len(words) < 12_000:
        words.append(int(nxt[words[-2], words[-1], rng.integers(0, 3)]))
    text = "".join(WORDS[w] + ("\n" if i % 11 == 10 else " ") for i, w in enumerate(words))
    path = tmp_path_factory.mktemp("bpe_order") / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def target(corpus: Path) -> OrderTarget:
    return order_target(corpus, 4, tokenizer=f"bpe:{SIZE}")


@pytest.fixture(scope="module")
def ids(corpus: Path) -> NDArray[np.int64]:
    return bpe_corpus(str(corpus), SIZE)[1]


def followers(ids: NDArray[np.int64], suffix: tuple[int, ...]) -> NDArray[np.int64]:
    """Every token that follows an occurrence of `suffix` in the token ids (brute force)."""
    L = len(suffix)
    windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], L)
    at = np.flatnonzero((windows == np.array(suffix)).all(axis=1)) + L
    return ids[at]


def test_rows_are_laplace_rows_of_the_longest_seen_suffix(target: OrderTarget, ids: NDArray[np.int64]) -> None:
    V = target.V
    assert V <= SIZE and target.order == 4 and target.source.endswith(", order 4")
    rng = np.random.default_rng(1)
    lengths = set()
    for start in rng.integers(0, ids.shape[0] - 10, size=60).tolist():
        history = [int(t) for t in ids[start:start + 3]]
        if rng.random() < 0.3:  # a history the corpus never had: back off
            history[0] = int(rng.integers(0, V))
        c = target.context_id(history)
        suffix = target.context_tokens(c)
        lengths.add(len(suffix))
        assert tuple(history[-len(suffix):]) == suffix
        longer = tuple(history[-len(suffix) - 1:])
        assert len(suffix) == 3 or followers(ids, longer).shape[0] == 0  # the longest suffix seen
        row = target.row(c)
        assert np.all(row > 0) and row.sum() == pytest.approx(1.0, abs=1e-12)
        if len(suffix) > 1:
            smoothed = np.bincount(followers(ids, suffix), minlength=V).astype(np.float64) + 1.0
            np.testing.assert_array_equal(row, smoothed / smoothed.sum())
            assert target.context_occurrences(c) == followers(ids, suffix).shape[0]
    assert {1, 2, 3} <= lengths or {2, 3} <= lengths


def test_one_token_rows_and_pi_are_the_bpe_bigram_targets(corpus: Path, target: OrderTarget) -> None:
    bigram = bpe_target(str(corpus), SIZE)
    assert bigram.V == target.V
    np.testing.assert_array_equal(target.pi, bigram.pi)
    for x in (0, 5, int(bigram.pi.argmax()), target.V - 1):
        np.testing.assert_array_equal(target.row(x), bigram.row(x))
    two = order_target(corpus, 2, tokenizer=f"bpe:{SIZE}")  # N = 2: the BPE bigram chain itself
    assert two.source == bigram.source


def test_a_contexts_text_is_its_tokens_decoded(corpus: Path, target: OrderTarget, ids: NDArray[np.int64]) -> None:
    tokenizer = bpe_corpus(str(corpus), SIZE)[2]
    source = OrderSource(target)
    texts = set()
    for start in range(100, 2000, 97):
        c = target.context_id([int(t) for t in ids[start:start + 3]])
        text = target.context_text(c)
        assert text == tokenizer.decode(list(target.context_tokens(c)))
        assert json.loads(source.key_json(c)) == text
        texts.add(text)
    assert any(len(t) > 3 for t in texts)  # multi-character tokens


@pytest.mark.parametrize("moves_bytes", [None, 0])  # the move table, and the per-context list tables
def test_the_chain_on_bpe_contexts_is_the_reference(target: OrderTarget, moves_bytes: int | None) -> None:
    if moves_bytes is None:
        assert target.moves() is not None
    drafts = ContextProposer(target, 8, 1.0, "auto").draft
    reference = run_order_reference(target, drafts, 1500, np.random.default_rng(3))
    bound = ORDER_MOVES_BYTES if moves_bytes is None else moves_bytes
    chunks = list(run_order_chain(target, drafts, 1500, np.random.default_rng(3), chunk=400, max_moves_bytes=bound))
    for name in ("prev", "context", "proposed", "emitted", "accepted"):
        np.testing.assert_array_equal(np.concatenate([getattr(c, name) for c in chunks]), getattr(reference, name))
    source = OrderSource(target)  # the context source the block and tree engines step on
    c = int(reference.context[0])
    for e, nxt in zip(reference.emitted[:-1].tolist(), reference.context[1:].tolist(), strict=True):
        c = source.advance(c, e)
        assert c == nxt


def test_emitted_tokens_follow_the_order_n_rows_and_the_drafts_do_not(target: OrderTarget) -> None:
    """Transition χ² per context: the emitted tokens pass; the uncorrected drafts (negative control) fail."""
    drafts = ContextProposer(target, 8, 1.0, "auto").draft
    emitted, proposed = PairCounts(target.V), PairCounts(target.V)
    for chunk in run_order_chain(target, drafts, 60_000, random_stream(5, Stream.CHAIN), psi=(8, 1.0, "auto")):
        emitted.add(chunk.context, chunk.emitted)
        proposed.add(chunk.context, chunk.proposed)
    right = context_chi2(emitted.contexts(), target.row)
    assert right.dof > 100 and right.p_value > 1e-3
    assert context_chi2(proposed.contexts(), target.row).p_value < 1e-6


def test_a_bad_tokenizer_spec_or_order_is_named(corpus: Path) -> None:
    with pytest.raises(ValueError, match="--tokenizer"):
        order_target(corpus, 4, tokenizer="bpe:12")
    with pytest.raises(ValueError, match="--order"):
        order_target(corpus, 1, tokenizer=f"bpe:{SIZE}")
