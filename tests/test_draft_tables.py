"""N drafts per step on per-context tables: the compiled kernel and its fallback are the per-step reference."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from numpy.typing import NDArray

from thermospec.core.sampling import inverse_cdf
from thermospec.core.streams import Stream, random_stream
from thermospec.core.verifiers import VERIFIERS, VerifierTables, make_plan, verifier_tables
from thermospec.engine.chunks import DraftsChunk
from thermospec.engine.draft_tables import DraftsStepper, DraftTableSource
from thermospec.engine.drafts import draft_step, draft_table_source, fixed_context_drafts, plan_source, run_drafts
from thermospec.engine.kernels import Backend, compiled_module
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import PreparedRun, prepare_run
from thermospec.tsu.drafts import DraftSource

BACKENDS: tuple[Backend, ...] = ("python", "compiled") if compiled_module() is not None else ("python",)
FIELDS = ("prev", "proposed", "emitted", "accepted_index", "drafts_used")


@pytest.fixture(scope="module", params=[1, 3], ids=["K1", "K3"])
def small(request: pytest.FixtureRequest) -> PreparedRun:
    return prepare_run(RunConfig(vocab=12, c=2.0, K=request.param, tau=1.3, seed=4))


def arrays(chunks: Iterator[DraftsChunk]) -> list[NDArray[np.int64]]:
    got = list(chunks)
    return [np.concatenate([getattr(c, f) for c in got]) for f in FIELDS]


def run(run_: PreparedRun, drafts: DraftSource, row: object, n: int, verifier: str, backend: str,
        steps: int = 800, **kw: object) -> tuple[list[NDArray[np.int64]], float]:
    rng = random_stream(11, Stream.CHAIN)
    t = run_.target
    out = arrays(run_drafts(row, t.pi, drafts, n, verifier, steps, rng, chunk=401, backend=backend,  # type: ignore[arg-type]
                            **kw))  # type: ignore[arg-type]
    return out, float(rng.random())  # every path consumes the same uniforms: the streams end alike


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("verifier", VERIFIERS)
def test_tables_are_the_reference_token_for_token(small: PreparedRun, verifier: str, n: int) -> None:
    t = small.target
    reference, after = run(small, small.proposer.draft, t.row, n, verifier, "reference")
    for backend in BACKENDS:
        got, got_after = run(small, small.proposer.draft, t.row, n, verifier, backend)
        assert all(np.array_equal(a, b) for a, b in zip(reference, got, strict=True)), backend
        assert got_after == after
    assert (reference[3] >= 0).any() and (reference[3] < 0).any()  # both branches were taken


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_contexts_where_p_is_q(small: PreparedRun, verifier: str) -> None:
    """Even contexts' rows are F(ψ) itself: every residual is all zeros (no division by zero, no NaN)."""
    t, drafts = small.target, small.proposer.draft

    def row(x: int) -> NDArray[np.float64]:
        return drafts(x).tsu.q.copy() if x % 2 == 0 else t.row(x)

    for x in range(0, t.V, 2):
        tables = verifier_tables(make_plan(verifier, row(x), drafts(x).tsu.q, 3))
        assert np.isfinite(tables.ratios).all() and np.isfinite(tables.final_cdf).all()
    reference, after = run(small, drafts, row, 3, verifier, "reference")
    for backend in BACKENDS:
        got, got_after = run(small, drafts, row, 3, verifier, backend)
        assert all(np.array_equal(a, b) for a, b in zip(reference, got, strict=True)), backend
        assert got_after == after
    even = reference[0] % 2 == 0
    assert even.any() and (reference[3][even] >= 0).all()  # p = q: the first draft is always accepted


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_small_table_cache_evicts_and_gives_the_same_tokens(small: PreparedRun, backend: str) -> None:
    t = small.target
    full, _ = run(small, small.proposer.draft, t.row, 3, "optimal", backend)
    tight, _ = run(small, small.proposer.draft, t.row, 3, "optimal", backend, max_table_bytes=1)  # one slot
    assert all(np.array_equal(a, b) for a, b in zip(full, tight, strict=True))


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_next_key_table(small: PreparedRun, verifier: str) -> None:
    """Keys other than tokens: key k uses context k mod V's tables, next = table[k * V + emitted]."""
    t = small.target
    V, keys, n = t.V, 2 * t.V, 3
    source = draft_table_source(small.proposer.draft, plan_source(t.row, small.proposer.draft, verifier, n))

    def keyed(k: int) -> tuple[NDArray[np.float64], object]:
        return source(k % V)

    table = np.random.default_rng(2).integers(0, keys, size=keys * V).astype(np.int64)
    u = random_stream(3, Stream.CHAIN).random((3000, 2 * n + 1))
    python, _ = DraftsStepper(keys, V, n, verifier, keyed, "python", next_keys=table).steps(u, 5)  # type: ignore[arg-type]
    prev, emitted = python[0], python[2]
    assert np.array_equal(prev[1:], table[prev[:-1] * V + emitted[:-1]])
    assert prev.max() >= V  # keys beyond the tokens were visited
    if compiled_module() is not None:
        compiled, _ = DraftsStepper(keys, V, n, verifier, keyed, "compiled", next_keys=table).steps(u, 5)  # type: ignore[arg-type]
        assert all(np.array_equal(a, b) for a, b in zip(compiled, python, strict=True))


