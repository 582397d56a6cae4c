"""ψ of many rows at once (`draft_rows`) is `draft_for_row` row by row, bit for bit."""

from __future__ import annotations

from pathlib import Path

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
