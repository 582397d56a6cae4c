"""Tests of the per-context proposer: one ψ per context, crafted once, measured against its row."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from thermospec import (
    PayloadError,
    SimTSU,
    ce_gap_nats,
    craft_payload,
    decode_payload,
    encode_payload,
    overlap_mass,
    topk_mass,
)
from thermospec.tsu.drafts import Proposer, draft_for_row


def test_draft_for_row_is_the_encoded_payload_and_its_metrics() -> None:
    p = np.random.default_rng(0).dirichlet(np.full(40, 0.3))
    draft = draft_for_row(p, 5, 8, 0.7, "auto")
    wire = encode_payload(craft_payload(p, 8, 0.7, "auto"))
    assert draft.context == 5
    assert draft.payload_bytes == wire
    assert draft.psi_bytes == len(wire) == 24 + 8 * 3 + 4
    np.testing.assert_array_equal(draft.payload.ids, decode_payload(wire).ids)
    q = SimTSU(wire).q
    np.testing.assert_array_equal(draft.tsu.q, q)
    assert draft.topk_mass == topk_mass(p, draft.payload.ids)
    assert draft.overlap_mass == overlap_mass(p, q)
    assert draft.ce_gap_nats == ce_gap_nats(p, q)


def test_one_payload_per_context_crafted_once() -> None:
    P = np.random.default_rng(1).dirichlet(np.ones(12), size=12)
    calls: list[int] = []

    def row(x: int) -> NDArray[np.float64]:
        calls.append(x)
        out: NDArray[np.float64] = P[x]
        return out

    proposer = Proposer(row, 4, 1.0, "auto")
    first = proposer.draft(3)
    assert proposer.draft(3) is first
    assert calls == [3]
    drafts = proposer.all_drafts(12)
    assert [d.context for d in drafts] == list(range(12))
    assert drafts[3] is first
    assert sorted(calls) == list(range(12))  # each row read exactly once
    proposer.all_drafts(12)
    assert len(calls) == 12
    assert drafts[7].payload_bytes == encode_payload(craft_payload(P[7], 4, 1.0, "auto"))


def test_a_row_that_cannot_be_crafted_names_its_context() -> None:
    P = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    proposer = Proposer(lambda x: P[x], 2, 1.0, 0.5)  # context 1 sends K = 1: (3 - 1) * 0.5 = 1 is out of range
    assert proposer.draft(0).payload.K == 2
    with pytest.raises(PayloadError, match="context 1") as info:
        proposer.draft(1)
    assert "eps" in str(info.value)
