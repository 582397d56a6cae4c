"""Batched chains: each chain is exactly the sequential chain on its own stream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from thermospec.cli.m1 import main
from thermospec.core.statistics import pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.batch import chain_stream, run_batch
from thermospec.engine.chain import run_chain
from thermospec.engine.chunks import BatchChunk
from thermospec.engine.kernels import Backend, compiled_module, pcg64_state, slot_bytes
from thermospec.engine.tally import BatchTally, RunTally
from thermospec.runs.config import RunConfig
from thermospec.runs.targets import load_target
from thermospec.targets.bigram import BigramTarget
from thermospec.tsu.drafts import Proposer

needs_compiled = pytest.mark.skipif(compiled_module() is None, reason="thermospec._kernels is not built")
BACKENDS = ["python", pytest.param("compiled", marks=needs_compiled)]
FIELDS = ("prev", "proposed", "emitted", "accepted")


def _setup(**options: object) -> tuple[BigramTarget, Proposer]:
    config = RunConfig(**options)  # type: ignore[arg-type]
    target = load_target(config)
    return target, Proposer(target.row, config.K, config.tau, config.eps)


def _chain_of(chunks: list[BatchChunk], b: int) -> dict[str, NDArray[np.generic]]:
    return {f: np.concatenate([getattr(c, f)[b] for c in chunks]) for f in FIELDS}


def test_chain_zero_is_the_single_chain_stream() -> None:
    np.testing.assert_array_equal(chain_stream(7, 0).random(8), random_stream(7, Stream.CHAIN).random(8))
    firsts = {float(chain_stream(7, b).random()) for b in range(64)}
    assert len(firsts) == 64  # distinct streams
    with pytest.raises(ValueError):
        chain_stream(7, -1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [{"vocab": 64}, {"vocab": 64, "K": 1}, {"vocab": 64, "eps": 0.0, "tau": 3.0}])
def test_every_chain_matches_run_chain(backend: str, options: dict[str, object]) -> None:
    target, proposer = _setup(**options)
    B, steps = 6, 900
    chunks = list(run_batch(target.row, target.pi, proposer.draft, steps, 11, B, chunk_tokens=B * 250,
                            backend=backend, threads=2))  # type: ignore[arg-type]
    assert [c.start for c in chunks] == [0, 250, 500, 750]
    for b in range(B):
        ref = list(run_chain(target.row, target.pi, proposer.draft, steps, chain_stream(11, b)))
        got = _chain_of(chunks, b)
        for f in FIELDS:
            np.testing.assert_array_equal(got[f], np.concatenate([getattr(c, f) for c in ref]), err_msg=f"{b} {f}")


@needs_compiled
def test_threads_chunking_and_backends_agree() -> None:
    target, proposer = _setup(vocab=32, seed=3)
    settings: list[tuple[Backend, int, int]] = [
        ("compiled", 1, 9 * 500), ("compiled", 2, 9 * 77), ("python", 1, 9 * 500),
    ]
    runs = [
        list(run_batch(target.row, target.pi, proposer.draft, 500, 3, 9, chunk_tokens=tokens, backend=be,
                       threads=threads))
        for be, threads, tokens in settings
    ]
    for b in range(9):
        first = _chain_of(runs[0], b)
        for other in runs[1:]:
            for f in FIELDS:
                np.testing.assert_array_equal(first[f], _chain_of(other, b)[f])


@pytest.mark.parametrize("backend", BACKENDS)
def test_tables_that_do_not_fit_fall_back_to_sequential_steppers(backend: str) -> None:
    target, proposer = _setup(vocab=40, seed=5)
    chunks = list(run_batch(target.row, target.pi, proposer.draft, 400, 5, 3, backend=backend,  # type: ignore[arg-type]
                            max_table_bytes=4 * slot_bytes(40)))
    for b in range(3):
        ref = list(run_chain(target.row, target.pi, proposer.draft, 400, chain_stream(5, b)))
        np.testing.assert_array_equal(_chain_of(chunks, b)["emitted"], np.concatenate([c.emitted for c in ref]))


def test_batch_tally_matches_per_chain_tallies() -> None:
    target, proposer = _setup(vocab=16)
    chunks = list(run_batch(target.row, target.pi, proposer.draft, 300, 7, 4, chunk_tokens=4 * 128))
    tally = BatchTally(4, 16)
    singles = [RunTally(16) for _ in range(4)]
    for chunk in chunks:
        tally.update(chunk)
        for b in range(4):
            singles[b].update(chunk.chain(b))
    for b in range(4):
        got = tally.chain(b)
        assert (got.steps, got.accepted) == (singles[b].steps, singles[b].accepted)
        np.testing.assert_array_equal(got.context_counts, singles[b].context_counts)
        np.testing.assert_array_equal(got.emitted_counts, singles[b].emitted_counts)
    pooled = tally.pooled()
    assert pooled.steps == 1200 and pooled.accepted == sum(s.accepted for s in singles)


def _emissions_after(chunks: list[BatchChunk], x: int, V: int) -> NDArray[np.float64]:
    counts = np.zeros(V)
    for c in chunks:
        counts += np.bincount(c.emitted[c.prev == x], minlength=V)
    return counts


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_emissions_follow_the_target_with_a_negative_control(backend: str) -> None:
    """χ² of the tokens emitted after the likeliest context vs p(.|x); a biased draft (no correction) fails."""
    target, proposer = _setup(vocab=24, K=4, tau=3.0, seed=13)  # a poor draft: acceptance far below 1
    x = int(np.argmax(target.pi))
    chunks = list(run_batch(target.row, target.pi, proposer.draft, 4000, 13, 32, backend=backend))  # type: ignore[arg-type]
    observed = _emissions_after(chunks, x, target.V)
    n = observed.sum()
    assert n > 5000
    assert pooled_chi2(observed, n * target.row(x)).p_value > 1e-3
    # Negative control: the same counts test applied to the drafts (what an uncorrected sampler would emit).
    drafted = np.zeros(target.V)
    for c in chunks:
        drafted += np.bincount(c.proposed[c.prev == x], minlength=target.V)
    assert pooled_chi2(drafted, drafted.sum() * target.row(x)).p_value < 1e-6


def test_cli_chains_writes_each_chain_and_chain_zero_is_the_single_run(tmp_path: Path) -> None:
    args = ["--vocab", "32", "--steps", "3000", "--seed", "5", "--quiet"]
    assert main(["run", *args, "--runs-dir", str(tmp_path / "one")]) == 0
    assert main(["run", *args, "--chains", "3", "--runs-dir", str(tmp_path / "three")]) == 0
    (single,) = (tmp_path / "one").iterdir()
    (batch,) = (tmp_path / "three").iterdir()
    assert sorted(p.name for p in batch.iterdir()) == ["chain_0000", "chain_0001", "chain_0002", "summary.json"]
    assert (batch / "chain_0000" / "m1_metrics.jsonl").read_bytes() == (single / "m1_metrics.jsonl").read_bytes()
    assert (batch / "chain_0001" / "m1_metrics.jsonl").read_bytes() != (single / "m1_metrics.jsonl").read_bytes()
    summary = json.loads((batch / "summary.json").read_text())
    chain0 = json.loads((batch / "chain_0000" / "summary.json").read_text())
    one = json.loads((single / "summary.json").read_text())
    assert summary["chains"] == 3 and summary["steps"] == 9000 and summary["steps_per_chain"] == 3000
    assert chain0["accept_rate"] == one["accept_rate"] and chain0["chi2_stat"] == one["chi2_stat"]
    rates = [json.loads((batch / f"chain_000{b}" / "summary.json").read_text())["accept_rate"] for b in range(3)]
    assert summary["accept_rate"] == pytest.approx(np.mean(rates), abs=1e-12)
    assert summary["chain_accept_rate_min"] == min(rates)


def test_cli_chains_without_telemetry_writes_only_the_summary(tmp_path: Path) -> None:
    assert main(["run", "--vocab", "16", "--steps", "500", "--chains", "4", "--telemetry", "none", "--quiet",
                 "--runs-dir", str(tmp_path)]) == 0
    (batch,) = tmp_path.iterdir()
    assert [p.name for p in batch.iterdir()] == ["summary.json"]


def _tallies_equal(a: BatchTally, b: BatchTally) -> None:
    assert (a.chains, a.vocab_size, a.steps) == (b.chains, b.vocab_size, b.steps)
    np.testing.assert_array_equal(a.accepted, b.accepted)
    np.testing.assert_array_equal(a.context_counts, b.context_counts)
    np.testing.assert_array_equal(a.emitted_counts, b.emitted_counts)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("resident", [True, False])
def test_run_batch_fills_the_tally_as_update_would(backend: str, resident: bool) -> None:
    """On every path (compiled kernel, NumPy, sequential steppers) the tally is `BatchTally.update` of each chunk."""
    target, proposer = _setup(vocab=24, seed=9)
    B, steps = 5, 700  # chunks of 160 steps: the last one is shorter
    bound = {} if resident else {"max_table_bytes": 4 * slot_bytes(24)}
    filled, updated = BatchTally(B, 24), BatchTally(B, 24)
    for chunk in run_batch(target.row, target.pi, proposer.draft, steps, 9, B, chunk_tokens=B * 160,
                           backend=backend, threads=2, tally=filled, **bound):  # type: ignore[arg-type]
        updated.update(chunk)
        assert filled.steps == updated.steps  # counted before the chunk is yielded
    assert filled.steps == steps and int(filled.context_counts.sum()) == B * steps
    _tallies_equal(filled, updated)


@needs_compiled
def test_compiled_and_numpy_tallies_agree() -> None:
    target, proposer = _setup(vocab=48, seed=2)
    tallies = {be: BatchTally(7, 48) for be in ("compiled", "python")}
    for be, tally in tallies.items():
        for _ in run_batch(target.row, target.pi, proposer.draft, 600, 2, 7, chunk_tokens=7 * 128,
                           backend=be, threads=2, tally=tally, reuse_outputs=True):  # type: ignore[arg-type]
            pass
    _tallies_equal(tallies["compiled"], tallies["python"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_reused_outputs_carry_the_same_tokens(backend: str) -> None:
    target, proposer = _setup(vocab=32, seed=4)
    B, steps, tokens = 6, 500, 6 * 120

    def run(reuse: bool) -> list[BatchChunk]:
        chunks = []
        for c in run_batch(target.row, target.pi, proposer.draft, steps, 4, B, chunk_tokens=tokens,
                           backend=backend, threads=2, reuse_outputs=reuse):  # type: ignore[arg-type]
            chunks.append(BatchChunk(c.start, c.prev.copy(), c.proposed.copy(), c.emitted.copy(), c.accepted.copy()))
        return chunks

    fresh, reused = run(False), run(True)
    assert [len(c) for c in reused] == [120, 120, 120, 120, 20]
    for b in range(B):
        for f in FIELDS:
            np.testing.assert_array_equal(_chain_of(fresh, b)[f], _chain_of(reused, b)[f])


@needs_compiled
def test_compiled_chunks_share_their_arrays_only_when_asked() -> None:
    target, proposer = _setup(vocab=16)

    def firsts(reuse: bool) -> tuple[BatchChunk, BatchChunk]:
        chunks = run_batch(target.row, target.pi, proposer.draft, 300, 1, 3, chunk_tokens=3 * 100,
                           backend="compiled", reuse_outputs=reuse)
        return next(chunks), next(chunks)

    for reuse in (False, True):
        first, second = firsts(reuse)
        for f in FIELDS:
            assert np.shares_memory(getattr(first, f), getattr(second, f)) == reuse
            assert getattr(second, f).flags.c_contiguous


def test_a_tally_of_the_wrong_shape_is_refused() -> None:
    target, proposer = _setup(vocab=16)
    for tally in (BatchTally(3, 16), BatchTally(4, 17)):
        with pytest.raises(ValueError, match="tally"):
            next(run_batch(target.row, target.pi, proposer.draft, 10, 1, 4, tally=tally))


@needs_compiled
def test_batch_kernel_counts_are_the_bincounts_of_its_outputs() -> None:
    from thermospec.engine.chain import table_source
    from thermospec.engine.kernels import TableCache

    module = compiled_module()
    assert module is not None
    target, proposer = _setup(vocab=20, seed=6)
    cache = TableCache(20, table_source(target.row, proposer.draft))
    assert cache.load_all()
    B, n = 11, 300  # not a multiple of the kernel's group of chains
    u = np.random.default_rng(6).random((B, n, 3))
    x = np.arange(B, dtype=np.int64) % 20
    outputs = [np.empty((B, n), dtype=np.int64) for _ in range(3)] + [np.empty((B, n), dtype=np.bool_)]
    counts = (np.full(B, 5, dtype=np.int64), np.ones((B, 20), dtype=np.int64))
    tables = (cache.tables, cache.totals, cache.lasts, cache.slot_of, cache.guides)
    x_after = x.copy()
    module.batch(*tables, u, x_after, *outputs, 20, cache.G, B, n, *counts)
    prev, _, emitted, accepted = outputs
    np.testing.assert_array_equal(counts[0], 5 + accepted.sum(axis=1))
    rows = np.arange(B)
    for b in range(B):
        np.testing.assert_array_equal(counts[1][b], 1 + np.bincount(emitted[b], minlength=20))
    # The contexts it no longer counts: the emitted tokens, plus x before, minus x after.
    contexts = counts[1] - 1
    contexts[rows, x] += 1
    contexts[rows, x_after] -= 1
    for b in range(B):
        np.testing.assert_array_equal(contexts[b], np.bincount(prev[b], minlength=20))
    again = [np.empty_like(a) for a in outputs]
    module.batch(*tables, u, x.copy(), *again, 20, cache.G, B, n)  # without counts: the same tokens
    for a, b_ in zip(outputs, again, strict=True):
        np.testing.assert_array_equal(a, b_)
    with pytest.raises(TypeError, match="both"):
        module.batch(*tables, u, x.copy(), *again, 20, cache.G, B, n, counts[0], None)
    with pytest.raises(TypeError):  # the context counts are no longer an argument
        module.batch(*tables, u, x.copy(), *again, 20, cache.G, B, n, counts[0], counts[1], counts[1].copy())
    with pytest.raises(ValueError, match="emitted_counts"):
        module.batch(*tables, u, x.copy(), *again, 20, cache.G, B, n, counts[0], counts[1][:5])


def _prev_bincounts(prevs: list[NDArray[np.int64]], B: int, V: int) -> NDArray[np.int64]:
    """Each chain's bincount of the contexts of the given (B, n) chunks' ``prev``."""
    if not prevs:
        return np.zeros((B, V), dtype=np.int64)
    joined = np.concatenate(prevs, axis=1)
    return np.stack([np.bincount(joined[b], minlength=V) for b in range(B)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("resident", [True, False])
def test_derived_context_counts_are_the_bincount_of_every_prev_read_mid_run(backend: str, resident: bool) -> None:
    """The tally derives the contexts from the emitted tokens: exact whenever it is read, after any chunk."""
    target, proposer = _setup(vocab=24, seed=12)
    B, V, steps = 5, 24, 530  # chunks of 100 steps, the last one 30
    bound = None if resident else 4 * slot_bytes(24)
    for stop_after in range(7):  # interrupted after 1..6 chunks (6: the last) or read only once done
        tally = BatchTally(B, V)
        np.testing.assert_array_equal(tally.context_counts, np.zeros((B, V), dtype=np.int64))
        prevs: list[NDArray[np.int64]] = []
        run = run_batch(target.row, target.pi, proposer.draft, steps, 12, B, chunk_tokens=B * 100,
                        backend=backend, threads=2, tally=tally, reuse_outputs=True,  # type: ignore[arg-type]
                        max_table_bytes=bound)
        for i, chunk in enumerate(run):
            prevs.append(chunk.prev.copy())  # the chunks share their arrays
            if stop_after > 0:  # read as each chunk is yielded
                np.testing.assert_array_equal(tally.context_counts, _prev_bincounts(prevs, B, V), err_msg=f"{i}")
            if i + 1 == stop_after:
                break
        run.close()  # type: ignore[attr-defined]
        assert tally.steps == sum(p.shape[1] for p in prevs) == (100 * stop_after if 0 < stop_after < 6 else steps)
        contexts = tally.context_counts
        np.testing.assert_array_equal(contexts, _prev_bincounts(prevs, B, V))
        for b in range(B):
            np.testing.assert_array_equal(tally.chain(b).context_counts, contexts[b])
        np.testing.assert_array_equal(tally.pooled().context_counts, contexts.sum(axis=0))


def test_a_tally_fed_chunks_that_do_not_continue_each_chain_stays_exact() -> None:
    """A tally shared by two runs (or chunks out of order) still counts the contexts it was given."""
    target, proposer = _setup(vocab=16, seed=8)
    B, V = 3, 16
    tally = BatchTally(B, V)
    prevs = []
    for seed in (8, 9, 8):  # three runs in one tally: each run's first context breaks the chain
        for chunk in run_batch(target.row, target.pi, proposer.draft, 250, seed, B, chunk_tokens=B * 100):
            tally.update(chunk)
            prevs.append(chunk.prev.copy())
            np.testing.assert_array_equal(tally.context_counts, _prev_bincounts(prevs, B, V))
    for b in range(B):
        np.testing.assert_array_equal(tally.chain(b).context_counts, _prev_bincounts(prevs, B, V)[b])


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_chains_on_compact_tables_are_the_single_chains(backend: str) -> None:
    """Large V: every chain of a batch on compact tables emits the single-chain dense tokens of its stream."""
    from thermospec.runs.config import RunConfig
    from thermospec.runs.prepare import prepare_run, sparse_rows

    run = prepare_run(RunConfig(vocab=5000, K=16, seed=6))
    sparse = sparse_rows(run)
    assert sparse is not None
    target, drafts = run.target, run.proposer.draft
    tally = BatchTally(3, target.V)
    chunks = list(run_batch(target.row, target.pi, drafts, 700, 6, 3, chunk_tokens=3 * 250,
                            backend=backend, sparse=sparse, tally=tally))  # type: ignore[arg-type]
    for b in range(3):
        ref = np.concatenate([c.emitted for c in run_chain(target.row, target.pi, drafts, 700, chain_stream(6, b))])
        np.testing.assert_array_equal(_chain_of(chunks, b)["emitted"], ref)
        prev = _chain_of(chunks, b)["prev"]
        np.testing.assert_array_equal(tally.chain(b).context_counts, np.bincount(prev, minlength=target.V))


@pytest.mark.parametrize("backend", BACKENDS)
def test_counting_without_recording_gives_the_same_tallies(backend: str) -> None:
    """record=False (what --telemetry none uses): the kernel only counts; the tallies are those of a recorded run."""
    target, proposer = _setup(vocab=24, seed=14)
    tallies = []
    for record in (True, False):
        tally = BatchTally(6, 24)
        chunks = list(run_batch(target.row, target.pi, proposer.draft, 450, 14, 6, chunk_tokens=6 * 100,
                                backend=backend, tally=tally, record=record))  # type: ignore[arg-type]
        assert [len(c) for c in chunks] == [100, 100, 100, 100, 50]
        if not record and backend == "compiled":
            assert all(c.prev.shape == (6, 0) for c in chunks)
        tallies.append(tally)
    recorded, counted = tallies
    np.testing.assert_array_equal(recorded.accepted, counted.accepted)
    np.testing.assert_array_equal(recorded.emitted_counts, counted.emitted_counts)
    np.testing.assert_array_equal(recorded.context_counts, counted.context_counts)
    with pytest.raises(ValueError, match="needs a tally"):
        next(run_batch(target.row, target.pi, proposer.draft, 10, 14, 2, record=False))


@needs_compiled
def test_kernel_refuses_to_drop_the_steps_without_counts() -> None:
    from thermospec.engine.chain import table_source
    from thermospec.engine.kernels import TableCache

    target, proposer = _setup(vocab=8, seed=1)
    cache = TableCache(8, table_source(target.row, proposer.draft))
    cache.load_all()
    module = compiled_module()
    assert module is not None
    u = np.random.default_rng(0).random((2, 5, 3))
    empty = [np.empty(0, dtype=np.int64)] * 3 + [np.empty(0, dtype=np.bool_)]
    with pytest.raises(TypeError, match="record=False needs the count arrays"):
        module.batch(cache.tables, cache.totals, cache.lasts, cache.slot_of, cache.guides, u,
                     np.zeros(2, dtype=np.int64), *empty, 8, cache.G, 2, 5, None, None, False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pooled_counts_from_the_transitions_alone(backend: str) -> None:
    """per_chain=False (--telemetry none): pooled counts from the transitions equal the per-chain sums."""
    target, proposer = _setup(vocab=20, seed=16)
    tallies = []
    for per_chain in (True, False):
        tally = BatchTally(7, 20, track_transitions=True, per_chain=per_chain)
        for _ in run_batch(target.row, target.pi, proposer.draft, 330, 16, 7, chunk_tokens=7 * 100,
                           backend=backend, tally=tally, record=per_chain):  # type: ignore[arg-type]
            pass
        tallies.append(tally)
    full, lean = (t.pooled() for t in tallies)
    assert (full.steps, full.accepted) == (lean.steps, lean.accepted)
    np.testing.assert_array_equal(full.context_counts, lean.context_counts)
    np.testing.assert_array_equal(full.emitted_counts, lean.emitted_counts)
    np.testing.assert_array_equal(tallies[0].accepted, tallies[1].accepted)
    with pytest.raises(ValueError, match="per_chain=False"):
        tallies[1].chain(0)
    assert BatchTally(2, 2048, track_transitions=True, per_chain=False).per_chain  # no transitions: kept per chain


@needs_compiled
def test_batch_kernel_draws_the_uniforms_numpy_draws() -> None:
    """Given each chain's PCG64 state, the kernel emits the tokens of NumPy's uniforms and advances the states."""
    from thermospec.engine.chain import table_source
    from thermospec.engine.kernels import TableCache

    module = compiled_module()
    assert module is not None
    target, proposer = _setup(vocab=20, seed=7)
    cache = TableCache(20, table_source(target.row, proposer.draft))
    assert cache.load_all()
    B, n = 11, 300  # not a multiple of the kernel's group of chains
    tables = (cache.tables, cache.totals, cache.lasts, cache.slot_of, cache.guides)
    states = np.stack([pcg64_state(chain_stream(7, b)) for b in range(B)])
    rngs = [chain_stream(7, b) for b in range(B)]
    u = np.stack([rng.random((n, 3)) for rng in rngs])
    x = np.arange(B, dtype=np.int64) % 20
    outputs = [[np.empty((B, n), dtype=np.int64) for _ in range(3)] + [np.empty((B, n), dtype=np.bool_)]
               for _ in range(2)]
    x_given, x_drawn = x.copy(), x.copy()
    module.batch(*tables, u, x_given, *outputs[0], 20, cache.G, B, n)
    module.batch(*tables, np.empty((0, 3)), x_drawn, *outputs[1], 20, cache.G, B, n, None, None, True, None, states)
    np.testing.assert_array_equal(x_given, x_drawn)
    for given, drawn in zip(*outputs, strict=True):
        np.testing.assert_array_equal(given, drawn)
    np.testing.assert_array_equal(states, np.stack([pcg64_state(rng) for rng in rngs]))
    with pytest.raises(ValueError, match="rng"):
        module.batch(*tables, u, x.copy(), *outputs[1], 20, cache.G, B, n, None, None, True, None, states[:3])
