"""Multi-draft verifiers: the output law is exactly p, the acceptance is what the maths says, the optimum is the limit.

Statistical checks (seeded, so deterministic) run the per-step reference `VerifierPlan.step` on drafts drawn
i.i.d. from q; two broken verifiers must fail the same χ² test.  Exact checks enumerate every draft tuple.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from thermospec.core.acceptance import accept_correct_step, acceptance_ratio, residual_cdf
from thermospec.core.sampling import inverse_cdf
from thermospec.core.statistics import chi2_sf, pooled_chi2
from thermospec.core.transport import (
    acceptance_bound,
    acceptance_optimum,
    class_mixture,
    coverage,
    lp_acceptance_optimum,
)
from thermospec.core.verifiers import (
    VERIFIERS,
    OptimalPlan,
    RecursivePlan,
    SpecTrPlan,
    VerifierPlan,
    make_plan,
    uniforms_per_step,
    verifier_acceptance,
    verify_step,
)
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import PreparedRun, prepare_run

Pair = tuple[NDArray[np.float64], NDArray[np.float64]]
DRAFTS = (1, 2, 4)
STEPS = 4000


def _norm(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(x / x.sum(), dtype=np.float64)


def synthetic_pairs() -> dict[str, Pair]:
    """(p, q) pairs that stress the residual: generic, p = q (all-zero residual), q with zeros, tail-heavy q."""
    rng = np.random.default_rng(20240607)
    pairs: dict[str, Pair] = {}
    pairs["generic"] = (rng.dirichlet(np.ones(10)), rng.dirichlet(np.ones(10)))
    p = rng.dirichlet(np.full(8, 0.7))
    pairs["equal"] = (p, p.copy())
    pairs["near-equal"] = (p, _norm(p * (1 + 1e-15 * rng.standard_normal(8))))
    p = rng.dirichlet(np.ones(9))
    q = rng.dirichlet(np.ones(9))
    q[[0, 4, 7]] = 0.0  # p > 0 there: reachable only through the residual
    pairs["q-zeros"] = (p, _norm(q))
    p = rng.dirichlet(np.full(12, 0.3))
    tail = np.where(p < np.sort(p)[-3], 1.0, 0.0)
    pairs["tail-heavy"] = (p, _norm(0.3 * p + 0.7 * tail / tail.sum()))
    return pairs


@pytest.fixture(scope="module")
def shakespeare_run(shakespeare: Path) -> PreparedRun:
    return prepare_run(RunConfig(corpus=str(shakespeare), K=8))


@pytest.fixture(scope="module")
def pairs(shakespeare_run: PreparedRun) -> dict[str, Pair]:
    run = shakespeare_run
    out = synthetic_pairs()
    x = int(np.argmax(run.target.pi))
    out["shakespeare"] = (np.asarray(run.target.row(x), dtype=np.float64), run.proposer.draft(x).tsu.q)
    return out


def draw(plan: VerifierPlan, steps: int, seed: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Emitted tokens and acceptances of `steps` reference steps, drafts i.i.d. from q."""
    rng = np.random.default_rng(seed)
    drafts = inverse_cdf(np.cumsum(plan.q), rng.random((steps, plan.n)))
    u = rng.random((steps, uniforms_per_step(plan.n)))
    tokens = np.empty(steps, dtype=np.int64)
    accepted = np.empty(steps, dtype=np.bool_)
    for t in range(steps):
        tokens[t], index = plan.step(drafts[t], u[t])
        accepted[t] = index is not None
    return tokens, accepted


def chi2_of(plan: VerifierPlan, seed: int, steps: int = STEPS) -> tuple[float, int, float, float]:
    """(χ² statistic, dof, p-value) of the emitted counts against ``steps · p``, and the acceptance z-score."""
    tokens, accepted = draw(plan, steps, seed)
    result = pooled_chi2(np.bincount(tokens, minlength=plan.p.size).astype(np.float64), steps * plan.p)
    a = plan.acceptance
    sd = math.sqrt(max(a * (1 - a), 0.0) / steps)
    z = (accepted.mean() - a) / sd if sd > 0 else (0.0 if accepted.mean() == round(a) else math.inf)
    return result.stat, result.dof, result.p_value, z


