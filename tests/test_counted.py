"""The pieces the counted modes share (`runs.counted`) and the one N-draft loop over context sources."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.keys import BigramSource, ChainRows, PositionSource, memoised_advance
from thermospec.runs.batch_run import chain_spread
from thermospec.runs.counted import KeyMetrics, chi2_fields, visit_aggregates


def test_key_metrics_grow_and_keep_each_key() -> None:
    metrics = KeyMetrics()
    assert not metrics.known(3).any()
    metrics.keep(np.array([0, 2]), np.array([0.5, 0.25]), np.array([0.1, math.inf]), np.array([10, 20]),
                 np.array([4, 8]))
    assert metrics.known(40)[[0, 1, 2]].tolist() == [True, False, True] and metrics.met.shape[0] >= 40
    overlap, gap, psi, K = metrics.of(np.array([2, 0]))
    assert overlap.tolist() == [0.25, 0.5] and gap[0] == math.inf and psi.tolist() == [20, 10]
    assert K.tolist() == [8, 4]


def test_visit_aggregates_weigh_each_key_by_its_visits() -> None:
    metrics = (np.array([0.5, 0.25]), np.array([0.1, 0.3]), np.array([10, 2000]), np.array([4, 8]))
    stats = visit_aggregates(4, 2, np.array([3.0, 1.0]), metrics, chi2_fields(None), {"keys_visited": 2})
    assert list(stats)[:6] == ["steps", "accept_rate", "mean_overlap", "accept_overlap_gap", "mean_ce_gap",
                               "ce_gap_infinite_steps"]
    assert list(stats)[6:] == ["chi2_stat", "chi2_dof", "p_value", "psi_bytes_max", "K_sent_min", "K_sent_max",
                               "keys_visited", "checklist"]
    assert stats["mean_overlap"] == (3 * 0.5 + 0.25) / 4 and stats["mean_ce_gap"] == math.fsum([3 * 0.1, 0.3]) / 4
    assert stats["psi_bytes_max"] == 2000 and stats["checklist"]["psi_bytes_le_1024"] is False
    infinite = visit_aggregates(4, 2, np.array([3.0, 1.0]), (metrics[0], np.array([0.1, math.inf]), *metrics[2:]),
                                {}, {})
    assert infinite["mean_ce_gap"] is None and infinite["ce_gap_infinite_steps"] == 1


def test_chain_spread_gives_the_mean_only_when_asked() -> None:
    rates = np.array([0.5, 0.75])
    assert chain_spread(10, rates) == {"chains": 2, "steps_per_chain": 10, "chain_accept_rate_min": 0.5,
                                       "chain_accept_rate_mean": 0.625, "chain_accept_rate_max": 0.75}
    assert "chain_accept_rate_mean" not in chain_spread(10, rates, mean=False)


def test_sources_whose_moves_cost_nothing_are_not_memoised() -> None:
    pi = np.full(4, 0.25)
    bigram = BigramSource(ChainRows(lambda x: pi, pi))
    assert bigram.V == 4 and memoised_advance(bigram)(1, 3) == 3 and bigram.moves() is None

    class Positions:
        V, positions = 4, 5

        def row(self, t: int) -> NDArray[np.float64]:
            return pi

    source = PositionSource(Positions())  # type: ignore[arg-type]
    assert memoised_advance(source)(4, 2) == 0 and source.moves() is None
