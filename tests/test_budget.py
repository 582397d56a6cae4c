"""ψ under a byte budget (tsu/budget.py): exact curves, the budget holds, never below a fixed K, monotone.

Runs in about 3 s.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from thermospec.core.payload import EpsSpec, PayloadError, craft_payload, payload_size
from thermospec.core.proposal import proposal_distribution
from thermospec.targets.characters import character_target
from thermospec.tsu.budget import BudgetPlan, OverlapCurves, allocate_budget, overlap_curve, overlap_curves


def one_draft_overlap(d: NDArray[np.float64], K: int, tau: float, eps: EpsSpec) -> float:
    return float(np.minimum(d, proposal_distribution(craft_payload(d, K, tau, eps))).sum())


def random_row(rng: np.random.Generator, V: int, kind: str) -> NDArray[np.float64]:
    if kind == "ties":
        row = rng.integers(1, 4, size=V).astype(np.float64)
    elif kind == "sparse":
        row = rng.dirichlet(np.full(V, 0.3)) * (rng.random(V) < 0.4)
        row[rng.integers(V)] += 0.5
    elif kind == "peaked":
        row = np.exp(3.0 * rng.standard_normal(V))
    else:
        row = rng.dirichlet(np.full(V, 0.5))
    normalised: NDArray[np.float64] = row / row.sum()
    return normalised


def test_the_curve_is_the_crafted_payloads_overlap() -> None:
    rng = np.random.default_rng(7)
    for _ in range(120):
        V = int(rng.choice([2, 3, 7, 40, 300]))
        d = random_row(rng, V, str(rng.choice(["dirichlet", "ties", "sparse", "peaked"])))
        K_max = int(rng.integers(1, min(V, 70) + 4))
        tau = float(rng.choice([1.0, 0.6, 1.7]))
        eps: EpsSpec = "auto" if rng.random() < 0.6 else float(rng.choice([0.0, 0.5 / V, 2.0 / V]))
        curve = overlap_curve(d, V, K_max, tau, eps)
        assert curve.shape == (K_max,)
        for K in range(1, K_max + 1):
            try:
                expected = one_draft_overlap(d, K, tau, eps)
            except PayloadError:  # a fixed eps with (V - K) eps >= 1
                assert curve[K - 1] == -np.inf
                continue
            assert curve[K - 1] == pytest.approx(expected, abs=1e-12)
        # A row's support alone gives the same curve (large V: rows as their positive entries).
        np.testing.assert_array_equal(overlap_curve(d[d > 0], V, K_max, tau, eps), curve)


def test_curves_say_what_each_payload_sends() -> None:
    rows = np.array([[0.5, 0.5, 0.0, 0.0], [0.4, 0.3, 0.2, 0.1]])
    curves = overlap_curves(rows, 4, 6, 1.0, "auto")
    np.testing.assert_array_equal(curves.sent, [[1, 2, 2, 2, 2, 2], [1, 2, 3, 4, 4, 4]])
    np.testing.assert_array_equal(curves.n_bytes, payload_size(1, 4) + 3 * (curves.sent - 1))
    assert curves.overlap[0, 1] == curves.overlap[0, 5] == pytest.approx(1.0)


def random_instance(rng: np.random.Generator) -> tuple[OverlapCurves, NDArray[np.float64]]:
    V = int(rng.choice([5, 20, 65, 300]))
    C = int(rng.integers(2, 30))
    K_max = int(rng.integers(1, min(V, 40) + 1))
    rows = rng.dirichlet(np.full(V, rng.choice([0.05, 0.3, 1.0])), size=C)
    weights = rng.dirichlet(np.full(C, rng.choice([0.2, 1.0])))
    return overlap_curves(rows, V, K_max, float(rng.choice([1.0, 0.7, 1.5])), "auto"), weights


def check_budgets(curves: OverlapCurves, weights: NDArray[np.float64], budgets: NDArray[np.float64]) -> None:
    """Mean bytes within the budget, never below a uniform K that fits, overlap monotone in the budget."""
    uniform_bytes = weights @ curves.n_bytes
    uniform_overlap = weights @ curves.overlap
    previous = -np.inf
    plan = BudgetPlan(curves, weights)
    for budget in budgets:
        allocation = plan.allocate(float(budget))
        rows = np.arange(weights.shape[0])
        index = np.argmax(curves.sent == allocation.K[:, None], axis=1)  # the first column sending K_c
        assert allocation.mean_bytes == pytest.approx(float(weights @ curves.n_bytes[rows, index]), abs=1e-9)
        assert allocation.mean_overlap == pytest.approx(float(weights @ curves.overlap[rows, index]), abs=1e-12)
        assert allocation.mean_bytes <= budget * (1 + 1e-12)
        fits = uniform_bytes <= budget
        if np.any(fits):
            assert allocation.mean_overlap >= uniform_overlap[fits].max() - 1e-12
        assert allocation.mean_overlap >= previous - 1e-12
        previous = allocation.mean_overlap


def test_random_rows_respect_the_budget_beat_every_fixed_k_and_are_monotone() -> None:
    rng = np.random.default_rng(17)
    for _ in range(60):
        curves, weights = random_instance(rng)
        low = float(weights @ curves.n_bytes[:, 0])
        high = float(weights @ curves.n_bytes[:, -1])
        check_budgets(curves, weights, np.linspace(low, high + 3, 25))


def test_a_budget_that_fits_every_lagrangian_segment_is_optimal() -> None:
    """At the mean size of a Lagrangian point (every context maximising o - λ b), nothing overlaps more.

    Checked against all K_max^C allocations; a uniform K at the same budget is beaten on some
    instance (the check has power).
    """
    rng = np.random.default_rng(29)
    uniform_beaten = 0
    for _ in range(25):
        V, C, K_max = 12, 3, 5
        rows = rng.dirichlet(np.full(V, 0.3), size=C)
        weights = rng.dirichlet(np.ones(C))
        curves = overlap_curves(rows, V, K_max, 1.0, "auto")
        grid = np.array(list(itertools.product(range(K_max), repeat=C)))
        all_bytes = (weights * curves.n_bytes[np.arange(C), grid]).sum(axis=1)
        all_overlap = (weights * curves.overlap[np.arange(C), grid]).sum(axis=1)
        for lam in (0.0005, 0.002, 0.005, 0.01, 0.03):
            choice = np.argmax(curves.overlap - lam * curves.n_bytes, axis=1)
            budget = float(weights @ curves.n_bytes[np.arange(C), choice])
            best = all_overlap[all_bytes <= budget * (1 + 1e-12)].max()
            assert allocate_budget(curves, weights, budget).mean_overlap == pytest.approx(best, abs=1e-12)
            uniform = weights @ curves.overlap
            fits = weights @ curves.n_bytes <= budget
            uniform_beaten += int(uniform[fits].max() < best - 1e-6) if np.any(fits) else 0
    assert uniform_beaten > 10


def test_a_budget_that_does_not_bind_gives_each_context_its_best_k() -> None:
    rng = np.random.default_rng(3)
    curves, weights = random_instance(rng)
    allocation = allocate_budget(curves, weights, float(curves.n_bytes.max()))
    assert allocation.mean_overlap == pytest.approx(float(weights @ curves.overlap.max(axis=1)), abs=1e-12)
    assert allocation.multiplier == 0.0
    # Curves that rise all the way: K_max everywhere.
    rising = OverlapCurves(
        overlap=np.array([[0.5, 0.7, 0.8], [0.2, 0.6, 0.65]]), sent=np.array([[1, 2, 3], [1, 2, 3]]), vocab_size=10
    )
    at_k_max = allocate_budget(rising, np.array([0.3, 0.7]), payload_size(3, 10))
    np.testing.assert_array_equal(at_k_max.K, [3, 3])
    assert at_k_max.mean_bytes == payload_size(3, 10)


def test_a_budget_below_the_smallest_payload_is_refused_in_one_line() -> None:
    curves = overlap_curves(np.array([[0.6, 0.3, 0.1]]), 3, 2, 1.0, "auto")
    with pytest.raises(ValueError, match=r"^psi-budget: 30 bytes is below the smallest mean ψ size, 31 bytes$"):
        allocate_budget(curves, np.ones(1), 30.0)
    assert allocate_budget(curves, np.ones(1), 31.0).K.tolist() == [1]
    with pytest.raises(ValueError, match="weights"):
        allocate_budget(curves, np.zeros(1), 40.0)


def test_tiny_shakespeare_gains_over_fixed_k_at_equal_mean_bytes(shakespeare: Path) -> None:
    target = character_target(str(shakespeare))
    rows = np.array([target.row(c) for c in range(target.V)])
    curves = overlap_curves(rows, target.V, 64, 1.0, "auto")
    fixed = target.pi @ curves.overlap
    assert (round(float(fixed[7]), 4), round(float(fixed[15]), 4)) == (0.8620, 0.9609)  # the numbers
    for budget, floor in ((52.0, 0.868), (76.0, 0.970)):
        allocation = allocate_budget(curves, target.pi, budget)
        assert allocation.mean_bytes <= budget
        assert allocation.mean_overlap >= floor
        exact = sum(
            target.pi[c] * one_draft_overlap(rows[c], int(allocation.K[c]), 1.0, "auto") for c in range(target.V)
        )
        assert allocation.mean_overlap == pytest.approx(exact, abs=1e-12)
    check_budgets(curves, target.pi, np.arange(31.0, 224.0, 1.5))


def test_a_fixed_eps_that_rules_out_small_k_starts_the_hull_at_the_first_valid_k() -> None:
    rng = np.random.default_rng(41)
    rows = rng.dirichlet(np.ones(10), size=4)
    curves = overlap_curves(rows, 10, 5, 1.0, 0.12)  # (10 - 1) * 0.12 >= 1: K = 1 cannot be sent
    assert np.all(curves.overlap[:, 0] == -np.inf) and np.all(np.isfinite(curves.overlap[:, 1:]))
    with pytest.raises(ValueError, match="below the smallest mean ψ size, 34 bytes"):
        allocate_budget(curves, np.ones(4), 31.0)
    assert allocate_budget(curves, np.ones(4), 34.0).K.tolist() == [2, 2, 2, 2]
    check_budgets(curves, np.full(4, 0.25), np.linspace(34.0, 40.0, 13))
