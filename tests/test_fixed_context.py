"""The fixed-context draws (checks, grid sweep): `GuidedCdf` is `searchsorted`, the chunks are one stream."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from numpy.typing import NDArray

from thermospec.core.sampling import inverse_cdf
from thermospec.engine.chain import ReportError, fixed_context_chunks, fixed_context_draws
from thermospec.engine.step import GuidedCdf, vector_bisect_right
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import inject_fault, prepare_run
from thermospec.tsu.drafts import ContextDraft
from thermospec.tsu.faults import Fault, FaultyTSU


def _cdfs() -> list[NDArray[np.float64]]:
    """CDFs with the shapes the draws meet: peaked, flat runs of zeros, trailing zeros, one token, ties."""
    rng = np.random.default_rng(11)
    peaked = rng.dirichlet(np.full(256, 0.05))
    holes = rng.random(300) * (rng.random(300) < 0.3)
    holes[0] = 0.0
    trailing = np.concatenate([rng.random(20), np.zeros(40)])
    tiny = np.concatenate([[1e-310, 0.0], np.full(5, 1e-312)])  # a subnormal total
    return [np.cumsum(w) for w in (peaked, holes, trailing, np.ones(1), np.full(64, 0.1), tiny)]


@pytest.mark.parametrize("cdf", _cdfs(), ids=["peaked", "holes", "trailing", "one", "ties", "subnormal"])
def test_guided_cdf_is_searchsorted_bit_for_bit(cdf: NDArray[np.float64]) -> None:
    rng = np.random.default_rng(5)
    u = np.concatenate([rng.random(20_000), [0.0, np.nextafter(1.0, 0.0)]])
    total = float(cdf[-1])
    targets = np.concatenate([u * total, cdf, np.nextafter(cdf, -np.inf), np.nextafter(cdf, np.inf), [0.0]])
    guided = GuidedCdf(cdf)
    np.testing.assert_array_equal(guided.bisect_right(targets), np.searchsorted(cdf, targets, side="right"))
    np.testing.assert_array_equal(guided.tokens(u), inverse_cdf(cdf, u))


def test_guided_cdf_negative_control_a_shifted_cdf_differs() -> None:
    """The comparison above can fail: the guide of a slightly different CDF draws other tokens."""
    cdf = _cdfs()[0]
    u = np.random.default_rng(5).random(20_000)
    shifted = GuidedCdf(np.cumsum(np.diff(cdf, prepend=0.0)[::-1]))
    assert np.any(shifted.tokens(u) != inverse_cdf(cdf, u))


@pytest.fixture(scope="module")
def drafted() -> tuple[NDArray[np.float64], ContextDraft]:
    run = prepare_run(RunConfig(vocab=64, K=4, tau=0.8, seed=3))
    return run.target.row(9), run.proposer.draft(9)


def test_chunks_are_one_stream_whatever_their_size(drafted: tuple[NDArray[np.float64], ContextDraft]) -> None:
    p, draft = drafted
    whole = fixed_context_draws(p, draft, 5000, np.random.default_rng(4))
    rng = np.random.default_rng(4)
    parts = list(fixed_context_chunks(p, draft, 5000, rng, chunk=777))
    assert [len(c) for c in parts] == [777] * 6 + [5000 - 6 * 777]
    assert [c.start for c in parts] == list(range(0, 5000, 777))
    for field in ("prev", "proposed", "emitted", "accepted"):
        np.testing.assert_array_equal(np.concatenate([getattr(c, field) for c in parts]), getattr(whole, field))
    # the stream is left where one rng.random((5000, 3)) leaves it
    after = np.random.default_rng(4)
    after.random((5000, 3))
    assert rng.random() == after.random()
    assert not np.all(whole.accepted) and np.any(whole.accepted)  # both halves of the step were exercised


def test_no_steps_is_an_empty_chunk(drafted: tuple[NDArray[np.float64], ContextDraft]) -> None:
    p, draft = drafted
    empty = fixed_context_draws(p, draft, 0, np.random.default_rng(0))
    assert len(empty) == 0 and empty.accepted.dtype == np.bool_


def test_a_misreport_in_a_later_chunk_names_its_step_over_all_chunks() -> None:
    run = prepare_run(RunConfig(vocab=32, K=8, seed=5))
    x = 3
    p, good = run.target.row(x), run.proposer.draft(x)
    honest = fixed_context_draws(p, good, 3000, np.random.default_rng(8))
    liar_token = int(honest.proposed[2500])
    first = int(np.flatnonzero(honest.proposed == liar_token)[0])

    class OneLie(FaultyTSU):
        def report_log_q(self, tokens: NDArray[np.int64]) -> NDArray[np.float64]:
            out: NDArray[np.float64] = np.log(self.q[tokens])
            out[tokens == liar_token] += 0.5
            return out

    liar = replace(good, tsu=OneLie(good.tsu.payload))
    with pytest.raises(ReportError) as caught:
        list(fixed_context_chunks(p, liar, 3000, np.random.default_rng(8), chunk=100))
    assert (caught.value.step, caught.value.token, caught.value.context) == (first, liar_token, x)
    faulty = inject_fault(run, Fault.parse("misreport:1e-9"))
    with pytest.raises(ReportError, match="step 0"):
        fixed_context_draws(p, faulty.proposer.draft(x), 10, np.random.default_rng(8))


@pytest.mark.parametrize("V", [1, 2, 3, 7, 64, 257])
def test_vector_bisect_right_is_searchsorted_row_by_row(V: int) -> None:
    """The batch fallback's search (scalar rounds over rows of one length) against `searchsorted` per row."""
    rng = np.random.default_rng(V)
    B = 2000
    rows = np.cumsum(rng.random((B, V)) * (rng.random((B, V)) < 0.5), axis=1)
    flat = rows.ravel()
    base = np.arange(B, dtype=np.int64) * V
    target = rng.random(B) * rows[:, -1] * 1.1
    target[:200] = rows[np.arange(200), rng.integers(0, V, 200)]  # exact hits of an entry
    expected = np.array([np.searchsorted(rows[i], target[i], side="right") for i in range(B)])
    np.testing.assert_array_equal(vector_bisect_right(flat, base, V, target), expected)
    assert not np.array_equal(vector_bisect_right(flat, base, V, target * 0.5), expected) or V == 1
