"""ψ of many rows at once (`draft_rows`) is `draft_for_row` row by row, bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thermospec.core.payload import EpsSpec
from thermospec.engine.chain import context_tables
from thermospec.targets.order import order_target
from thermospec.tsu.drafts import draft_for_row
from thermospec.tsu.row_drafts import draft_rows


@pytest.mark.parametrize(("K", "tau", "eps"), [(8, 1.0, "auto"), (64, 0.6, 0.0), (1, 1.2, 1e-3), (200, 1.0, "auto")])
def test_every_order_3_context_is_drafted_as_one_by_one(shakespeare: Path, K: int, tau: float, eps: EpsSpec) -> None:
    target = order_target(shakespeare, 3)
    moves = target.moves()
    assert moves is not None
    states = np.arange(moves.states)
    if K != 8:
        states = states[::7]  # a sample: the first configuration checks them all
    rows = moves.rows(states)
    drafted = draft_rows(rows, K, tau, eps)
    assert drafted is not None
    for i, s in enumerate(states.tolist()):
        p = target.row(moves.context(s))
        np.testing.assert_array_equal(rows[i], p)
        draft = draft_for_row(p, s, K, tau, eps)
        tables = context_tables(p, draft)
        np.testing.assert_array_equal(drafted.draft_cdf[i], tables.draft_cdf)
        np.testing.assert_array_equal(drafted.ratio[i], tables.ratio)
        np.testing.assert_array_equal(drafted.residual_cdf[i], tables.residual_cdf)
        assert (drafted.K, drafted.tau, drafted.psi_bytes) == (draft.payload.K, draft.payload.tau, draft.psi_bytes)
        assert drafted.eps[i] == draft.payload.eps and drafted.topk_mass[i] == draft.topk_mass
        assert drafted.overlap_mass[i] == draft.overlap_mass and drafted.ce_gap_nats[i] == draft.ce_gap_nats


def test_rows_with_a_zero_or_bad_fields_are_left_to_the_per_row_path() -> None:
    rows = np.full((3, 4), 0.25)
    assert draft_rows(rows, 2, 1.0, "auto") is not None
    rows[1] = [0.5, 0.5, 0.0, 0.0]
    assert draft_rows(rows, 2, 1.0, "auto") is None
    assert draft_rows(np.full((3, 4), 0.25), 2, 1.0, 0.6) is None  # (V - K) eps >= 1


@pytest.mark.parametrize(("c", "K", "eps", "batched"), [(50.0, 64, "auto", True), (50.0, 16, 1e-4, True),
                                                          (50.0, 256, "auto", True), (1.0, 8, "auto", False)])
def test_all_drafts_in_blocks_are_the_drafts_one_by_one(
    monkeypatch: pytest.MonkeyPatch, c: float, K: int, eps: EpsSpec, batched: bool
) -> None:
    from thermospec.core.streams import Stream, random_stream
    from thermospec.targets.synthetic import synthetic_target
    from thermospec.tsu import drafts as drafts_module

    V = 256
    target = synthetic_target(V, c, random_stream(7, Stream.TARGET))  # c = 1: rows with zeros, crafted one by one
    monkeypatch.setattr(drafts_module, "BLOCK_FLOATS", 100 * V)  # blocks of 100, 100 and 56 rows
    met: list[bool] = []
    real = drafts_module.drafts_of_rows

    def watched(*args: Any) -> Any:
        found = real(*args)
        met.append(found is not None)
        return found

    monkeypatch.setattr(drafts_module, "drafts_of_rows", watched)
    got = drafts_module.Proposer(target.row, K, 1.0, eps).all_drafts(V)
    assert met == [batched] * 3
    for x, draft in enumerate(got):
        ref = drafts_module.draft_for_row(target.row(x), x, K, 1.0, eps)
        assert draft.context == x and draft.payload_bytes == ref.payload_bytes
        assert (draft.topk_mass, draft.overlap_mass, draft.ce_gap_nats) == (ref.topk_mass, ref.overlap_mass,
                                                                            ref.ce_gap_nats)
        assert np.array_equal(draft.tsu.q, ref.tsu.q) and np.array_equal(draft.tsu.cdf, ref.tsu.cdf)
