"""A run keeping only counts (``run_chain(..., record=False)``, the kernel's plain loop) counts as a recorded one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
from numpy.typing import NDArray

from thermospec import SimTSU
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.batch import run_batch
from thermospec.engine.chain import ReportError, run_chain, table_source
from thermospec.engine.kernels import (
    FINE_GUIDE,
    PRELOAD_STEPS,
    ChainStepper,
    StepCounts,
    TableCache,
    compiled_module,
    guide_size,
    slot_bytes,
)
from thermospec.engine.tally import BatchTally, RunTally
from thermospec.runs.config import RunConfig
from thermospec.runs.targets import load_target
from thermospec.targets.bigram import BigramTarget
from thermospec.tsu.drafts import ContextDraft, Proposer

pytestmark = pytest.mark.skipif(compiled_module() is None, reason="thermospec._kernels is not built")


@pytest.fixture(params=["auto", "baseline"])
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Both copies of the plain loop: the one the CPU chooses (AVX2 + BMI2 when it has them) and the baseline one."""
    module = compiled_module()
    assert module is not None
    yield module.isa(request.param)
    module.isa("auto")


def _setup(V: int, seed: int) -> tuple[BigramTarget, Proposer]:
    config = RunConfig(vocab=V, K=4, seed=seed)
    target = load_target(config)
    return target, Proposer(target.row, config.K, config.tau, config.eps)


def _tally(target: BigramTarget, proposer: Proposer, steps: int, chunk: int, transitions: bool,
           record: bool) -> tuple[RunTally, list[int], bool]:
    tally = RunTally(target.V, track_transitions=transitions)
    lengths, blank = [], True
    for c in run_chain(target.row, target.pi, proposer.draft, steps, random_stream(3, Stream.CHAIN), chunk=chunk,
                       tally=tally, record=record):
        lengths.append(len(c))
        blank &= bool((c.prev == -1).all() and (c.emitted == -1).all() and not c.accepted.any())
    return tally, lengths, blank


@pytest.mark.parametrize("transitions", [True, False])  # the pairs alone, or the emitted tokens alone
def test_a_counts_only_run_counts_what_a_recorded_run_counts(isa: str, transitions: bool) -> None:
    V = 16
    target, proposer = _setup(V, 3)
    steps = PRELOAD_STEPS * V + 1234
    recorded, lengths, blank = _tally(target, proposer, steps, 5000, transitions, record=True)
    assert not blank and lengths == [5000, 5000, 5000, steps - 15000]
    counted, plain_lengths, blank = _tally(target, proposer, steps, 5000, transitions, record=False)
    assert blank and plain_lengths == [steps]  # nothing recorded, in chunks of UNRECORDED_CHUNK steps at least
    assert (counted.steps, counted.accepted) == (recorded.steps, recorded.accepted)
    for field in ("context_counts", "emitted_counts", "transitions"):
        np.testing.assert_array_equal(getattr(counted, field), getattr(recorded, field), err_msg=field)


def test_the_plain_loop_adds_to_counts_already_there_and_leaves_the_stream_as_numpy(isa: str) -> None:
    V = 12
    target, proposer = _setup(V, 5)
    source = table_source(target.row, proposer.draft)
    plain, recorded = ChainStepper(V, source), ChainStepper(V, source)
    assert plain.cache is not None and plain.cache.load_all() and plain.counts_only()

    def counts() -> StepCounts:
        return (np.array([5], dtype=np.int64), np.ones(V, dtype=np.int64), np.full(V, 2, dtype=np.int64),
                np.full(V * V, 3, dtype=np.int64))

    mine, theirs = counts(), counts()
    rng_plain, rng_recorded = np.random.default_rng(8), np.random.default_rng(8)
    x_plain = x_recorded = 4
    for n in (4000, 1, 0, 700, 9000):  # 4 V^2 = 576: pairs alone, then pairs and tokens, then pairs alone
        arrays, x_plain = plain.draw_steps(rng_plain, n, x_plain, mine, record=False)
        assert all(a.shape == (n,) for a in arrays) and (arrays[0] == -1).all()
        _, x_recorded = recorded.draw_steps(rng_recorded, n, x_recorded, theirs)
        assert x_plain == x_recorded
    for a, b in zip(mine, theirs, strict=True):
        assert a is not None and b is not None
        np.testing.assert_array_equal(a, b)
    assert rng_plain.random() == rng_recorded.random()


