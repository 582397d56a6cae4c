"""Tests of the run engine: the fast chain is the reference chain, and the chain's output follows p.

`tests/test_kernels.py` pins each backend of the stepper to the reference over
many settings; here the engine's own contract is tested with the default backend:
chunk-size independence, the vectorised fixed-context path, the χ² of each
context's emissions against ``p(. | x)`` (with a negative control), the start
token against π, and the refusal of a misreported ``log q``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.speculative_law import ALPHA, emitted_law, miss_probability, noncentrality
from thermospec import SimTSU, accept_correct_step
from thermospec.core.payload import EpsSpec
from thermospec.core.statistics import chi2_sf, pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import ReportError, fixed_context_draws, run_chain, run_chain_reference, start_token
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.kernels import Backend
from thermospec.engine.tally import RunTally
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import prepare_run, sparse_rows
from thermospec.runs.targets import load_target
from thermospec.targets.bigram import BigramTarget
from thermospec.tsu.drafts import ContextDraft, Proposer

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def joined(chunks: list[ChainChunk]) -> ChainChunk:
    return ChainChunk(
        start=chunks[0].start,
        prev=np.concatenate([c.prev for c in chunks]),
        proposed=np.concatenate([c.proposed for c in chunks]),
        emitted=np.concatenate([c.emitted for c in chunks]),
        accepted=np.concatenate([c.accepted for c in chunks]),
    )


def assert_same_chain(a: ChainChunk, b: ChainChunk) -> None:
    for field in ("prev", "proposed", "emitted", "accepted"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def setup(config: RunConfig) -> tuple[BigramTarget, Proposer]:
    target = load_target(config)
    return target, Proposer(target.row, config.K, config.tau, config.eps)


CONFIGS = [
    RunConfig(vocab=64, steps=2000, seed=7),
    RunConfig(vocab=64, steps=2000, seed=8, K=1),
    RunConfig(vocab=64, steps=2000, seed=9, eps=0.0),
    RunConfig(vocab=64, steps=2000, seed=10, tau=0.3, K=8),
    RunConfig(vocab=64, steps=2000, seed=11, tau=3.0, K=8, eps=0.0),
    RunConfig(vocab=40, c=0.3, steps=2000, seed=12, K=4),  # peaked rows with exact zeros
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"seed{c.seed}")
def test_run_chain_equals_reference_for_every_chunk_size(config: RunConfig) -> None:
    target, proposer = setup(config)
    reference = run_chain_reference(target.row, target.pi, proposer.draft, config.steps,
                                    random_stream(config.seed, Stream.CHAIN))
    assert reference.emitted[:-1].tolist() == reference.prev[1:].tolist()  # the emitted token is the next context
    for chunk in (1, 333, config.steps, config.steps + 5):
        chunks = list(run_chain(target.row, target.pi, proposer.draft, config.steps,
                                random_stream(config.seed, Stream.CHAIN), chunk=chunk))
        assert [c.start for c in chunks] == list(range(0, config.steps, chunk))
        assert sum(len(c) for c in chunks) == config.steps
        assert_same_chain(joined(chunks), reference)


def test_run_chain_equals_reference_on_a_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "verse.txt"
    corpus.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n")
    settings: list[tuple[int, float, EpsSpec]] = [(64, 1.0, "auto"), (1, 1.0, "auto"), (4, 0.3, 0.0), (8, 3.0, 0.001)]
    for K, tau, eps in settings:
        config = RunConfig(corpus=str(corpus), K=K, tau=tau, eps=eps, steps=1500, seed=K)
        target, proposer = setup(config)
        reference = run_chain_reference(target.row, target.pi, proposer.draft, config.steps,
                                        random_stream(config.seed, Stream.CHAIN))
        chunks = list(run_chain(target.row, target.pi, proposer.draft, config.steps,
                                random_stream(config.seed, Stream.CHAIN), chunk=100))
        assert_same_chain(joined(chunks), reference)


def test_run_chain_equals_reference_on_tiny_shakespeare(shakespeare: Path) -> None:
    config = RunConfig(corpus=str(shakespeare), K=8, steps=3000, seed=5)
    target, proposer = setup(config)
    reference = run_chain_reference(target.row, target.pi, proposer.draft, config.steps,
                                    random_stream(config.seed, Stream.CHAIN))
    rng = random_stream(config.seed, Stream.CHAIN)
    fast = list(run_chain(target.row, target.pi, proposer.draft, config.steps, rng))
    assert_same_chain(joined(fast), reference)


def test_fixed_context_draws_equal_the_per_step_loop() -> None:
    target, proposer = setup(RunConfig(vocab=50, K=6, tau=0.5))
    x = 17
    draft, p = proposer.draft(x), target.row(x)
    fast = fixed_context_draws(p, draft, 3000, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    loop = []
    for _ in range(3000):
        y, _ = draft.tsu.draw(rng)
        loop.append((y, *accept_correct_step(p, draft.tsu.q, y, rng)))
    proposed, emitted, accepted = (np.array(column) for column in zip(*loop, strict=True))
    np.testing.assert_array_equal(fast.proposed, proposed)
    np.testing.assert_array_equal(fast.emitted, emitted)
    np.testing.assert_array_equal(fast.accepted, accepted)
    assert np.all(fast.prev == x)


# --------------------------------------------------------------------------- the chain's law


class SamplesElsewhereTSU(SimTSU):
    """Reports F(ψ) of its payload but samples at another temperature (negative control)."""

    def __init__(self, honest: SimTSU, sampled: NDArray[np.float64]) -> None:
        super().__init__(honest.payload)
        cdf = np.cumsum(sampled)
        cdf.flags.writeable = False
        self.cdf = cdf


def per_context_chi2(target: BigramTarget, chunks: list[ChainChunk], min_visits: int) -> list[tuple[int, float, int]]:
    """(context, χ² statistic, dof) of the emissions after each context visited at least `min_visits` times."""
    chain = joined(chunks)
    V = target.V
    counts = np.zeros((V, V))
    np.add.at(counts, (chain.prev, chain.emitted), 1)
    out = []
    for x in np.flatnonzero(counts.sum(axis=1) >= min_visits).tolist():
        n_x = counts[x].sum()
        result = pooled_chi2(counts[x], n_x * target.row(x))
        out.append((x, result.stat, result.dof))
    return out


STEPS = 200_000
CHAIN_CONFIG = RunConfig(vocab=24, c=5.0, K=4, tau=3.0, steps=STEPS, seed=31)


def chain_chunks(drafts: Callable[[int], ContextDraft]) -> tuple[BigramTarget, list[ChainChunk]]:
    target = load_target(CHAIN_CONFIG)
    return target, list(run_chain(target.row, target.pi, drafts, STEPS, random_stream(31, Stream.CHAIN)))


def test_chain_emissions_follow_the_target_row_of_each_context() -> None:
    target, proposer = setup(CHAIN_CONFIG)
    _, chunks = chain_chunks(proposer.draft)
    results = per_context_chi2(target, chunks, min_visits=2000)
    assert len(results) >= 15
    # given its context, each emission is an independent draw of p(. | x) (strong Markov property):
    # the per-context statistics add up to one χ² with the summed degrees of freedom
    total, dof = sum(r[1] for r in results), sum(r[2] for r in results)
    assert chi2_sf(total, dof) > ALPHA
    assert min(chi2_sf(stat, d) for _, stat, d in results) > ALPHA / len(results)
    # and the marginal of the emitted tokens is π
    emitted = np.bincount(joined(chunks).emitted, minlength=target.V).astype(np.float64)
    assert pooled_chi2(emitted, STEPS * target.pi).p_value > ALPHA


def test_chain_chi2_catches_a_tsu_sampling_other_than_it_reports() -> None:
    target, proposer = setup(CHAIN_CONFIG)
    cooler = Proposer(target.row, CHAIN_CONFIG.K, 1.0, CHAIN_CONFIG.eps)  # τ = 1 instead of the reported 3

    def liar(x: int) -> ContextDraft:
        honest = proposer.draft(x)
        return dataclasses.replace(honest, tsu=SamplesElsewhereTSU(honest.tsu, cooler.draft(x).tsu.q))

    # expected shift of the emissions of every context, at half the visits it gets under π
    lam, dof = 0.0, 0
    for x in range(target.V):
        law = emitted_law(target.row(x), cooler.draft(x).tsu.q, proposer.draft(x).tsu.q)
        lam_x, dof_x = noncentrality(law, target.row(x), int(0.5 * STEPS * target.pi[x]))
        lam, dof = lam + lam_x, dof + dof_x
    assert miss_probability(lam, dof) < 1e-9  # λ ≈ 4.9e3 on 358 dof: a miss has probability ~0
    _, chunks = chain_chunks(liar)
    results = per_context_chi2(target, chunks, min_visits=2000)
    total, dof = sum(r[1] for r in results), sum(r[2] for r in results)
    assert chi2_sf(total, dof) < ALPHA


def test_start_token_follows_pi() -> None:
    target = load_target(RunConfig(vocab=30, c=2.0))
    n = 20_000
    starts = np.array([start_token(target.pi, random_stream(seed, Stream.CHAIN)) for seed in range(n)])
    counts = np.bincount(starts, minlength=30).astype(np.float64)
    assert pooled_chi2(counts, n * target.pi).p_value > ALPHA
    uniform = np.full(30, 1 / 30)  # negative control: a uniform start would be caught
    lam, dof = noncentrality(uniform, target.pi, n)
    assert miss_probability(lam, dof) < 1e-9
    # the chain's first context is that start token (the stream's first uniform)
    proposer = Proposer(target.row, 8, 1.0, "auto")
    for seed in range(5):
        first = next(run_chain(target.row, target.pi, proposer.draft, 3, random_stream(seed, Stream.CHAIN)))
        assert int(first.prev[0]) == starts[seed]


def test_a_misreported_log_q_is_refused_by_every_path() -> None:
    class Misreporting(SimTSU):
        def report_log_q(self, tokens: NDArray[np.int64]) -> NDArray[np.float64]:
            return super().report_log_q(tokens) * (1 + 1e-12)

    target, proposer = setup(RunConfig(vocab=16, K=4))

    def drafts(x: int) -> ContextDraft:
        honest = proposer.draft(x)
        return dataclasses.replace(honest, tsu=Misreporting(honest.tsu.payload))

    with pytest.raises(ReportError):
        run_chain_reference(target.row, target.pi, drafts, 50, np.random.default_rng(0))
    with pytest.raises(ReportError) as info:
        list(run_chain(target.row, target.pi, drafts, 50, np.random.default_rng(0)))
    assert info.value.step == 0
    with pytest.raises(ReportError):
        fixed_context_draws(target.row(3), drafts(3), 50, np.random.default_rng(0))


def assert_same_tally(a: RunTally, b: RunTally) -> None:
    assert (a.steps, a.accepted) == (b.steps, b.accepted)
    for field in ("context_counts", "emitted_counts", "transitions"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@pytest.mark.parametrize("backend", ["python", "auto"])
@pytest.mark.parametrize("options", [{"vocab": 64}, {"vocab": 2000, "K": 16}])  # dense tables; compact ones
def test_run_chain_counts_every_chunk_into_a_tally(backend: str, options: dict[str, object]) -> None:
    """``run_chain(..., tally=)`` counts what `RunTally.update` of each yielded chunk counts."""
    run = prepare_run(RunConfig(seed=4, **options))  # type: ignore[arg-type]
    target, sparse = run.target, sparse_rows(run)
    assert (sparse is None) == (target.V == 64)
    counted, updated = RunTally(target.V, track_transitions=True), RunTally(target.V, track_transitions=True)
    for chunk in run_chain(target.row, target.pi, run.proposer.draft, 3000, random_stream(4, Stream.CHAIN),
                           chunk=700, backend=backend, sparse=sparse, tally=counted):  # type: ignore[arg-type]
        updated.update(chunk)
        assert counted.steps == updated.steps  # counted before it is yielded
    assert_same_tally(counted, updated)


def test_a_chunk_refused_by_the_report_check_is_not_counted() -> None:
    """A TSU lying about one token: the chunks before the lie are counted, the refused one is not."""
    target, proposer = setup(RunConfig(vocab=32, K=8, seed=3))
    ref = run_chain_reference(target.row, target.pi, proposer.draft, 3000, random_stream(3, Stream.CHAIN))
    liar = int(ref.proposed[1500])
    first = int(np.flatnonzero(ref.proposed == liar)[0])

    class OneLie(SimTSU):
        def report_log_q(self, tokens: NDArray[np.int64]) -> NDArray[np.float64]:
            out: NDArray[np.float64] = super().report_log_q(tokens).copy()
            out[tokens == liar] += 0.5
            return out

    def drafts(x: int) -> ContextDraft:
        honest = proposer.draft(x)
        return dataclasses.replace(honest, tsu=OneLie(honest.tsu.payload))

    backends: tuple[Backend, ...] = ("python", "auto")
    for backend in backends:
        tally = RunTally(target.V, track_transitions=True)
        with pytest.raises(ReportError) as caught:
            for _ in run_chain(target.row, target.pi, drafts, 3000, random_stream(3, Stream.CHAIN), chunk=256,
                               backend=backend, tally=tally):
                pass
        assert caught.value.step == first
        kept = first // 256 * 256
        expected = RunTally(target.V, track_transitions=True)
        expected.update(ChainChunk(start=0, prev=ref.prev[:kept], proposed=ref.proposed[:kept],
                                   emitted=ref.emitted[:kept], accepted=ref.accepted[:kept]))
        assert_same_tally(tally, expected)
