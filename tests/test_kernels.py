"""The compiled kernel and its fallback emit exactly the reference chain's tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from thermospec.core.acceptance import acceptance_ratio, residual_cdf
from thermospec.core.sampling import inverse_cdf
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import run_chain, run_chain_reference, table_source
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.kernels import (
    DEFAULT_TABLE_BYTES,
    ChainStepper,
    OutputPool,
    StepCounts,
    TableCache,
    TableSource,
    compiled_module,
    guide_size,
    guide_table,
    pcg64_state,
    resolve_backend,
    set_pcg64_state,
    slot_bytes,
)
from thermospec.engine.step import DenseStepTables, step_tokens, vector_steps
from thermospec.runs.config import RunConfig
from thermospec.runs.targets import load_target
from thermospec.tsu.drafts import Proposer

needs_compiled = pytest.mark.skipif(compiled_module() is None, reason="thermospec._kernels is not built")
BACKENDS = ["python", pytest.param("compiled", marks=needs_compiled)]


def _joined(chunks: list[ChainChunk]) -> dict[str, NDArray[np.generic]]:
    return {f: np.concatenate([getattr(c, f) for c in chunks]) for f in ("prev", "proposed", "emitted", "accepted")}


def _assert_same(chunks: list[ChainChunk], ref: ChainChunk) -> None:
    got = _joined(chunks)
    for field, values in got.items():
        np.testing.assert_array_equal(values, getattr(ref, field), err_msg=field)
    assert [c.start for c in chunks] == list(np.cumsum([0] + [len(c) for c in chunks[:-1]]))


SETTINGS = [
    {},
    {"K": 1},
    {"eps": 0.0},
    {"tau": 0.3},
    {"tau": 3.0},
    {"K": 8, "eps": 0.0, "tau": 0.3},
    {"vocab": 40, "c": 0.5},  # peaked rows with exact zeros
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", SETTINGS)
@pytest.mark.parametrize("seed", [7, 11, 12345])
def test_synthetic_chain_matches_reference(backend: str, options: dict[str, object], seed: int) -> None:
    config = RunConfig(**{"vocab": 64, "steps": 1500, "seed": seed, **options})  # type: ignore[arg-type]
    target = load_target(config)
    proposer = Proposer(target.row, config.K, config.tau, config.eps)
    ref = run_chain_reference(target.row, target.pi, proposer.draft, config.steps,
                              random_stream(seed, Stream.CHAIN))
    chunks = list(run_chain(target.row, target.pi, proposer.draft, config.steps,
                            random_stream(seed, Stream.CHAIN), chunk=577, backend=backend))  # type: ignore[arg-type]
    _assert_same(chunks, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [{"K": 64}, {"K": 1}, {"K": 8, "eps": 0.0}, {"K": 8, "tau": 3.0}])
def test_corpus_chain_matches_reference(shakespeare: Path, backend: str, options: dict[str, object]) -> None:
    config = RunConfig(corpus=str(shakespeare), steps=1500, **options)  # type: ignore[arg-type]
    target = load_target(config)
    proposer = Proposer(target.row, config.K, config.tau, config.eps)
    ref = run_chain_reference(target.row, target.pi, proposer.draft, config.steps, random_stream(7, Stream.CHAIN))
    chunks = list(run_chain(target.row, target.pi, proposer.draft, config.steps, random_stream(7, Stream.CHAIN),
                            chunk=400, backend=backend))  # type: ignore[arg-type]
    _assert_same(chunks, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_table_budget_evicts_and_still_matches(backend: str) -> None:
    """One or a few slots: every miss evicts, and the tokens are unchanged."""
    config = RunConfig(vocab=48, steps=2000, seed=3)
    target = load_target(config)
    proposer = Proposer(target.row, config.K, config.tau, config.eps)
    ref = run_chain_reference(target.row, target.pi, proposer.draft, config.steps, random_stream(3, Stream.CHAIN))
    for budget in (1, 3 * slot_bytes(48)):
        chunks = list(run_chain(target.row, target.pi, proposer.draft, config.steps, random_stream(3, Stream.CHAIN),
                                chunk=999, backend=backend, max_table_bytes=budget))  # type: ignore[arg-type]
        _assert_same(chunks, ref)


def test_table_cache_is_bounded_and_lru() -> None:
    V = 32
    calls: list[int] = []

    def source(x: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        calls.append(x)
        cdf = np.cumsum(np.full(V, 1.0 / V))
        return cdf, np.ones(V), cdf

    cache = TableCache(V, source, max_bytes=4 * slot_bytes(V))
    assert cache.slots == 4
    assert cache.nbytes < 5 * slot_bytes(V) + 64 * V
    for clock, x in enumerate([0, 1, 2, 3]):
        cache.last_used[cache.load(x)] = clock
    cache.last_used[cache.load(0)] = 10  # 0 is now the most recent; 1 is the least recent
    cache.load(9)
    assert cache.slot_of[1] == -1 and cache.slot_of[0] >= 0 and cache.slot_of[9] >= 0
    assert calls == [0, 1, 2, 3, 9]
    assert not cache.load_all()


@pytest.mark.parametrize("V", [2, 3, 7, 64, 100, 1000])
def test_guide_table_brackets_every_draw(V: int) -> None:
    """The guide's bracket holds the full search's answer for adversarial cdfs and edge uniforms."""
    rng = np.random.default_rng(V)
    weights = [
        rng.dirichlet(np.full(V, 0.05)),  # many exact or near zeros
        np.r_[np.zeros(V - 1), 1.0],  # all mass on the last token
        np.r_[1.0, np.zeros(V - 1)],  # all mass on the first token
        np.full(V, 1e-300),  # tiny, equal weights
        rng.random(V) * np.where(rng.random(V) < 0.5, 0.0, 1.0) + np.r_[1.0, np.zeros(V - 1)],
    ]
    G = guide_size(V)
    assert G >= V and G & (G - 1) == 0
    edges = np.r_[np.arange(G) / G, np.nextafter(np.arange(1, G + 1) / G, 0.0), 0.0, np.nextafter(1.0, 0.0)]
    for w in weights:
        cdf = np.cumsum(w)
        guide = guide_table(cdf, G)
        u = np.r_[rng.random(20_000), edges]
        answer = np.searchsorted(cdf, u * cdf[-1], side="right")
        k = np.floor(u * G).astype(np.int64)
        assert np.all(guide[k] <= answer) and np.all(answer <= guide[k + 1])


@needs_compiled
def test_compiled_edge_uniforms_match_python() -> None:
    """Uniforms at bucket edges and just below 1 give the same tokens on both steppers."""
    V = 50
    rng = np.random.default_rng(5)
    rows = rng.dirichlet(np.full(V, 0.3), size=V)
    q_rows = rng.dirichlet(np.full(V, 0.3), size=V)

    def source(x: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        p, q = rows[x], q_rows[x]
        ratio = np.divide(p, q, out=np.zeros(V), where=q > 0)
        return np.cumsum(q), ratio, np.cumsum(p - np.minimum(p, q))

    compiled = ChainStepper(V, source, "compiled")
    assert compiled.cache is not None
    G = compiled.cache.G  # the finer guides of a cache holding every context (the edges of guide_size(V)'s too)
    assert guide_size(V) < G
    edges = np.r_[np.arange(G) / G, np.nextafter(np.arange(1, G + 1) / G, 0.0), np.nextafter(1.0, 0.0), 0.0]
    u: NDArray[np.float64] = np.stack([rng.permutation(edges) for _ in range(3)], axis=1).astype(np.float64)
    u = np.concatenate([u, rng.random((5000, 3))]).astype(np.float64)
    got_c, x_c = compiled.steps(u, 3)
    got_p, x_p = ChainStepper(V, source, "python").steps(u, 3)
    assert x_c == x_p
    for a, b in zip(got_c, got_p, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_one_step_rule_and_its_vector_form_are_the_specification() -> None:
    """`step_tokens` on dense tables and `vector_steps` are `accept_correct_step`'s rule, bit for bit,
    on uniforms at CDF values (where a wrong comparison or rounding shows), with exact zeros and p = q."""
    V = 40
    rng = np.random.default_rng(11)
    p_rows = rng.dirichlet(np.full(V, 0.2), size=6)
    q_rows = rng.dirichlet(np.full(V, 0.2), size=6)
    q_rows[0] = p_rows[0]  # all-zero residual: a rejection draws from p
    p_rows[1, ::3] = 0.0
    p_rows[1] /= p_rows[1].sum()
    for p, q in zip(p_rows, q_rows, strict=True):
        draft_cdf, ratio, res_cdf = np.cumsum(q), acceptance_ratio(p, q), residual_cdf(p, q)
        edges = np.r_[draft_cdf / draft_cdf[-1], res_cdf / res_cdf[-1], ratio[ratio < 1], 0.0]
        edges = np.unique(np.r_[edges, np.nextafter(edges, 0.0), np.nextafter(edges, 1.0)])
        edges = edges[(edges >= 0.0) & (edges < 1.0)]
        u = np.concatenate([np.stack([rng.permutation(edges) for _ in range(3)], axis=1), rng.random((2000, 3))])
        y = inverse_cdf(draft_cdf, u[:, 0])
        ok = u[:, 1] < ratio[y]
        expected = np.where(ok, y, inverse_cdf(res_cdf, u[:, 2]))
        tables = DenseStepTables(draft_cdf, ratio, res_cdf)
        got = np.array([step_tokens(tables, *row) for row in u.tolist()], dtype=np.int64)
        np.testing.assert_array_equal(got[:, 0], y)
        np.testing.assert_array_equal(got[:, 1], expected)
        np.testing.assert_array_equal(got[:, 2].astype(bool), ok)
        flat = np.concatenate([draft_cdf, ratio, res_cdf])
        at = np.zeros(u.shape[0], dtype=np.int64)
        totals = np.array([[draft_cdf[-1], res_cdf[-1]]])[at]
        lasts = np.array([[int(np.argmax(draft_cdf == draft_cdf[-1])), int(np.argmax(res_cdf == res_cdf[-1]))]])[at]
        vy, ve, vok = vector_steps(flat, at, V, totals, lasts, u)
        np.testing.assert_array_equal(vy, y)
        np.testing.assert_array_equal(ve, expected)
        np.testing.assert_array_equal(vok, ok)


def test_fallback_kicks_in_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THERMOSPEC_KERNEL", "python")
    assert compiled_module() is None
    assert resolve_backend("auto") is None
    with pytest.raises(RuntimeError, match="not built"):
        resolve_backend("compiled")
    stepper = ChainStepper(4, lambda x: (np.cumsum(np.full(4, 0.25)), np.ones(4), np.cumsum(np.full(4, 0.25))))
    assert stepper.backend == "python"


@needs_compiled
def test_compiled_rejects_short_buffers() -> None:
    module = compiled_module()
    assert module is not None
    cache = TableCache(4, lambda x: (np.cumsum(np.full(4, 0.25)), np.ones(4), np.cumsum(np.full(4, 0.25))))
    out = np.empty(2, dtype=np.int64)
    with pytest.raises(ValueError, match="buffer too small"):
        module.chain(cache.tables, cache.totals, cache.lasts, cache.slot_of, cache.guides, cache.last_used,
                     np.empty((1, 3)), out, out, out, np.empty(2, dtype=np.bool_), 4, cache.G, 0, 2, 0, 0)


def _stepper_source(V: int, seed: int) -> tuple[Proposer, TableSource]:
    config = RunConfig(vocab=V, K=8, seed=seed)
    target = load_target(config)
    proposer = Proposer(target.row, config.K, config.tau, config.eps)
    return proposer, table_source(target.row, proposer.draft)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [np.random.PCG64, np.random.Philox])
@pytest.mark.parametrize("budget", [DEFAULT_TABLE_BYTES, 3 * slot_bytes(48)])
def test_drawn_uniforms_are_numpys(backend: str, bits: type[np.random.BitGenerator], budget: int) -> None:
    """A stepper drawing its own uniforms emits the tokens of ``rng.random((n, 3))`` and leaves rng as NumPy would.

    (With three slots, the kernel stops at evicted contexts and resumes mid-chunk.)
    """
    _, source = _stepper_source(48, 4)
    drawn = ChainStepper(48, source, backend, budget)  # type: ignore[arg-type]
    given = ChainStepper(48, source, backend, budget)  # type: ignore[arg-type]
    rng_drawn, rng_given = np.random.Generator(bits(9)), np.random.Generator(bits(9))
    x_drawn = x_given = 3
    for n in (1, 700, 1, 1500):
        got, x_drawn = drawn.draw_steps(rng_drawn, n, x_drawn)
        want, x_given = given.steps(rng_given.random((n, 3)), x_given)
        assert x_drawn == x_given
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_equal(rng_drawn.bit_generator.state, rng_given.bit_generator.state)
    assert rng_drawn.random() == rng_given.random()


def test_pcg64_state_round_trip() -> None:
    rng = np.random.default_rng(123)
    rng.random(5)
    words = pcg64_state(rng)
    state = rng.bit_generator.state["state"]
    assert (int(words[0]) << 64 | int(words[1]), int(words[2]) << 64 | int(words[3])) == (state["state"],
                                                                                         state["inc"])
    other = np.random.default_rng(0)
    set_pcg64_state(other, words)
    assert other.random(4).tolist() == rng.random(4).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transitions", [True, False])
@pytest.mark.parametrize("budget", [DEFAULT_TABLE_BYTES, 3 * slot_bytes(48)])
def test_counts_added_while_stepping_are_the_bincounts(backend: str, transitions: bool, budget: int) -> None:
    """The counts the kernel adds as it steps (even when it stops and resumes) are those of its outputs."""
    V = 48
    _, source = _stepper_source(V, 5)
    stepper = ChainStepper(V, source, backend, budget)  # type: ignore[arg-type]
    counts: StepCounts = (np.array([5], dtype=np.int64), np.ones(V, dtype=np.int64), np.full(V, 2, dtype=np.int64),
                          np.full(V * V, 3, dtype=np.int64) if transitions else None)
    rng = np.random.default_rng(5)
    x, prevs, emitted, accepted = 7, [], [], []
    for n in (1000, 1, 2000):
        (prev, _, tokens, ok), x = stepper.draw_steps(rng, n, x, counts)
        prevs.append(prev)
        emitted.append(tokens)
        accepted.append(ok)
    prev, tokens = np.concatenate(prevs), np.concatenate(emitted)
    assert counts[0][0] == 5 + np.count_nonzero(np.concatenate(accepted))
    np.testing.assert_array_equal(counts[1], 1 + np.bincount(prev, minlength=V))
    np.testing.assert_array_equal(counts[2], 2 + np.bincount(tokens, minlength=V))
    if counts[3] is not None:
        np.testing.assert_array_equal(counts[3], 3 + np.bincount(prev * V + tokens, minlength=V * V))


def test_a_cache_that_holds_every_context_puts_context_x_in_slot_x() -> None:
    V = 16
    _, source = _stepper_source(V, 6)
    whole = TableCache(V, source)
    assert whole.identity
    assert [whole.load(x) for x in (9, 2, 15)] == [9, 2, 15]
    assert whole.load_all() and whole.slot_of.tolist() == list(range(V)) and whole.filled == V
    part = TableCache(V, source, max_bytes=4 * slot_bytes(V))
    assert not part.identity
    assert [part.load(x) for x in (9, 2, 15)] == [0, 1, 2]


@needs_compiled
def test_the_compiled_stepper_stamps_last_use_only_when_slots_can_be_evicted() -> None:
    """An evicting cache gets each step's clock in its slots; a slot per context is never stamped (nor evicted)."""
    V, n = 16, 500
    _, source = _stepper_source(V, 6)
    for budget, identity in ((DEFAULT_TABLE_BYTES, True), (4 * slot_bytes(V), False)):
        stepper = ChainStepper(V, source, "compiled", budget)
        assert stepper.cache is not None and stepper.cache.identity == identity
        (prev, _, _, _), _ = stepper.draw_steps(np.random.default_rng(2), n, 0)
        used = stepper.cache.last_used
        if identity:
            assert (used == -1).all()
        else:  # a slot's stamp is the last step from its context
            last = {int(x): t for t, x in enumerate(prev.tolist())}
            for slot, x in enumerate(stepper.cache.context_of.tolist()):
                assert used[slot] == last.get(x, -1)