@pytest.mark.parametrize(("transitions", "per_chain"), [(True, False), (True, True), (False, True)])
def test_batch_chains_counted_in_the_plain_loop_count_what_recorded_ones_do(isa: str, transitions: bool,
                                                                             per_chain: bool) -> None:
    """``run --chains B --telemetry none``: each chain in turn in the plain loop, counting pairs, tokens or both."""
    V, B = 16, 5
    target, proposer = _setup(V, 4)
    tallies = []
    for record in (True, False):
        tally = BatchTally(B, V, track_transitions=transitions, per_chain=per_chain)
        for _ in run_batch(target.row, target.pi, proposer.draft, 900, 4, B, chunk_tokens=B * 400, threads=2,
                           tally=tally, record=record):
            pass
        tallies.append(tally)
    recorded, counted = (t.pooled() for t in tallies)
    np.testing.assert_array_equal(tallies[0].accepted, tallies[1].accepted)
    for field in ("emitted_counts", "context_counts", "transitions"):
        np.testing.assert_array_equal(getattr(recorded, field), getattr(counted, field), err_msg=field)
    if per_chain:
        for b in range(B):
            np.testing.assert_array_equal(tallies[0].chain(b).emitted_counts, tallies[1].chain(b).emitted_counts)
            np.testing.assert_array_equal(tallies[0].chain(b).context_counts, tallies[1].chain(b).context_counts)


def test_a_short_run_is_recorded() -> None:
    """Building every context's tables must pay for itself: a run shorter than `PRELOAD_STEPS` a context records."""
    V = 16
    target, proposer = _setup(V, 3)
    _, _, blank = _tally(target, proposer, PRELOAD_STEPS * V - 1, 5000, True, record=False)
    assert not blank


def test_a_misreporting_tsu_is_still_caught_at_its_step() -> None:
    """With a TSU whose reports need checking the chunks are recorded, and the refusal names the same step."""
    V = 16
    target, proposer = _setup(V, 3)

    class OneLie(SimTSU):
        def report_log_q(self, tokens: NDArray[np.int64]) -> NDArray[np.float64]:
            out: NDArray[np.float64] = super().report_log_q(tokens).copy()
            out[tokens == 5] += 0.5
            return out

    def drafts(x: int) -> ContextDraft:
        honest = proposer.draft(x)
        return dataclasses.replace(honest, tsu=OneLie(honest.tsu.payload)) if x == 2 else honest

    steps: list[int] = []
    for record in (True, False):
        with pytest.raises(ReportError) as caught:
            for _ in run_chain(target.row, target.pi, drafts, PRELOAD_STEPS * V * 2, random_stream(3, Stream.CHAIN),
                               chunk=4096, tally=RunTally(V, track_transitions=True), record=record):
                pass
        steps.append(caught.value.step)
    assert steps[0] == steps[1]


def test_the_kernel_refuses_to_skip_records_without_every_table() -> None:
    module = compiled_module()
    assert module is not None
    V = 8
    target, proposer = _setup(V, 2)
    cache = TableCache(V, table_source(target.row, proposer.draft))
    cache.load(0)
    counts = (np.zeros(1, dtype=np.int64), np.zeros(V, dtype=np.int64), np.zeros(V, dtype=np.int64), None)
    state = np.array([1, 2, 3, 5], dtype=np.uint64)
    none = np.empty(0, dtype=np.int64)
    with pytest.raises(ValueError, match="record=False"):
        module.chain(cache.tables, cache.totals, cache.lasts, cache.slot_of, cache.guides, cache.last_used,
                     np.empty((0, 3)), none, none, none, np.empty(0, dtype=np.bool_), V, cache.G, 0, 10, 0, 0, state,
                     counts, True, None, False)


def test_a_bigram_cache_holding_every_context_gets_finer_guides() -> None:
    V = 20
    target, proposer = _setup(V, 2)
    source = table_source(target.row, proposer.draft)
    coarse, fine = guide_size(V), guide_size(V, FINE_GUIDE)
    assert (coarse, fine) == (32, 128)
    caches = [TableCache(V, source), TableCache(V, source, max_bytes=4 * slot_bytes(V)),  # the second evicts
              TableCache(V, source, contexts=3 * V)]  # a move table's many states
    assert [c.G for c in caches] == [fine, coarse, coarse // 4]  # states far apart: fewer guide bytes to fill
