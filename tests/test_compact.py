"""Compact tables for sparse rows: the same tokens as the dense tables and the reference, O(K + s) per context."""

from __future__ import annotations

import dataclasses
from bisect import bisect_right

import numpy as np
import pytest

from thermospec.core.acceptance import acceptance_ratio, residual_cdf
from thermospec.core.payload import EpsSpec, PayloadError, craft_payload, craft_payload_from_support, encode_payload
from thermospec.core.proposal import draft_cdf
from thermospec.core.sampling import last_positive
from thermospec.core.statistics import chi2_sf, pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import run_chain, run_chain_reference
from thermospec.engine.compact import (
    CompactStepper,
    CompactStepTables,
    CompactTables,
    compact_source,
    compact_tables,
)
from thermospec.engine.kernels import compiled_module
from thermospec.engine.sparse import SparseProposer, draft_for_support
from thermospec.engine.step import step_tokens
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import prepare_run, sparse_rows
from thermospec.runs.targets import load_target
from thermospec.targets.synthetic import DENSE_VOCAB_MAX, LazySyntheticTarget
from thermospec.tsu.drafts import draft_for_row
from thermospec.tsu.faults import Fault, FaultyProposer
from thermospec.tsu.sim import SimTSU

V_LAZY = DENSE_VOCAB_MAX + 904  # 5,000: lazy rows, small enough for the dense reference


