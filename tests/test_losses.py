"""The acceptance losses (core/losses.py): they add up, d_K is F(ψ) with exact codes, sparse = dense.

Runs in about 1 s.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from thermospec.core.losses import (
    acceptance_losses,
    acceptance_losses_from_support,
    draft_overlap,
    exact_codes_explicit,
    exact_codes_proposal,
)
from thermospec.core.payload import EpsSpec, Payload, craft_payload, craft_payload_from_support
from thermospec.core.proposal import explicit_probabilities, proposal_distribution


def random_row(rng: np.random.Generator, V: int, kind: str) -> NDArray[np.float64]:
    """A probability row: Dirichlet, sparse (zeros), tied values, or peaked."""
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


def random_case(rng: np.random.Generator) -> tuple[NDArray[np.float64], NDArray[np.float64], int, float, EpsSpec]:
    V = int(rng.choice([2, 3, 7, 40, 257]))
    p = random_row(rng, V, str(rng.choice(["dirichlet", "ties", "sparse", "peaked"])))
    d = p.copy() if rng.random() < 0.3 else random_row(rng, V, str(rng.choice(["dirichlet", "ties", "sparse"])))
    K = int(rng.integers(1, V + 1)) if rng.random() < 0.8 else V
    tau = float(rng.choice([1.0, 0.6, 1.7]))
    eps: EpsSpec = "auto" if rng.random() < 0.6 else float(rng.choice([0.0, 0.2 / V]))
    return p, d, K, tau, eps


def test_the_three_losses_add_up_to_the_one_draft_loss() -> None:
    rng = np.random.default_rng(17)
    for _ in range(600):
        p, d, K, tau, eps = random_case(rng)
        payload = craft_payload(d, K, tau, eps)
        losses = acceptance_losses(p, d, payload)
        one_draft = 1.0 - float(np.minimum(p, proposal_distribution(payload)).sum())
        assert losses.total == pytest.approx(one_draft, abs=1e-12)
        assert losses.loss_draft_model + losses.loss_top_k + losses.loss_quantisation == losses.total
        assert losses.draft_overlap == pytest.approx(float(np.minimum(p, d).sum()), abs=1e-12)


def test_no_draft_model_loses_exactly_nothing() -> None:
    rng = np.random.default_rng(3)
    for _ in range(100):
        p, _, K, tau, eps = random_case(rng)
        losses = acceptance_losses(p, p.copy(), craft_payload(p, K, tau, eps))
        assert losses.loss_draft_model == 0.0
        assert draft_overlap(p, p) == 1.0


def test_all_ids_exact_codes_tau_one_lose_nothing_to_top_k() -> None:
    rng = np.random.default_rng(5)
    for V in (2, 9, 64):
        p = random_row(rng, V, "dirichlet")
        losses = acceptance_losses(p, p, craft_payload(p, V, 1.0))
        assert abs(losses.loss_top_k) < 1e-12
        assert losses.loss_quantisation > 0  # the 8-bit codes are the only loss left


def test_hand_worked_row() -> None:
    p = np.array([0.5, 0.3, 0.15, 0.05])
    losses = acceptance_losses(p, p, craft_payload(p, K=2, tau=1.0))
    # ψ sends ids 0 and 1 with T = 0.2 spread as ε = 0.1 on tokens 2 and 3: d_K = (0.5, 0.3, 0.1, 0.1).
    assert losses.top_k_overlap == pytest.approx(0.95, abs=1e-8)
    assert losses.loss_top_k == pytest.approx(0.05, abs=1e-8)


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.5])
@pytest.mark.parametrize("eps", ["auto", 0.0, 0.001])
def test_exact_codes_reproduce_f_psi_when_the_codes_are_exact(tau: float, eps: EpsSpec) -> None:
    """d_K's formula is F(ψ)'s: a row whose log-ratios are exactly -codes·δ gives F(ψ) itself."""
    rng = np.random.default_rng(11)
    d = random_row(rng, 50, "peaked")
    payload = craft_payload(d, 12, tau, eps)
    exact_top = np.exp(-payload.codes.astype(np.float64) * payload.delta) * 0.01
    np.testing.assert_allclose(exact_codes_explicit(payload, exact_top), explicit_probabilities(payload), rtol=1e-12)


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.5])
def test_exact_codes_are_within_the_quantisation_error_of_f_psi(tau: float) -> None:
    """Each code is within δ/2 nats of its log-ratio, so d_K and F(ψ) differ by at most δ/τ nats per id."""
    rng = np.random.default_rng(13)
    for _ in range(50):
        d = random_row(rng, 80, "peaked")
        payload = craft_payload(d, 20, tau)
        gap = np.abs(np.log(exact_codes_explicit(payload, d[payload.ids])) - np.log(explicit_probabilities(payload)))
        assert gap.max() <= payload.delta / payload.tau * (1 + 1e-9) + 1e-12
        # Negative control: ignoring τ in the exact codes breaks the bound when τ != 1.
        wrong = d[payload.ids] / d[payload.ids].sum() * (1 - payload.tail_mass)
        wrong_gap = np.abs(np.log(wrong) - np.log(explicit_probabilities(payload))).max()
        assert (wrong_gap > payload.delta / payload.tau) == (tau != 1.0) or payload.delta == 0


def test_a_flattened_tail_can_overlap_more_than_the_draft_model_does() -> None:
    """The losses are signed: τ > 1 flattens a peaked d towards a flat p, so loss_top_k < 0."""
    p = np.full(6, 1 / 6)
    d = np.array([0.6, 0.2, 0.1, 0.05, 0.03, 0.02])
    losses = acceptance_losses(p, d, craft_payload(d, 6, tau=4.0))
    assert losses.loss_top_k < -0.1
    assert losses.loss_draft_model > 0.3


def test_exact_codes_proposal_is_a_distribution_on_the_vocabulary() -> None:
    rng = np.random.default_rng(19)
    d = random_row(rng, 30, "sparse")
    payload = craft_payload(d, 5, 0.8)
    dk = exact_codes_proposal(payload, d)
    assert dk.sum() == pytest.approx(1.0, abs=1e-12)
    off = np.setdiff1d(np.arange(30), payload.ids)
    assert np.all(dk[off] == payload.eps)


def support(row: NDArray[np.float64]) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    tokens = np.flatnonzero(row).astype(np.int64)
    return tokens, row[tokens]


def test_support_version_equals_the_dense_one() -> None:
    rng = np.random.default_rng(23)
    for _ in range(300):
        p, d, K, tau, eps = random_case(rng)
        p_tokens, p_probs = support(p)
        d_tokens, d_probs = support(d)
        payload = craft_payload_from_support(d_tokens, d_probs, d.shape[0], K, tau, eps)
        dense = acceptance_losses(p, d, payload)
        sparse = acceptance_losses_from_support(p_tokens, p_probs, d_tokens, d_probs, payload)
        for name in ("draft_overlap", "top_k_overlap", "overlap"):
            assert getattr(sparse, name) == pytest.approx(getattr(dense, name), abs=1e-12), name


def test_shapes_are_checked() -> None:
    p = np.array([0.5, 0.5])
    payload: Payload = craft_payload(p, 1, 1.0)
    with pytest.raises(ValueError, match="p: need a row of V = 2"):
        acceptance_losses(np.ones(3) / 3, p, payload)
    with pytest.raises(ValueError, match="d: need a row of V = 2"):
        acceptance_losses(p, np.ones(3) / 3, payload)
    with pytest.raises(ValueError, match="d_top"):
        exact_codes_explicit(payload, np.array([0.0]))
