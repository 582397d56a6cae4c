"""The order-N contexts as an automaton (`ContextMoves`): every move is `OrderTarget.next_context`'s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thermospec.targets.order import order_target


@pytest.mark.parametrize(("text", "order"), [("abcabdbca", 2), ("abcabdbca", 3), ("abcabdbca", 5),
                                             ("the cat sat on the mat; that hat", 4),
                                             ("the cat sat on the mat; that hat", 8)])
def test_every_move_is_next_context(tmp_path: Path, text: str, order: int) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    target = order_target(path, order)
    moves = target.moves()
    assert moves is not None
    V = target.V
    seen = {moves.context(s) for s in range(moves.states)}
    assert len(seen) == moves.states  # one context per state
    for s in range(moves.states):
        context = moves.context(s)
        for y in range(V):
            assert moves.context(int(moves.next[s * V + y])) == target.next_context(context, y), (s, y)


def test_tiny_shakespeare_moves_on_a_sample(shakespeare: Path) -> None:
    target = order_target(shakespeare, 5)
    moves = target.moves()
    assert moves is not None and moves.states > target.V and moves.next.dtype == np.int32
    V = target.V
    for s in np.random.default_rng(3).choice(moves.states, size=300, replace=False).tolist():
        context = moves.context(s)
        for y in range(V):
            assert moves.context(int(moves.next[s * V + y])) == target.next_context(context, y)
    assert target.moves(max_bytes=moves.nbytes - 1) is None  # past the bound: no table


def test_states_are_interned_in_the_order_they_are_met(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("abracadabra", encoding="utf-8")
    target = order_target(path, 4)
    moves = target.moves()
    assert moves is not None
    last = moves.states - 1
    first = moves.context(last)
    assert first == target.V  # the first longer context met gets the next free id
    assert moves.context(last - 1) == target.V + 1 and moves.context(last) == first


@pytest.mark.parametrize(("text", "order"), [("abcabdbca", 3), ("the cat sat on the mat; that hat", 4),
                                             ("the cat sat on the mat; that hat", 8)])
def test_rows_of_every_state_are_the_targets(tmp_path: Path, text: str, order: int) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    target = order_target(path, order)
    moves = target.moves()
    assert moves is not None
    states = np.arange(moves.states, dtype=np.int64)
    for chosen in (states, states[target.V:], states[::-3]):  # with and without the one-token states
        rows = moves.rows(chosen)
        for i, s in enumerate(chosen.tolist()):
            np.testing.assert_array_equal(rows[i], target.row(moves.context(s)))
