"""``--drafts N`` on order-N contexts and on a trace (`engine.keyed_drafts`): every path is the per-step
reference, ``--drafts 1`` is the source's single-draft run, emitted tokens follow p(. | key) (χ², with a
run verified against the wrong rows as negative control) and the acceptance is the verifiers' exact one.

About 15 s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from scripts.make_trace import write_trace
from thermospec.core.statistics import context_chi2
from thermospec.engine.contexts import ContextProposer, run_order_chain
from thermospec.engine.drafts import plan_source
from thermospec.engine.kernels import compiled_module
from thermospec.engine.keyed_drafts import KeyedDraftsChunk, run_keyed_drafts_chains
from thermospec.engine.keys import ContextSource, OrderSource, PositionSource
from thermospec.engine.pairs import PairCounts
from thermospec.engine.positions import PositionProposer, run_positions
from thermospec.targets.order import OrderTarget, order_target
from thermospec.targets.trace import TraceTarget, load_trace
from thermospec.tsu.drafts import DraftSource

FIELDS = ("prev", "proposed", "emitted", "accepted", "drafts_used", "accepted_index", "last_token")
BACKENDS = ["compiled", "python", "reference"]


@pytest.fixture(scope="module")
def order4(shakespeare: Path) -> tuple[OrderTarget, DraftSource]:
    target = order_target(shakespeare, 4)
    return target, ContextProposer(target, 8, 1.0, "auto").draft


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[TraceTarget, DraftSource]:
    folder = tmp_path_factory.mktemp("keyed")
    target = load_trace(write_trace(folder / "z.npy", 5, 300, 1.0, 2, progress=False))
    return target, PositionProposer(target, 12, 1.0, "auto").draft


def steps_of(source: ContextSource, drafts: DraftSource, n: int, verifier: str, steps: int, seed: int,
             backend: str = "auto", chunk: int = 700, plans: Any = None) -> KeyedDraftsChunk:
    """One chain's chunks joined into one."""
    if backend == "compiled" and compiled_module() is None:
        pytest.skip("the compiled kernel is not built")
    chunks = [c for (c,) in run_keyed_drafts_chains(source, drafts, n, verifier, steps, [np.random.default_rng(seed)],
                                                    plans=plans, chunk=chunk, backend=backend)]  # type: ignore[arg-type]
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    joined = {name: np.concatenate([getattr(c, name) for c in chunks]) for name in FIELDS}
    return KeyedDraftsChunk(start=0, **joined)


def same(a: KeyedDraftsChunk, b: KeyedDraftsChunk) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS[:2])
@pytest.mark.parametrize(("n", "verifier"), [(2, "recursive"), (3, "spectr"), (3, "optimal")])
def test_order_paths_are_the_reference(order4: tuple[OrderTarget, DraftSource], backend: str, n: int,
                                       verifier: str) -> None:
    target, drafts = order4
    source = OrderSource(target)
    reference = steps_of(source, drafts, n, verifier, 2500, 3, "reference")
    same(steps_of(source, drafts, n, verifier, 2500, 3, backend), reference)
    assert reference.last_token[0] == reference.prev[0]  # x0: its one-token context is its id
    np.testing.assert_array_equal(reference.last_token[1:], reference.emitted[:-1])


