"""N drafts on a move table crafted at once (`engine.crafted_drafts`): every state's F(ψ), draft CDF, metrics,
recursive tables, guides and acceptance bounds are the per-context path's bit for bit, and the runs emit the same
tokens and keys with and without it.

About 20 s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thermospec.core.row_transport import acceptance_bounds, acceptance_optima
from thermospec.core.sampling import last_positive
from thermospec.core.transport import acceptance_bound, acceptance_optimum
from thermospec.core.verifiers import make_plan, recursive_rows
from thermospec.engine.crafted_drafts import CraftedDrafts, craft_drafts, first_met
from thermospec.engine.draft_tables import DraftTableCache, guide_rows, last_positives
from thermospec.engine.kernels import compiled_module, guide_table
from thermospec.engine.keyed_drafts import run_keyed_drafts_chains
from thermospec.engine.keys import OrderSource
from thermospec.targets.order import OrderTarget, order_target
from thermospec.tsu.drafts import Proposer

FIELDS = ("prev", "proposed", "emitted", "accepted_index", "drafts_used", "last_token")


@pytest.fixture(scope="module")
def order4(shakespeare: Path) -> OrderTarget:
    return order_target(shakespeare, 4)


def crafted_of(target: OrderTarget, K: int, tau: float, eps: float | str, verifier: str, n: int) -> CraftedDrafts:
    moves = target.moves()
    assert moves is not None
    found = craft_drafts(moves, (K, tau, eps), Proposer(target.row, K, tau, eps).draft, verifier, n,  # type: ignore[arg-type]
                         moves.states)
    assert found is not None
    return found


@pytest.mark.parametrize(("K", "tau", "eps"), [(8, 1.0, "auto"), (16, 0.3, "auto"), (8, 1.0, 0.0)])
def test_every_state_is_its_own_draft(order4: OrderTarget, K: int, tau: float, eps: float | str) -> None:
    crafted = crafted_of(order4, K, tau, eps, "recursive", 3)
    moves = crafted.moves
    proposer = Proposer(order4.row, K, tau, eps)  # type: ignore[arg-type]
    states = np.unique(np.r_[np.arange(0, moves.states, 97), moves.states - 1])
    for state in states.tolist():
        draft = proposer.draft(moves.context(state))
        assert np.array_equal(crafted.q[state], draft.tsu.q)
        assert np.array_equal(crafted.draft_cdf[state], draft.tsu.cdf)
        record = crafted.metrics
        assert (record.topk_mass[state], record.overlap_mass[state], record.ce_gap_nats[state], record.eps[state]) \
            == (draft.topk_mass, draft.overlap_mass, draft.ce_gap_nats, draft.eps_used)


@pytest.mark.parametrize("eps", ["auto", 0.0])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_recursive_rows_are_the_plans(order4: OrderTarget, n: int, eps: float | str) -> None:
    crafted = crafted_of(order4, 8, 1.0, eps, "recursive", n)
    keys = np.arange(crafted.moves.states, dtype=np.int64)
    P = crafted.moves.rows(keys)
    built = recursive_rows(P, crafted.q, n)
    for state in range(0, keys.shape[0], 7):
        plan = make_plan("recursive", P[state], crafted.q[state], n)
        tables = plan.tables()
        assert np.array_equal(built.ratios[state], tables.ratios)
        assert np.array_equal(built.final_cdf[state], tables.final_cdf)
        assert built.acceptance[state] == plan.acceptance


def test_recursive_rows_flat_residual() -> None:
    p = np.array([[0.25, 0.25, 0.5], [0.1, 0.6, 0.3]])
    q = np.array([[0.25, 0.25, 0.5], [0.3, 0.3, 0.4]])  # row 0: p = q, every residual empty
    built = recursive_rows(p, q, 3)
    for i in range(2):
        plan = make_plan("recursive", p[i], q[i], 3)
        assert np.array_equal(built.ratios[i], plan.tables().ratios)
        assert np.array_equal(built.final_cdf[i], plan.tables().final_cdf)
        assert built.acceptance[i] == plan.acceptance


def test_guides_and_lasts_of_rows(order4: OrderTarget) -> None:
    crafted = crafted_of(order4, 8, 1.0, "auto", "recursive", 2)
    rng = np.random.default_rng(3)
    cdfs = [crafted.draft_cdf[:500], np.cumsum(rng.random((50, 40)) * (rng.random((50, 40)) < 0.2), axis=1),
            np.zeros((2, 9)), np.cumsum(np.full((3, 7), 0.1), axis=1)]
    for cdf in cdfs:
        for G in (2, 8, 64, 128):
            rows = guide_rows(cdf, G)
            assert all(np.array_equal(rows[i], guide_table(cdf[i], G)) for i in range(cdf.shape[0]))
        assert last_positives(cdf).tolist() == [last_positive(row) for row in cdf]


@pytest.mark.parametrize("n", [1, 2, 5])
def test_row_bounds_and_optima(order4: OrderTarget, n: int) -> None:
    crafted = crafted_of(order4, 8, 1.0, 0.0, "recursive", n)  # eps 0: rows with q = 0 (the per-row optimum)
    keys = np.arange(0, crafted.moves.states, 11, dtype=np.int64)
    P, Q = crafted.moves.rows(keys), crafted.q[keys]
    assert np.any(Q == 0)
    bounds, optima = acceptance_bounds(P, Q, n), acceptance_optima(P, Q, n)
    for i in range(keys.shape[0]):
        assert bounds[i] == acceptance_bound(P[i], Q[i], n)
        assert optima[i] == acceptance_optimum(P[i], Q[i], n)
    Q = crafted_of(order4, 8, 1.0, "auto", "recursive", n).q[keys]
    optima = acceptance_optima(P, Q, n)
    assert all(optima[i] == acceptance_optimum(P[i], Q[i], n) for i in range(keys.shape[0]))


def test_block_loads_are_the_per_state_loads(order4: OrderTarget) -> None:
    crafted = crafted_of(order4, 8, 1.0, "auto", "recursive", 2)
    states, V = crafted.moves.states, order4.V
    one = DraftTableCache(states, V, 2, "recursive", crafted.tables)
    blocks = DraftTableCache(states, V, 2, "recursive", crafted.tables)
    scattered = DraftTableCache(states, V, 2, "recursive", crafted.tables)
    assert crafted.load_blocks(blocks)
    keys = np.array([5, 700, 701, states - 1, 9, 3], dtype=np.int64)
    scattered.load_rows(keys, *crafted.row_tables(keys))  # not consecutive
    for key in keys.tolist():
        slot = one.load(key)
        assert blocks.load(key) == key
        for cache in (blocks, scattered):
            assert np.array_equal(cache.floats[key], one.floats[slot])
            assert np.array_equal(cache.ints[key], one.ints[slot])
            assert np.array_equal(cache.totals[key], one.totals[slot])
            assert np.array_equal(cache.lasts[key], one.lasts[slot])
    assert np.all(blocks.slot_of[:512] == np.arange(512))  # state 5's block, loaded with it
    coarse = DraftTableCache(states, V, 2, "recursive", crafted.tables, guide=16)
    assert crafted.load_blocks(coarse) and coarse.load(700) == 700
    assert np.array_equal(coarse.ints[700, :17], guide_table(crafted.draft_cdf[700], 16))
    with pytest.raises(ValueError, match="power of two"):
        DraftTableCache(states, V, 2, "recursive", crafted.tables, guide=24)
    assert not crafted_of(order4, 8, 1.0, "auto", "optimal", 2).load_blocks(
        DraftTableCache(states, V, 2, "optimal", crafted.tables))


def test_first_met() -> None:
    assert first_met(np.array([5, 3, 5, 1, 3, 9], dtype=np.int64)).tolist() == [5, 3, 1, 9]


def test_another_draft_is_not_crafted(order4: OrderTarget) -> None:
    moves = order4.moves()
    assert moves is not None
    other = Proposer(order4.row, 4, 1.0, "auto").draft  # ψ of K = 4, not the spec's 8
    assert craft_drafts(moves, (8, 1.0, "auto"), other, "recursive", 2, moves.states) is None
    assert craft_drafts(moves, (8, 1.0, "auto"), Proposer(order4.row, 8, 1.0, "auto").draft, "recursive", 2,
                        moves.states // 20) is None  # too few steps for the states


@pytest.mark.parametrize(("verifier", "n", "steps", "chains"),
                         [("recursive", 2, 30_000, 1), ("recursive", 4, 9_000, 2), ("spectr", 3, 6_000, 1),
                          ("optimal", 2, 6_000, 2)])
@pytest.mark.parametrize("backend", ["compiled", "python"])
def test_runs_are_the_per_context_runs(shakespeare: Path, verifier: str, n: int, steps: int, chains: int,
                                       backend: str) -> None:
    if backend == "compiled" and compiled_module() is None:
        pytest.skip("the compiled kernel is not built")
    if backend == "python" and steps > 10_000:
        steps = 10_000
    runs = []
    for psi in (None, (8, 1.0, "auto")):
        target = order_target(shakespeare, 4)  # its own: contexts are interned as met
        moves = target.moves()
        assert moves is not None
        met: list[CraftedDrafts] = []
        rngs = [np.random.default_rng(11 + b) for b in range(chains)]
        chunks = list(run_keyed_drafts_chains(OrderSource(target), Proposer(target.row, 8, 1.0, "auto").draft, n,
                                              verifier, steps, rngs, chunk=999,
                                              backend=backend, psi=psi, on_crafted=met.append))  # type: ignore[arg-type]
        assert bool(met) == (psi is not None and moves.states <= 10 * steps * chains)
        joined = [{f: np.concatenate([getattr(c[b], f) for c in chunks]) for f in FIELDS} for b in range(chains)]
        texts = {int(k): target.context_text(int(k)) for b in range(chains) for k in np.unique(joined[b]["prev"])}
        runs.append((joined, texts))
    (plain, plain_texts), (crafted, crafted_texts) = runs
    for b in range(chains):
        for f in FIELDS:
            assert np.array_equal(plain[b][f], crafted[b][f]), f  # contexts interned in the same order
    assert all(crafted_texts[k] == text for k, text in plain_texts.items())