@needs_compiled
@pytest.mark.parametrize("V", [2, 7, 64, 100])
def test_compiled_table_finish_is_the_python_one(V: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Totals, lasts and guides filled by the kernel's `finish` are those of `guide_table` and `last_positive`."""
    rng = np.random.default_rng(V)
    sparse = rng.random(V) * np.where(rng.random(V) < 0.5, 0.0, 1.0) + np.r_[1.0, np.zeros(V - 1)]
    weights = [rng.dirichlet(np.full(V, 0.05)), np.r_[np.zeros(V - 1), 1.0], np.r_[1.0, np.zeros(V - 1)],
               np.full(V, 1e-300), sparse]

    def source(x: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        w = weights[x % len(weights)]
        return np.cumsum(w), np.ones(V), np.cumsum(weights[(x + 1) % len(weights)])

    compiled = TableCache(V, source)
    monkeypatch.setenv("THERMOSPEC_KERNEL", "python")
    python = TableCache(V, source)
    assert compiled._finish is not None and python._finish is None
    for x in range(V):
        compiled.load(x)
        python.load(x)
    for name in ("tables", "totals", "lasts", "guides", "slot_of"):
        np.testing.assert_array_equal(getattr(compiled, name), getattr(python, name), err_msg=name)


def test_output_pool_reuses_only_arrays_nothing_else_holds() -> None:
    pool = OutputPool()
    first = pool.take(10)
    ids = [id(a) for a in first]
    second = pool.take(10)
    assert not {id(a) for a in second} & set(ids)  # `first` is still held
    del first
    assert [id(a) for a in pool.take(10)] == ids  # dropped: its arrays come back
    third = pool.take(10)
    view = third[2][3:5]
    del third
    assert id(view.base) not in {id(a) for a in pool.take(10)}  # a view holds its set
    assert pool.take(7)[0].shape == (7,)