def recursive(p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> RecursivePlan:
    plan = make_plan("recursive", p, q, n)
    assert isinstance(plan, RecursivePlan)
    return plan


def no_residual_update(plan: RecursivePlan) -> RecursivePlan:
    """Broken: every draft tested against p, the residual never updated (max(p − q, 0) at the end)."""
    ratio = acceptance_ratio(plan.p, plan.q)
    return dataclasses.replace(plan, ratios=(ratio,) * plan.n, final_cdf=residual_cdf(plan.p, plan.q))


def accept_against_target(plan: RecursivePlan) -> RecursivePlan:
    """Broken: every draft tested against the target row p instead of its residual p_i (end residual kept)."""
    return dataclasses.replace(plan, ratios=(acceptance_ratio(plan.p, plan.q),) * plan.n)


@pytest.mark.parametrize("name", VERIFIERS)
def test_output_law_is_p_per_context_and_pooled(name: str, pairs: dict[str, Pair]) -> None:
    stats, dofs = 0.0, 0
    for (case, (p, q)), n in itertools.product(sorted(pairs.items()), DRAFTS):
        plan = make_plan(name, p, q, n)
        stat, dof, p_value, z = chi2_of(plan, seed=len(case) * 100 + n)
        assert p_value > 1e-4, f"{name} {case} N={n}: χ² p = {p_value:.2e}"
        assert abs(z) < 4.5, f"{name} {case} N={n}: acceptance {plan.acceptance:.4f}, z = {z:.2f}"
        stats, dofs = stats + stat, dofs + dof
    assert chi2_sf(stats, dofs) > 1e-3, f"{name}: pooled χ² {stats:.1f} on {dofs} dof"


@pytest.mark.parametrize("broken", [no_residual_update, accept_against_target])
def test_negative_controls_fail_the_same_test(
    broken: Callable[[RecursivePlan], RecursivePlan], pairs: dict[str, Pair]
) -> None:
    stats, dofs = 0.0, 0
    for case, n in itertools.product(("generic", "tail-heavy", "shakespeare"), (2, 4)):
        p, q = pairs[case]
        plan = broken(recursive(p, q, n))
        stat, dof, p_value, _ = chi2_of(plan, seed=len(case) * 100 + n)
        assert p_value < 1e-6, f"{case} N={n}: a broken verifier passed (p = {p_value:.2e})"
        stats, dofs = stats + stat, dofs + dof
    assert chi2_sf(stats, dofs) < 1e-12


def exact_law(plan: VerifierPlan) -> NDArray[np.float64]:
    """The emitted law, integrated exactly over every draft tuple and every uniform."""
    V, n = plan.p.size, plan.n
    assert isinstance(plan, RecursivePlan | SpecTrPlan | OptimalPlan)
    final = np.diff(plan.final_cdf, prepend=0.0)
    final = final / final.sum()
    law = np.zeros(V)
    for tup in itertools.product(np.flatnonzero(plan.q > 0), repeat=n):
        weight = float(np.prod(plan.q[list(tup)]))
        if isinstance(plan, OptimalPlan):
            assert plan.mixture is not None
            for w, omega in plan.mixture.pieces():
                y = tup[plan.select(np.array(tup), omega)]
                a = min(1.0, float(plan.ratio[y]))
                law[y] += weight * w * a
                law += weight * w * (1 - a) * final
            continue
        survive = 1.0
        for i, y in enumerate(tup):
            a = min(1.0, float(plan.ratios[i][y] if isinstance(plan, RecursivePlan) else plan.ratio[y]))
            law[y] += weight * survive * a
            survive *= 1 - a
        law += weight * survive * final
    return law


@pytest.mark.parametrize("name", VERIFIERS)
def test_exact_law_by_enumeration(name: str) -> None:
    pairs = synthetic_pairs()
    for case in ("generic", "q-zeros", "tail-heavy", "equal"):
        p, q = pairs[case]
        for n in (2, 3):
            plan = make_plan(name, p, q, n)
            assert np.abs(exact_law(plan) - plan.p).max() < 1e-12, f"{name} {case} N={n}"
    broken = no_residual_update(recursive(*pairs["generic"], 2))
    assert np.abs(exact_law(broken) - broken.p).max() > 0.01


def test_optimal_selection_law_is_the_planned_law() -> None:
    rng = np.random.default_rng(5)
    for V, n in ((4, 2), (5, 3), (6, 2), (3, 4)):
        p, q = rng.dirichlet(np.full(V, 0.5)), rng.dirichlet(np.ones(V))
        mix = class_mixture(p, q, n)
        law = np.zeros(V)
        for tup in itertools.product(range(V), repeat=n):
            for w, omega in mix.pieces():
                law[tup[mix.select(np.array(tup), omega)]] += w * float(np.prod(q[list(tup)]))
        assert np.abs(law - mix.law).max() < 1e-13


@pytest.mark.parametrize("name", VERIFIERS)
def test_one_draft_is_m1_token_for_token(name: str, pairs: dict[str, Pair]) -> None:
    for case, (p, q) in sorted(pairs.items()):
        plan = make_plan(name, p, q, 1)
        rng = np.random.default_rng(len(case))
        drafts = inverse_cdf(np.cumsum(q), rng.random(1000))
        for t, y in enumerate(drafts.tolist()):
            u = np.random.default_rng([7, t]).random(2)
            emitted, index = plan.step([y], u)
            m1_emitted, m1_accepted = accept_correct_step(p, q, y, np.random.default_rng([7, t]))
            assert (emitted, index is not None) == (m1_emitted, m1_accepted), f"{name} {case} step {t}"
            assert index in (None, 0)


def brute_force_optimum(p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> float:
    """``min_S p(Sᶜ) + φ_n(q(S))`` over all 2^V token sets (max-flow = min-cut)."""
    V = p.size
    return min(float(p[[v for v in range(V) if v not in S]].sum() + coverage(float(q[list(S)].sum()), n))
               for r in range(V + 1) for S in itertools.combinations(range(V), r))


def coupling_lp(p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> float:
    """The transport LP written out in full: couplings π(x, y) of every ordered tuple x with every output y."""
    from scipy.optimize import linprog

    V = p.size
    tuples = list(itertools.product(range(V), repeat=n))
    n_var = len(tuples) * V
    A = np.zeros((len(tuples) + V, n_var))
    gain = np.zeros(n_var)
    for i, x in enumerate(tuples):
        A[i, i * V:(i + 1) * V] = 1.0
        for y in range(V):
            A[len(tuples) + y, i * V + y] = 1.0
            gain[i * V + y] = 1.0 if y in x else 0.0
    b = np.concatenate(([float(np.prod(q[list(x)])) for x in tuples], p))
    res = linprog(-gain, A_eq=A, b_eq=b, bounds=(0, None), method="highs")
    assert res.status == 0
    return float(-res.fun)


def test_bound_optimum_and_lp_agree_with_brute_force() -> None:
    rng = np.random.default_rng(9)
    for trial in range(12):
        V, n = (4, 2) if trial % 2 else (4, 3)
        p, q = rng.dirichlet(np.full(V, 0.6)), rng.dirichlet(np.full(V, 0.6))
        if trial % 3 == 0:
            q[0] = 0.0
            q = _norm(q)
        hit = np.zeros(V)  # P(y ∈ X) by enumeration
        for x in itertools.product(range(V), repeat=n):
            hit[list(set(x))] += float(np.prod(q[list(x)]))
        assert acceptance_bound(p, q, n) == pytest.approx(float(np.minimum(p, hit).sum()), abs=1e-12)
        brute = brute_force_optimum(p, q, n)
        assert acceptance_optimum(p, q, n) == pytest.approx(brute, abs=1e-12)
        assert lp_acceptance_optimum(p, q, n) == pytest.approx(brute, abs=1e-7)
        assert coupling_lp(p, q, n) == pytest.approx(brute, abs=1e-7)


def test_acceptance_never_exceeds_the_optimum_or_the_bound() -> None:
    rng = np.random.default_rng(13)
    for trial in range(40):
        V, n = int(rng.integers(2, 9)), (2, 3)[trial % 2]
        p, q = rng.dirichlet(np.full(V, rng.choice([0.2, 1.0]))), rng.dirichlet(np.full(V, rng.choice([0.2, 1.0])))
        lp = lp_acceptance_optimum(p, q, n)
        plans = {name: make_plan(name, p, q, n) for name in VERIFIERS}
        for name, plan in plans.items():
            assert 0.0 <= plan.acceptance <= lp + 1e-9 <= acceptance_bound(p, q, n) + 2e-9, name
        assert plans["optimal"].acceptance == pytest.approx(acceptance_optimum(p, q, n), abs=1e-12)
        assert plans["optimal"].acceptance == pytest.approx(lp, abs=1e-7)
        assert plans["recursive"].acceptance <= plans["optimal"].acceptance + 1e-12
        assert verifier_acceptance("spectr", p, q, n) == plans["spectr"].acceptance


def test_lp_refuses_large_problems() -> None:
    p = np.full(40, 1 / 40)
    with pytest.raises(ValueError, match=r"too large.*acceptance_optimum"):
        lp_acceptance_optimum(p, p, 3)
    with pytest.raises(ValueError, match="too large"):
        lp_acceptance_optimum(p[:4] * 10, p[:4] * 10, 5)


def test_bad_inputs_are_refused() -> None:
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="unknown name"):
        make_plan("nope", p, q, 2)
    with pytest.raises(ValueError, match=">= 1"):
        make_plan("recursive", p, q, 0)
    for name in VERIFIERS:
        plan = make_plan(name, p, q, 2)
        with pytest.raises(ValueError, match="q > 0"):
            plan.step([0, 1], np.zeros(3))
        with pytest.raises(ValueError, match="outside"):
            plan.step([0, 3], np.zeros(3))
        with pytest.raises(ValueError, match="needs 2 drafts and 3 uniforms"):
            plan.step([0, 2], np.zeros(2))
        assert verify_step(name, p, q, [2, 2], np.full(3, 0.999)) in ((0, None), (1, None))


def test_tiny_and_degenerate_rows_stay_finite() -> None:
    p = np.array([1.0 - 3e-300, 1e-300, 2e-300, 0.0])
    q = np.array([1e-310, 0.5, 0.5 - 1e-310, 0.0])
    for name, n in itertools.product(VERIFIERS, (1, 2, 8)):
        plan = make_plan(name, p, q, n)
        assert np.isfinite(plan.acceptance) and 0.0 <= plan.acceptance <= acceptance_bound(p, q, n) + 1e-12
        tokens, _ = draw(plan, 200, seed=n)
        assert set(tokens.tolist()) <= {0, 1, 2}


def test_tiny_shakespeare_k8_numbers(shakespeare_run: PreparedRun) -> None:
    target, proposer = shakespeare_run.target, shakespeare_run.proposer
    rows = [(float(target.pi[x]), np.asarray(target.row(x), dtype=np.float64), proposer.draft(x).tsu.q)
            for x in range(target.V)]

    def weighted(value: Callable[[NDArray[np.float64], NDArray[np.float64]], float]) -> float:
        return sum(w * value(p, q) for w, p, q in rows)

    one = weighted(lambda p, q: make_plan("recursive", p, q, 1).acceptance)
    assert one == pytest.approx(0.862, abs=5e-4)
    assert weighted(lambda p, q: acceptance_bound(p, q, 2)) == pytest.approx(0.907, abs=5e-4)
    assert weighted(lambda p, q: make_plan("recursive", p, q, 2).acceptance) == pytest.approx(0.872, abs=5e-4)
    optimum = weighted(lambda p, q: acceptance_optimum(p, q, 2))
    achieved = weighted(lambda p, q: make_plan("optimal", p, q, 2).acceptance)
    assert (achieved - one) / (optimum - one) >= 0.8
    x = int(np.argmax(target.pi))
    p, q = rows[x][1], rows[x][2]
    assert lp_acceptance_optimum(p, q, 2) == pytest.approx(acceptance_optimum(p, q, 2), abs=1e-7)
