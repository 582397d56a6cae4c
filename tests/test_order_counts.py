"""`count_order_chain`: the order-N chain counted only has `run_order_chain`'s steps, acceptances and pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thermospec.engine import context_counts, contexts
from thermospec.engine.context_counts import count_order_chain
from thermospec.engine.contexts import ContextProposer, run_order_chain
from thermospec.engine.kernels import compiled_module
from thermospec.engine.pairs import PairCounts
from thermospec.engine.state_drafts import PsiSpec
from thermospec.targets.order import OrderTarget, order_target

needs_kernel = pytest.mark.skipif(compiled_module() is None, reason="the compiled kernel is not built")
PSI: PsiSpec = (4, 1.0, 1e-6)
TEXT = "the cat sat on the mat; that hat is the cat's hat, and the mat is flat. " * 3


def _target(tmp_path: Path, order: int) -> OrderTarget:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return order_target(path, order)


Pairs = list[tuple[str, int, int]]


def _by_text(target: OrderTarget, context: np.ndarray, token: np.ndarray, count: np.ndarray) -> Pairs:
    return sorted(zip([target.context_text(int(c)) for c in context.tolist()], token.tolist(), count.tolist(),
                      strict=True))


def _recorded(tmp_path: Path, order: int, steps: int, seed: int) -> tuple[Pairs, int, float]:
    target = _target(tmp_path, order)
    rng = np.random.default_rng(seed)
    pairs, accepted = PairCounts(target.V), 0
    for chunk in run_order_chain(target, ContextProposer(target, *PSI).draft, steps, rng, psi=PSI):
        pairs.add(chunk.context, chunk.emitted)
        accepted += int(np.count_nonzero(chunk.accepted))
    return _by_text(target, *pairs.pairs()), accepted, float(rng.random())


@needs_kernel
@pytest.mark.parametrize(("order", "chunk"), [(3, 1 << 20), (5, 777), (8, 4096)])
def test_counts_are_the_recorded_runs(tmp_path: Path, order: int, chunk: int) -> None:
    steps, seed = 20_000, 11
    expected, accepted, after = _recorded(tmp_path, order, steps, seed)
    target = _target(tmp_path, order)
    rng = np.random.default_rng(seed)
    tallies = count_order_chain(target, ContextProposer(target, *PSI).draft, steps, rng, PSI, chunk=chunk)
    assert tallies is not None
    found = list(tallies)
    assert [t.start for t in found] == list(range(0, steps, chunk))
    assert sum(len(t) for t in found) == steps and sum(t.accepted for t in found) == accepted
    counts = found[-1].counts
    assert counts.metrics is not None and counts.steps == steps and counts.accepted == accepted
    context, token, count = counts.pairs()
    assert np.all(np.diff(context * target.V + token) > 0)  # sorted by context then token, as PairCounts gives
    assert _by_text(target, context, token, count) == expected
    assert float(rng.random()) == after  # the stream is left where the recorded run leaves it
    assert np.array_equal(counts.states_of(np.unique(context)) >= 0, np.ones(np.unique(context).shape[0], bool))


@needs_kernel
def test_recorded_fallback_counts_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps, seed = 20_000, 5
    expected, accepted, after = _recorded(tmp_path, 4, steps, seed)
    target = _target(tmp_path, 4)

    def uncrafted(*args: object) -> object:
        stepper, _ = contexts.moving_stepper(*args)  # type: ignore[arg-type]
        return stepper, None

    monkeypatch.setattr(context_counts, "moving_stepper", uncrafted)
    monkeypatch.setattr(context_counts, "packed_states", lambda *args: None)  # nor packed
    rng = np.random.default_rng(seed)
    tallies = count_order_chain(target, ContextProposer(target, *PSI).draft, steps, rng, PSI)
    assert tallies is not None
    found = list(tallies)
    counts = found[-1].counts
    assert counts.metrics is None and counts.steps == steps and counts.accepted == accepted
    assert _by_text(target, *counts.pairs()) == expected
    assert float(rng.random()) == after


def test_not_applicable_leaves_the_stream(tmp_path: Path) -> None:
    target = _target(tmp_path, 4)
    rng = np.random.default_rng(3)
    drafts = ContextProposer(target, *PSI).draft
    assert count_order_chain(target, drafts, 20_000, rng, None) is None  # no ψ parameters
    assert count_order_chain(target, drafts, 1, rng, PSI) is None  # too short to craft every state
    assert count_order_chain(target, drafts, 20_000, np.random.Generator(np.random.MT19937(1)), PSI) is None
    assert float(rng.random()) == float(np.random.default_rng(3).random())


def test_pair_counts_of_pairs() -> None:
    counts = PairCounts(5)
    counts.add(np.array([3, 1, 3, 0]), np.array([4, 2, 4, 1]))
    again = PairCounts.of_pairs(5, *counts.pairs())
    assert all(np.array_equal(a, b) for a, b in zip(again.pairs(), counts.pairs(), strict=True))
    again.add(np.array([1]), np.array([2]))
    assert again.pairs()[2].tolist() == [1, 2, 2]


@needs_kernel
def test_pairs_sorted_when_ids_were_interned_out_of_state_order(tmp_path: Path) -> None:
    steps, seed = 20_000, 9
    expected, accepted, _ = _recorded(tmp_path, 5, steps, seed)
    target = _target(tmp_path, 5)
    moves = target.moves()
    assert moves is not None
    moves.intern(np.arange(moves.states - 1, target.V - 1, -1))  # every longer state, the last first
    tallies = count_order_chain(target, ContextProposer(target, *PSI).draft, steps, np.random.default_rng(seed), PSI)
    assert tallies is not None
    counts = list(tallies)[-1].counts
    context, token, count = counts.pairs()
    assert np.all(np.diff(context * target.V + token) > 0)
    assert _by_text(target, context, token, count) == expected and counts.accepted == accepted
