"""Tests of the per-context metrics against their textbook definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from thermospec import ce_gap_nats, overlap_mass, topk_mass

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def test_topk_mass() -> None:
    p = np.array([0.1, 0.4, 0.2, 0.3])
    assert topk_mass(p, np.array([1, 3])) == pytest.approx(0.7)
    assert topk_mass(p, np.arange(4)) == pytest.approx(1.0)


def test_overlap_is_one_minus_total_variation() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        p, q = rng.dirichlet(np.full(20, 0.3)), rng.dirichlet(np.full(20, 0.3))
        assert overlap_mass(p, q) == pytest.approx(1 - 0.5 * np.abs(p - q).sum(), abs=1e-12)
    p = rng.dirichlet(np.ones(5))
    assert overlap_mass(p, p) == pytest.approx(1.0)
    assert overlap_mass(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 0.0


def test_ce_gap_is_cross_entropy_minus_entropy() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        p, q = rng.dirichlet(np.full(20, 0.5)), rng.dirichlet(np.full(20, 0.5))
        cross = -np.sum(p * np.log(q))
        entropy = -np.sum(p * np.log(p))
        assert ce_gap_nats(p, q) == pytest.approx(cross - entropy, rel=1e-10)
        assert ce_gap_nats(p, q) == pytest.approx(stats.entropy(p, q), rel=1e-10)
        assert ce_gap_nats(p, q) > 0
    assert ce_gap_nats(p, p) == 0.0


def test_ce_gap_with_zeros() -> None:
    p = np.array([0.5, 0.5, 0.0])
    assert ce_gap_nats(p, np.array([0.5, 0.5, 0.0])) == 0.0  # p = 0 terms contribute nothing
    assert ce_gap_nats(p, np.array([0.25, 0.25, 0.5])) == pytest.approx(math.log(2))
    assert ce_gap_nats(p, np.array([1.0, 0.0, 0.0])) == math.inf  # q misses p's support
    assert ce_gap_nats(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(math.log(2))