def test_a_bad_next_key_is_refused(small: PreparedRun) -> None:
    t = small.target
    source = draft_table_source(small.proposer.draft, plan_source(t.row, small.proposer.draft, "recursive", 2))
    table = np.full(t.V * t.V, t.V, dtype=np.int64)  # every next key is one past the last
    u = np.full((4, 5), 0.5)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="next"):
            DraftsStepper(t.V, t.V, 2, "recursive", source, backend, next_keys=table).steps(u, 0)


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_fixed_context_draws_on_tables_are_the_reference(small: PreparedRun, verifier: str) -> None:
    t, drafts = small.target, small.proposer.draft
    plans = plan_source(t.row, drafts, verifier, 3)
    fast = fixed_context_drafts(2, drafts, plans, 500, random_stream(1, Stream.CHECK))
    rng = random_stream(1, Stream.CHECK)
    steps = [draft_step(2, drafts, plans, rng, i) for i in range(500)]
    assert fast.emitted.tolist() == [e for e, _, _ in steps]
    assert fast.proposed.tolist() == [ys[0] for _, ys, _ in steps]
    assert fast.accepted_index.tolist() == [-1 if i is None else i for _, _, i in steps]


def one_context(cdf: NDArray[np.float64], tables: VerifierTables) -> DraftTableSource:
    """Every key's tables are these."""

    def source(_: int) -> tuple[NDArray[np.float64], VerifierTables]:
        return cdf, tables

    return source


@pytest.mark.parametrize("seed", range(4))
def test_random_rows_step_as_their_plans(seed: int) -> None:
    """Small V, N up to 6, rows with ties and zeros: each table-driven step is `plan.step` on the same uniforms."""
    rng = np.random.default_rng(seed)
    for _ in range(12):
        V, n = int(rng.integers(2, 7)), int(rng.integers(1, 7))
        p = rng.dirichlet(np.full(V, 0.4))
        q = p.copy() if rng.random() < 0.2 else rng.dirichlet(np.full(V, 0.6))
        p[rng.random(V) < 0.2] = 0.0
        if p.sum() == 0:
            p[0] = 1.0
        p /= p.sum()
        q = np.round(q, int(rng.integers(1, 4))) + 1e-3  # repeated ratios p/q: ties in the class order
        q /= q.sum()
        for verifier in VERIFIERS:
            plan = make_plan(verifier, p, q, n)
            cdf = np.cumsum(q)
            u = rng.random((400, 2 * n + 1))
            expected = []
            for row in u:
                drafts = inverse_cdf(cdf, row[:n])
                emitted, index = plan.step(drafts, row[n:])
                expected.append((emitted, -1 if index is None else index))
            for backend in BACKENDS:
                stepper = DraftsStepper(V, V, n, verifier, one_context(cdf, plan.tables()), backend,
                                        next_keys=np.zeros(V * V, dtype=np.int64))
                (_, _, emitted_, index_), _ = stepper.steps(u, 0)
                assert list(zip(emitted_.tolist(), index_.tolist(), strict=True)) == expected, (verifier, backend)
