"""A move table's follower counts (`ContextMoves.rows`' table) are counted on another thread while the move
table is built (`OrderTarget.moves`); counted inline instead, the rows are the same, and they are the target's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thermospec.targets.context_moves import ContextMoves
from thermospec.targets.order import order_target

TEXT = "the cat sat on the mat; that hat is the cat's hat, and the mat is flat. " * 3


def test_rows_counted_aside_are_counted_inline_and_the_targets(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    for order in (3, 5):
        target = order_target(path, order)
        moves = target.moves()
        assert moves is not None
        inline = ContextMoves(target, moves.next, moves.length, moves.lo, moves.hi)  # no counts aside
        states = np.arange(moves.states)
        assert np.array_equal(moves.rows(states), inline.rows(states))
        for state in (0, target.V, moves.states - 1):
            assert np.array_equal(moves.rows(np.array([state]))[0], target.row(moves.context(state)))
