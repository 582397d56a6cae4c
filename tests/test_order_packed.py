"""The order-N states packed one record a state (`engine.packed_states`): the counting kernel on them
(``state_counts``) steps and counts as ``moving_counts`` does on the table cache, on both copies of the loop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from thermospec.engine import packed_states as packed_module
from thermospec.engine.chain import ReportVerifier, start_token
from thermospec.engine.context_counts import OrderCounts, count_order_chain
from thermospec.engine.contexts import ContextProposer, moving_stepper
from thermospec.engine.kernels import compiled_module, pcg64_state
from thermospec.engine.packed_states import MAX_PACKED_V, PackedStates, packed_states
from thermospec.engine.state_drafts import PsiSpec, craft_states
from thermospec.targets.order import OrderTarget, order_target

pytestmark = pytest.mark.skipif(compiled_module() is None or not hasattr(compiled_module(), "state_counts"),
                                reason="thermospec._kernels is not built")
PSI: PsiSpec = (4, 1.0, 1e-6)
TEXT = "the cat sat on the mat; that hat is the cat's hat, and the mat is flat. " * 3


@pytest.fixture(params=["auto", "baseline"])
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Both copies of the loop: the one the CPU chooses (AVX2 + BMI2 when it has them) and the baseline one."""
    module = compiled_module()
    assert module is not None
    yield module.isa(request.param)
    module.isa("auto")


def _target(tmp_path: Path, order: int) -> OrderTarget:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return order_target(path, order)


def _cached(target: OrderTarget, steps: int, seed: int) -> tuple[OrderCounts, int, list[float]]:
    """Counts of `moving_counts` on the table cache, the state after, and the stream's next draws."""
    moves = target.moves()
    assert moves is not None
    drafts = ContextProposer(target, *PSI).draft
    stepper, metrics = moving_stepper(target, moves, drafts, ReportVerifier(drafts), "auto", None, PSI, steps)
    assert metrics is not None and stepper.module is not None and stepper.cache is not None
    counts, cache, rng = OrderCounts(moves, metrics), stepper.cache, np.random.default_rng(seed)
    x = start_token(target.pi, rng)
    state = pcg64_state(rng)
    _, x = stepper.module.moving_counts(cache.tables, cache.totals, cache.lasts, cache.slot_of, cache.guides,
                                        moves.next, state, counts.accepted_count, counts.table, cache.V, cache.G,
                                        steps, x)
    return counts, x, state.tolist()


@pytest.mark.parametrize(("order", "steps", "seed"), [(3, 5_000, 1), (5, 20_000, 7), (8, 3_000, 2)])
def test_packed_states_count_as_the_table_cache(tmp_path: Path, isa: str, order: int, steps: int, seed: int) -> None:
    target = _target(tmp_path, order)
    expected, x_after, state_after = _cached(target, steps, seed)
    moves = target.moves()
    assert moves is not None
    packed = packed_states(target.V, moves)
    assert packed is not None
    metrics = craft_states(moves, PSI, ContextProposer(target, *PSI).draft, packed)
    assert metrics is not None and packed.resident
    counts, rng = OrderCounts(moves, metrics, packed), np.random.default_rng(seed)
    x = start_token(target.pi, rng)
    state = pcg64_state(rng)
    for n in (1, steps // 3, steps - 1 - steps // 3):  # in parts: the state and stream carry over
        x = packed.counts(state, counts.accepted_count, counts.table, n, x)
        if n == 1:
            assert counts.state_codes()[1].tolist() == [1]  # taken mid-run: the later steps add to them
    assert x == x_after and state.tolist() == state_after and counts.accepted == expected.accepted
    assert np.array_equal(counts.state_codes()[0], expected.state_codes()[0])
    assert np.array_equal(counts.state_codes()[1], expected.state_codes()[1])  # flushed once: the same again
    assert packed.unflushed == 0


def test_counts_are_flushed_before_they_could_overflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _target(tmp_path, 4)
    steps, seed = 9_000, 3
    drafts = ContextProposer(target, *PSI).draft
    whole = count_order_chain(target, drafts, steps, np.random.default_rng(seed), PSI)
    assert whole is not None
    expected = list(whole)[-1].counts
    monkeypatch.setattr(packed_module, "_FLUSH_AT", 2_500)  # a flush every few chunks, as at 2^32 steps
    flushes = {"n": 0}
    real = PackedStates.flush

    def counted(self: PackedStates, pairs: np.ndarray) -> None:
        flushes["n"] += bool(self.unflushed)
        real(self, pairs)

    monkeypatch.setattr(PackedStates, "flush", counted)
    tallies = count_order_chain(target, drafts, steps, np.random.default_rng(seed), PSI, chunk=1_000)
    assert tallies is not None
    counts = list(tallies)[-1].counts
    assert isinstance(counts.packed, PackedStates) and flushes["n"] >= 3
    assert all(np.array_equal(a, b) for a, b in zip(counts.state_codes(), expected.state_codes(), strict=True))
    assert counts.accepted == expected.accepted


def test_only_consecutive_states_are_packed(tmp_path: Path) -> None:
    target = _target(tmp_path, 3)
    moves = target.moves()
    assert moves is not None
    packed = packed_states(target.V, moves)
    assert packed is not None
    rows = np.full((2, target.V), 1.0)
    with pytest.raises(ValueError, match="consecutive"):
        packed.load_rows(np.array([0, 2]), rows, rows, rows)
    packed.load_rows(np.zeros(0, dtype=np.int64), rows[:0], rows[:0], rows[:0])  # nothing: no error
    with pytest.raises(ValueError, match="every state"):
        packed.counts(np.zeros(4, dtype=np.uint64), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), 1, 0)


def test_not_packed_beyond_its_bounds(tmp_path: Path) -> None:
    target = _target(tmp_path, 3)
    moves = target.moves()
    assert moves is not None and target.V <= MAX_PACKED_V
    assert packed_states(target.V, moves, max_bytes=1024) is None  # neither a cache nor records would hold them
    assert packed_states(MAX_PACKED_V + 1, moves) is None