def test_order_without_a_move_table_is_the_reference(order4: tuple[OrderTarget, DraftSource],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    target, drafts = order4
    source = OrderSource(target)
    reference = steps_of(source, drafts, 2, "recursive", 1500, 5, "reference")
    monkeypatch.setattr(target, "moves", lambda *args: None)  # too many contexts: memoised moves, Python loop
    same(steps_of(source, drafts, 2, "recursive", 1500, 5, "auto"), reference)


@pytest.mark.parametrize("backend", BACKENDS[:2])
@pytest.mark.parametrize(("n", "verifier"), [(2, "recursive"), (3, "spectr"), (2, "optimal")])
def test_trace_paths_are_the_reference(trace: tuple[TraceTarget, DraftSource], backend: str, n: int,
                                       verifier: str) -> None:
    target, drafts = trace
    source = PositionSource(target)
    reference = steps_of(source, drafts, n, verifier, 1203, 3, "reference", chunk=100)
    same(steps_of(source, drafts, n, verifier, 1203, 3, backend, chunk=100), reference)
    np.testing.assert_array_equal(reference.prev, np.arange(1203) % target.positions)  # t + 1 whatever was emitted


@pytest.mark.parametrize("verifier", ["recursive", "spectr", "optimal"])
def test_one_draft_is_the_single_draft_run(order4: tuple[OrderTarget, DraftSource],
                                           trace: tuple[TraceTarget, DraftSource], verifier: str) -> None:
    target, drafts = order4
    mine = steps_of(OrderSource(target), drafts, 1, verifier, 3000, 8)
    single = list(run_order_chain(target, drafts, 3000, np.random.default_rng(8)))
    for name, theirs in (("prev", "context"), ("last_token", "prev"), ("proposed", "proposed"),
                         ("emitted", "emitted"), ("accepted", "accepted")):
        np.testing.assert_array_equal(getattr(mine, name), np.concatenate([getattr(c, theirs) for c in single]))
    positions, position_drafts = trace
    mine = steps_of(PositionSource(positions), position_drafts, 1, verifier, 2000, 8)
    single_positions = list(run_positions(positions, position_drafts, 2000, np.random.default_rng(8)))
    for name in ("prev", "proposed", "emitted", "accepted"):
        np.testing.assert_array_equal(getattr(mine, name),
                                      np.concatenate([getattr(c, name) for c in single_positions]))


def chi2_p(chunk: KeyedDraftsChunk, row: Any, V: int) -> float:
    pairs = PairCounts(V)
    pairs.add(chunk.prev, chunk.emitted)
    return context_chi2(pairs.contexts(), row).p_value


def visit_acceptance(chunk: KeyedDraftsChunk, acceptance: Any) -> tuple[float, float]:
    """The exact acceptance per key weighted by the run's visits, and a binomial SE of the rate."""
    keys, visits = np.unique(chunk.prev, return_counts=True)
    exact = math.fsum(int(v) * acceptance(int(k)) for k, v in zip(keys, visits, strict=True)) / len(chunk.prev)
    return exact, math.sqrt(max(exact * (1 - exact), 1e-4) / len(chunk.prev))


@pytest.mark.parametrize(("n", "verifier", "steps"), [(2, "recursive", 40_000), (3, "spectr", 40_000),
                                                     (2, "optimal", 12_000)])  # optimal: an LP per key met
def test_order_tokens_follow_the_rows_and_accept_exactly(order4: tuple[OrderTarget, DraftSource], n: int,
                                                         verifier: str, steps: int) -> None:
    target = order4[0]
    drafts = ContextProposer(target, 2, 1.5, "auto").draft  # a poor ψ: N drafts gain visibly over one
    source = OrderSource(target)
    plans = plan_source(target.row, drafts, verifier, n)
    run = steps_of(source, drafts, n, verifier, steps, 11, plans=plans)
    assert chi2_p(run, target.row, target.V) > 1e-3
    exact, se = visit_acceptance(run, lambda k: plans(k).acceptance)
    assert abs(float(run.accepted.mean()) - exact) < 4 * se  # A_t - α(key_t): martingale differences
    single, _ = visit_acceptance(run, lambda k: drafts(k).overlap_mass)
    assert exact - single > 5 * se  # N drafts accept more than one: the comparison has power

    def wrong(k: int) -> NDArray[np.float64]:  # the row of the context one token shorter (backed off)
        tokens = target.context_tokens(k)
        return target.row(target.context_id(list(tokens[1:])) if len(tokens) > 1 else (k + 1) % target.V)

    control = steps_of(source, drafts, n, verifier, steps, 11, plans=plan_source(wrong, drafts, verifier, n))
    assert chi2_p(control, target.row, target.V) < 1e-6


@pytest.mark.parametrize(("n", "verifier"), [(2, "recursive"), (3, "spectr"), (2, "optimal")])
def test_trace_tokens_follow_the_rows_and_accept_exactly(trace: tuple[TraceTarget, DraftSource], n: int,
                                                         verifier: str) -> None:
    target = trace[0]
    drafts = PositionProposer(target, 2, 1.5, "auto").draft  # a poor ψ: N drafts gain visibly over one
    source = PositionSource(target)
    plans = plan_source(target.row, drafts, verifier, n)
    run = steps_of(source, drafts, n, verifier, 30_000, 12, plans=plans)
    assert chi2_p(run, target.row, target.V) > 1e-3
    exact, se = visit_acceptance(run, lambda k: plans(k).acceptance)
    assert abs(float(run.accepted.mean()) - exact) < 4 * se  # teacher-forced steps are independent
    single, _ = visit_acceptance(run, lambda k: drafts(k).overlap_mass)
    assert exact - single > 5 * se

    def wrong(t: int) -> NDArray[np.float64]:  # the next position's row
        return target.row((t + 1) % target.positions)

    control = steps_of(source, drafts, n, verifier, 30_000, 12, plans=plan_source(wrong, drafts, verifier, n))
    assert chi2_p(control, target.row, target.V) < 1e-6


def test_chains_share_nothing_but_tables(order4: tuple[OrderTarget, DraftSource],
                                         trace: tuple[TraceTarget, DraftSource]) -> None:
    for source, drafts in ((OrderSource(order4[0]), order4[1]), (PositionSource(trace[0]), trace[1])):
        rngs = [np.random.default_rng(s) for s in (4, 5, 6)]
        chunks = list(run_keyed_drafts_chains(source, drafts, 2, "recursive", 1500, rngs, chunk=400))
        for b, seed in enumerate((4, 5, 6)):
            alone = steps_of(source, drafts, 2, "recursive", 1500, seed, chunk=400)
            np.testing.assert_array_equal(np.concatenate([c[b].emitted for c in chunks]), alone.emitted)


@pytest.mark.parametrize(("n", "verifier"), [(2, "recursive"), (2, "optimal")])
def test_a_position_with_few_steps_steps_on_its_plan(trace: tuple[TraceTarget, DraftSource], n: int,
                                                     verifier: str) -> None:
    target, drafts = trace
    source = PositionSource(target)
    reference = steps_of(source, drafts, n, verifier, 803, 4, "reference", chunk=100)
    for few in (10**6, 161):  # every position on its plan; positions 3, 4 (160 steps) on it, 0-2 (161) on tables
        (chunks,) = zip(*run_keyed_drafts_chains(source, drafts, n, verifier, 803, [np.random.default_rng(4)],
                                                 chunk=100, few_steps=few), strict=True)
        np.testing.assert_array_equal(np.concatenate([c.emitted for c in chunks]), reference.emitted)
        np.testing.assert_array_equal(np.concatenate([c.accepted_index for c in chunks]), reference.accepted_index)