def sparse_row(rng: np.random.Generator, V: int, s: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.sort(rng.choice(V, size=s, replace=False)).astype(np.int64)
    probs = rng.dirichlet(np.full(s, 0.3))
    if ties:
        probs = np.round(probs * 8) + 1.0  # many equal probabilities: the lower id must win
        probs /= probs.sum()
    return tokens, probs


def dense(tokens: np.ndarray, probs: np.ndarray, V: int) -> np.ndarray:
    p = np.zeros(V)
    p[tokens] = probs
    return p


PAYLOAD_CASES = [
    (64, 1.0, "auto"), (1, 1.0, "auto"), (8, 0.05, "auto"), (8, 20.0, 0.0), (300, 1.0, 1e-30), (40, 0.7, 1e-7),
    (16, 1.0, 1.4e-45),  # the smallest float32 eps: tail tokens of (almost) zero width
]


@pytest.mark.parametrize(("K", "tau", "eps"), PAYLOAD_CASES)
def test_craft_from_support_sends_the_dense_bytes(K: int, tau: float, eps: EpsSpec) -> None:
    rng = np.random.default_rng(K)
    for trial in range(20):
        tokens, probs = sparse_row(rng, 3000, int(rng.integers(1, 200)), ties=trial % 2 == 0)
        p = dense(tokens, probs, 3000)
        assert encode_payload(craft_payload_from_support(tokens, probs, 3000, K, tau, eps)) == encode_payload(
            craft_payload(p, K, tau, eps)
        )


def test_craft_from_support_refuses_bad_supports() -> None:
    with pytest.raises(PayloadError, match="strictly increasing"):
        craft_payload_from_support(np.array([3, 1]), np.array([0.5, 0.5]), 10, 2, 1.0)
    with pytest.raises(PayloadError, match="> 0"):
        craft_payload_from_support(np.array([1, 3]), np.array([1.0, 0.0]), 10, 2, 1.0)
    with pytest.raises(PayloadError, match="strictly increasing"):
        craft_payload_from_support(np.array([1, 10]), np.array([0.5, 0.5]), 10, 2, 1.0)


def test_draft_cdf_is_the_running_sum_of_q_up_to_rounding() -> None:
    rng = np.random.default_rng(0)
    tokens, probs = sparse_row(rng, 2000, 150)
    tsu = SimTSU(craft_payload_from_support(tokens, probs, 2000, 32, 1.0, "auto"))
    cdf = draft_cdf(tsu.payload)
    assert np.all(np.diff(cdf) >= 0)
    np.testing.assert_allclose(cdf, np.cumsum(tsu.q), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(tsu.cdf, cdf)


def dense_step(p: np.ndarray, tsu: SimTSU, u: tuple[float, float, float]) -> tuple[int, int, bool]:
    cdf = tsu.cdf
    y = min(bisect_right(cdf.tolist(), u[0] * cdf[-1]), last_positive(cdf))
    if u[1] < acceptance_ratio(p, tsu.q)[y]:
        return y, y, True
    rc = residual_cdf(p, tsu.q)
    return y, min(bisect_right(rc.tolist(), u[2] * rc[-1]), last_positive(rc)), False


def boundary_uniforms(tables: CompactTables, cdf: np.ndarray, rng: np.random.Generator) -> list[float]:
    """Uniforms landing on, just below and just above CDF values (where a wrong rounding shows)."""
    total = float(cdf[-1])
    picks = rng.choice(cdf.shape[0], size=60)
    out = [0.0, float(np.nextafter(1.0, 0.0))]
    for v in picks.tolist() + tables.ids.tolist()[:20]:
        u = float(cdf[v]) / total
        out += [u, float(np.nextafter(u, 0.0)), float(np.nextafter(u, 1.0))]
    randoms: list[float] = rng.random(200).tolist()
    return [u for u in out if 0.0 <= u < 1.0] + randoms


@pytest.mark.parametrize(("K", "tau", "eps"), PAYLOAD_CASES)
def test_compact_step_equals_the_dense_step(K: int, tau: float, eps: EpsSpec) -> None:
    rng = np.random.default_rng(100 + K)
    V = 3000
    for _ in range(6):
        tokens, probs = sparse_row(rng, V, int(rng.integers(1, 256)))
        p = dense(tokens, probs, V)
        tsu = SimTSU(craft_payload(p, K, tau, eps))
        tables = compact_tables(tokens, probs, tsu.payload)
        assert tables.draft_total == tsu.cdf[-1]
        assert tables.draft_last == last_positive(tsu.cdf)
        steps = CompactStepTables(tables)
        for u in boundary_uniforms(tables, tsu.cdf, rng):
            assert steps.draft_token(u) == dense_step(p, tsu, (u, 0.5, 0.5))[0]
        for u3 in rng.random((300, 3)).tolist():
            assert step_tokens(steps, *u3) == dense_step(p, tsu, (u3[0], u3[1], u3[2]))


def test_all_zero_residual_draws_from_p() -> None:
    """q = p on the ids and no tail: the residual is all 0 and a rejection (u_accept >= 1 never
    happens; forced here) draws from p, exactly as the dense table does."""
    tokens, probs = np.array([2, 5, 9]), np.full(3, 1.0 / 3.0)
    p = dense(tokens, probs, 12)
    tsu = SimTSU(craft_payload(p, 3, 1.0, 0.0))  # all codes 0, no tail: q = p bit for bit
    tables = compact_tables(tokens, probs, tsu.payload)
    np.testing.assert_array_equal(tables.residual_cum, np.cumsum(probs))
    for u in np.linspace(0, 0.999, 50).tolist():
        assert step_tokens(CompactStepTables(tables), 0.3, 1.0, u) == dense_step(p, tsu, (0.3, 1.0, u))


def test_supports_are_the_dense_rows() -> None:
    target = load_target(RunConfig(vocab=V_LAZY))
    assert isinstance(target, LazySyntheticTarget)
    for x in range(0, V_LAZY, 61):
        tokens, probs = target.support(x)
        p = target.row(x)
        np.testing.assert_array_equal(tokens, np.flatnonzero(p))
        np.testing.assert_array_equal(probs, p[tokens])
    with pytest.raises(IndexError):
        target.support(V_LAZY)


def test_sparse_drafts_match_dense_drafts() -> None:
    target = load_target(RunConfig(vocab=V_LAZY, seed=4))
    assert isinstance(target, LazySyntheticTarget)
    for x in range(0, V_LAZY, 211):
        cases: list[tuple[int, float, EpsSpec]] = [(64, 1.0, "auto"), (4, 0.5, 1e-6)]
        for K, tau, eps in cases:
            tokens, probs = target.support(x)
            a = draft_for_support(tokens, probs, V_LAZY, x, K, tau, eps)
            b = draft_for_row(target.row(x), x, K, tau, eps)
            assert a.payload_bytes == b.payload_bytes
            assert a.topk_mass == b.topk_mass
            assert a.ce_gap_nats == b.ce_gap_nats
            assert a.overlap_mass == pytest.approx(b.overlap_mass, rel=1e-13, abs=1e-15)


CHAIN_CASES = [
    RunConfig(vocab=V_LAZY, K=64, seed=7), RunConfig(vocab=V_LAZY, K=8, tau=0.5, eps=0.0, seed=8),
    RunConfig(vocab=V_LAZY, K=300, tau=2.0, eps=1e-7, seed=9), RunConfig(vocab=V_LAZY, K=1, seed=10),
]


@pytest.mark.parametrize("config", CHAIN_CASES, ids=lambda c: f"K{c.K}-tau{c.tau}-eps{c.eps}")
def test_compact_chain_equals_dense_and_reference(config: RunConfig) -> None:
    run = prepare_run(config)
    sparse = sparse_rows(run)
    assert sparse is not None
    target, drafts = run.target, run.proposer.draft

    def tokens(**kw: object) -> tuple[np.ndarray, np.ndarray]:
        chunks = list(run_chain(target.row, target.pi, drafts, 2500, random_stream(config.seed, Stream.CHAIN),
                                chunk=700, **kw))  # type: ignore[arg-type]
        return np.concatenate([c.proposed for c in chunks]), np.concatenate([c.emitted for c in chunks])

    dense_tokens = tokens()
    ref = run_chain_reference(target.row, target.pi, drafts, 500, random_stream(config.seed, Stream.CHAIN))
    np.testing.assert_array_equal(dense_tokens[1][:500], ref.emitted)
    np.testing.assert_array_equal(dense_tokens[0][:500], ref.proposed)
    for backend in ("python", "auto"):
        compact = tokens(sparse=sparse, backend=backend)
        np.testing.assert_array_equal(compact[0], dense_tokens[0])
        np.testing.assert_array_equal(compact[1], dense_tokens[1])
    evicting = tokens(sparse=sparse, max_table_bytes=40 * 8 * 800)
    np.testing.assert_array_equal(evicting[1], dense_tokens[1])


@pytest.mark.skipif(compiled_module() is None, reason="the compiled kernel thermospec._kernels is not built")
def test_compiled_and_python_steppers_agree_with_evictions() -> None:
    run = prepare_run(RunConfig(vocab=V_LAZY, K=16, seed=11))
    sparse = sparse_rows(run)
    assert sparse is not None
    source = compact_source(sparse.support, run.proposer.draft)
    u = np.random.default_rng(5).random((5_000, 3))
    small = 12 * (8 * (2 * 16 + 1 + 2 * 256) + 4 * (16 + 256) + 72)  # about a dozen slots
    compiled = CompactStepper(V_LAZY, source, 16, 256, "compiled", max_bytes=small)
    python = CompactStepper(V_LAZY, source, 16, 256, "python", max_bytes=small)
    assert compiled.cache is not None and compiled.cache.slots < 20
    (a, x_a), (b, x_b) = compiled.steps(u, 0), python.steps(u, 0)
    assert x_a == x_b
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left, right)
    assert compiled.cache.builds > compiled.cache.slots  # contexts were evicted and rebuilt


def test_compact_path_refuses_a_tsu_that_does_not_sample_its_payload() -> None:
    run = prepare_run(RunConfig(vocab=V_LAZY, seed=3))
    faulty = FaultyProposer(run.proposer, Fault.parse("bias:0.05"), V_LAZY)
    assert sparse_rows(dataclasses.replace(run, proposer=faulty)) is None  # the run falls back to dense tables
    sparse = sparse_rows(run)
    assert sparse is not None
    with pytest.raises(TypeError, match="does not sample F"):
        compact_source(sparse.support, faulty.draft)(0)


def test_sparse_proposer_bounds_its_cache() -> None:
    target = load_target(RunConfig(vocab=V_LAZY))
    assert isinstance(target, LazySyntheticTarget)
    proposer = SparseProposer(target.row, target.support, V_LAZY, 16, 1.0, "auto", capacity=20)
    first = proposer.draft(0).payload_bytes
    for x in range(1, 100):
        proposer.draft(x)
    assert proposer.cached() == 20
    assert proposer.draft(0).payload_bytes == first  # crafted again to the same bytes


def transition_counts(emitted: np.ndarray, prev: np.ndarray, x: int, V: int) -> np.ndarray:
    return np.bincount(emitted[prev == x], minlength=V).astype(np.float64)


def test_compact_chain_emits_the_target_with_a_negative_control() -> None:
    """χ² of next-token counts after the likeliest contexts vs p(.|x) on the compact path; the same
    chain with a wrong residual (drawn from p instead of p - min(p, q): the classic bug) fails."""
    run = prepare_run(RunConfig(vocab=V_LAZY, K=4, tau=2.0, seed=12))  # a poor draft: many rejections
    target = run.target
    sparse = sparse_rows(run)
    assert sparse is not None
    source = compact_source(sparse.support, run.proposer.draft)

    def wrong(x: int) -> CompactTables:
        tb = source(x)
        _, probs = sparse.support(x)
        return dataclasses.replace(tb, residual_cum=np.cumsum(probs), residual_last=int(probs.shape[0] - 1))

    def p_value(stepper: CompactStepper) -> float:
        """One χ² over the 40 most visited contexts (their statistics and degrees of freedom added)."""
        u = random_stream(12, Stream.CHAIN).random((300_000, 3))
        (prev, _, emitted, accepted), _ = stepper.steps(u, int(np.argmax(target.pi)))
        assert 0.1 < accepted.mean() < 0.9
        visits = np.bincount(prev, minlength=target.V)
        stat, dof = 0.0, 0
        for x in np.argsort(-visits)[:40].tolist():
            result = pooled_chi2(transition_counts(emitted, prev, x, target.V), int(visits[x]) * target.row(x))
            stat, dof = stat + result.stat, dof + result.dof
        return chi2_sf(stat, dof)

    assert p_value(CompactStepper(target.V, source, 4, 256)) > 1e-3
    assert p_value(CompactStepper(target.V, wrong, 4, 256)) < 1e-9


def test_large_dense_targets_step_on_compact_tables_with_the_same_tokens() -> None:
    from thermospec.runs.targets import COMPACT_ABOVE_V

    assert sparse_rows(prepare_run(RunConfig())) is None  # V = 256: dense tables
    run = prepare_run(RunConfig(vocab=COMPACT_ABOVE_V + 500, K=32, seed=5))
    sparse = sparse_rows(run)
    assert sparse is not None
    target = run.target
    outputs = []
    for rows in (None, sparse):
        chunks = run_chain(target.row, target.pi, run.proposer.draft, 3000, random_stream(5, Stream.CHAIN), sparse=rows)
        outputs.append(np.concatenate([c.emitted for c in chunks]))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_only_visited_contexts_are_built() -> None:
    """A short chain at large V builds the tables of the contexts it visits, not their neighbours."""
    run = prepare_run(RunConfig(vocab=V_LAZY, K=16, seed=13))
    sparse = sparse_rows(run)
    assert sparse is not None and sparse.tables is not None
    for backend in ("compiled", "python"):
        if backend == "compiled" and compiled_module() is None:
            continue
        stepper = CompactStepper(V_LAZY, sparse.tables, 16, 256, backend)
        (prev, _, _, _), _ = stepper.steps(np.random.default_rng(2).random((300, 3)), 0)
        visited = np.unique(prev).size
        built = stepper.cache.builds if stepper.cache is not None else len(stepper.lists)
        assert built == visited < 300
