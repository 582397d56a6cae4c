"""The loss split of an order-N run counted by the kernel, keyed by the move table's states.

The counted run computes every state's losses while the kernel steps (`runs.losses.row_losses`, blocks of
states) instead of the visited contexts' afterwards (`_blocked`, in the order the contexts were interned):
each row's losses must be the same bits whatever block it is computed in, and the summary's split the
recorded run's (`tests/test_order_counted_runs.py` compares whole summaries).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import thermospec
from thermospec.core.payload import EpsSpec
from thermospec.runs import order_run
from thermospec.runs.losses import BLOCK_ROWS, block_losses, row_losses
from thermospec.targets.order import order_target

AUTO: EpsSpec = "auto"


def test_each_states_losses_are_its_own_whatever_the_block(shakespeare: Path) -> None:
    target = order_target(shakespeare, 5)
    moves = target.moves()
    assert moves is not None
    K, tau, eps = 8, 1.0, AUTO
    every = row_losses(moves.rows, np.arange(moves.states), K, tau, eps)
    assert every is not None and every.shape == (moves.states, 3)
    rng = np.random.default_rng(5)
    for size in (1, 7, BLOCK_ROWS + 3, 20_000):  # other blocks, shuffled as contexts interned as met would be
        keys = rng.choice(moves.states, size=size, replace=False)
        alone = block_losses(moves.rows(keys), None, K, tau, eps)
        assert alone is not None
        assert np.array_equal(alone, every[keys]), size


def test_no_state_no_losses() -> None:
    found = row_losses(lambda keys: np.zeros((keys.shape[0], 3)), np.zeros(0, dtype=np.int64), 8, 1.0, AUTO)
    assert found is not None and found.shape == (0, 3)


def _summary(tmp_path: Path, corpus: Path, name: str) -> dict[str, Any]:
    result = thermospec.run(corpus=str(corpus), K=8, order=5, steps=20_000, seed=4, telemetry="none",
                            runs_dir=str(tmp_path / name))
    return {k: v for k, v in result.summary.record.items() if k not in ("elapsed_s", "tokens_per_s")}


def test_without_the_states_losses_the_split_is_the_contexts(tmp_path: Path, shakespeare: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """When the states' losses cannot be computed at once (`row_losses` gives None), the visited states are
    interned and split context by context: the same summary."""
    usual = _summary(tmp_path, shakespeare, "usual")
    monkeypatch.setattr(order_run, "row_losses", lambda *args: None)
    assert _summary(tmp_path, shakespeare, "fallback") == usual


def test_every_states_split_beside_the_kernel_is_the_visited_ones(tmp_path: Path, shakespeare: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A run long enough computes every state's split on another thread while the kernel counts (here forced
    at 20,000 steps, which otherwise split the visited states afterwards): the same summary."""
    usual = _summary(tmp_path, shakespeare, "usual")
    beside = {"computed": 0}
    real = row_losses

    def watched(*args: Any) -> Any:
        beside["computed"] += threading.current_thread() is not threading.main_thread()
        return real(*args)

    monkeypatch.setattr(order_run, "LOSSES_ON_THE_SIDE", 0)
    monkeypatch.setattr(order_run, "row_losses", watched)
    assert _summary(tmp_path, shakespeare, "beside") == usual
    assert beside["computed"] == 1
