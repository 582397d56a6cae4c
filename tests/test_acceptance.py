"""Tests of `accept_correct_step`: the emitted token follows p exactly, on adversarial pairs.

Every statistical test here runs one machinery, `speculate`: a drafter draws
``y`` and reports ``log q(y)``, the host checks the report against the q it
holds, and `accept_correct_step` emits a token.  The honest cases must pass a
χ² test against ``n p`` at level `ALPHA`; the negative controls (a TSU that
samples from another law than the q it reports, a TSU that misreports log q,
acceptance fed a wrong q) must be caught by the very same machinery.  Each
control asserts, before sampling, that the expected χ² non-centrality makes a
miss at the fixed seed essentially impossible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.speculative_law import ALPHA, emitted_law, miss_probability, noncentrality
from thermospec import SimTSU, accept_correct_step, craft_payload, encode_payload, overlap_mass, residual
from thermospec.core.acceptance import acceptance_ratio, residual_cdf
from thermospec.core.payload import EpsSpec
from thermospec.core.sampling import inverse_cdf
from thermospec.core.statistics import pooled_chi2

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

N_STEPS = 20_000


class Drafter(Protocol):
    """What the host sees of a proposer: the q it announced and a draw reporting log q."""

    @property
    def q(self) -> NDArray[np.float64]: ...

    def draw(self, rng: np.random.Generator) -> tuple[int, float]: ...


class VectorDrafter:
    """An honest drafter for an arbitrary q (not necessarily an F(ψ)), by the package's inverse CDF."""

    def __init__(self, q: NDArray[np.float64]) -> None:
        self.q = q
        self.cdf = np.cumsum(q)

    def draw(self, rng: np.random.Generator) -> tuple[int, float]:
        y = int(inverse_cdf(self.cdf, rng.random(1))[0])
        return y, float(np.log(self.q[y]))


class MisreportError(AssertionError):
    """The host caught a drafter whose reported log q disagrees with the q it announced."""


@dataclass(frozen=True)
class Outcome:
    counts: NDArray[np.float64]
    accept_rate: float
    n: int

    def chi2_p(self, p: NDArray[np.float64]) -> float:
        return pooled_chi2(self.counts, self.n * p).p_value


def speculate(p: NDArray[np.float64], drafter: Drafter, n: int, seed: int,
              q_used: NDArray[np.float64] | None = None) -> Outcome:
    """`n` independent draft-and-correct steps against target p; the correction uses `q_used` (default drafter.q)."""
    q = drafter.q if q_used is None else q_used
    rng = np.random.default_rng(seed)
    counts = np.zeros(p.shape[0])
    accepted = 0
    for _ in range(n):
        y, log_q = drafter.draw(rng)
        if log_q != float(np.log(drafter.q[y])):
            raise MisreportError(f"drafter reported log q = {log_q} for {y}, its q says {np.log(drafter.q[y])}")
        emitted, was_accepted = accept_correct_step(p, q, y, rng)
        counts[emitted] += 1
        accepted += was_accepted
    return Outcome(counts=counts, accept_rate=accepted / n, n=n)


def assert_exact(p: NDArray[np.float64], drafter: Drafter, seed: int, n: int = N_STEPS) -> Outcome:
    """The honest-case assertions: χ² passes, accept rate within 4 standard errors of the overlap."""
    q = drafter.q
    np.testing.assert_allclose(emitted_law(p, q, q), p, atol=1e-12)  # the theorem, for this pair
    outcome = speculate(p, drafter, n, seed)
    assert outcome.chi2_p(p) > ALPHA
    overlap = overlap_mass(p, q)
    se = np.sqrt(overlap * (1 - overlap) / n)
    assert abs(outcome.accept_rate - overlap) <= 4 * se + 1e-12
    return outcome


def assert_power_against_no_correction(p: NDArray[np.float64], q: NDArray[np.float64], n: int = N_STEPS) -> None:
    """The χ² of a case has power: emitting the uncorrected drafts (law q) would be caught."""
    lam, dof = noncentrality(q, p, n)
    assert miss_probability(lam, dof) < 1e-6


def dirichlet(V: int, conc: float, seed: int) -> NDArray[np.float64]:
    row: NDArray[np.float64] = np.random.default_rng(seed).dirichlet(np.full(V, conc))
    row /= row.sum()
    return row


# --------------------------------------------------------------------------- adversarial pairs


def test_q_zero_where_p_has_mass() -> None:
    p = dirichlet(10, 1.0, 0)
    q = np.array([0.4, 0.3, 0.3, 0, 0, 0, 0, 0, 0, 0])
    assert p[3:].sum() > 0.3  # the residual must supply a large part of the output
    assert_power_against_no_correction(p, q)
    assert_exact(p, VectorDrafter(q), seed=1)


def test_q_much_larger_than_p_somewhere() -> None:
    p = np.array([0.001] + [0.999 / 9] * 9)
    q = np.array([0.9] + [0.1 / 9] * 9)
    assert_power_against_no_correction(p, q)
    assert_exact(p, VectorDrafter(q), seed=2)


def test_p_equal_q_always_accepts_without_nan_or_warning() -> None:
    p = dirichlet(10, 1.0, 3)
    assert np.all(residual(p, p) == 0)
    np.testing.assert_array_equal(residual_cdf(p, p), np.cumsum(p))  # falls back to p, no 0/0
    outcome = assert_exact(p, VectorDrafter(p), seed=3)
    assert outcome.accept_rate == 1.0


def test_one_hot_p_always_emits_its_token() -> None:
    p = np.zeros(10)
    p[3] = 1.0
    q = np.full(10, 0.1)
    outcome = speculate(p, VectorDrafter(q), 20_000, seed=4)
    assert outcome.counts[3] == 20_000
    assert abs(outcome.accept_rate - 0.1) < 4 * np.sqrt(0.1 * 0.9 / 20_000)


@pytest.mark.parametrize(
    ("tau", "eps", "K", "seed"),
    [
        (0.3, "auto", 8, 5), (3.0, "auto", 8, 6), (1.0, 0.0, 5, 7),
        (0.3, 0.0, 5, 8), (3.0, 0.0, 1, 9), (1.0, "auto", 1, 10),
    ],
)
def test_real_payloads_tau_extremes_and_eps_zero(tau: float, eps: EpsSpec, K: int, seed: int) -> None:
    p = dirichlet(30, 0.3, seed)
    tsu = SimTSU(encode_payload(craft_payload(p, K, tau, eps)))
    if eps == 0.0:
        assert np.all(tsu.q[np.setdiff1d(np.arange(30), tsu.payload.ids)] == 0)
    assert_power_against_no_correction(p, tsu.q)
    assert_exact(p, tsu, seed=seed)


def test_residual_underflow_falls_back_to_p_exactly() -> None:
    """q ≥ p everywhere after rounding: a rejection (probability ~1e-16) draws from p, no division by zero."""
    p = np.array([0.5, 0.25, 0.25])
    q = np.array([np.nextafter(0.5, 1.0), 0.25, 0.25])
    assert np.all(residual(p, q) == 0)
    ratio = p[0] / q[0]
    assert ratio < 1.0
    u_accept = float(np.nextafter(1.0, 0.0))  # the largest uniform: the draft is rejected
    assert u_accept >= ratio
    for u_residual, expected in [(0.0, 0), (0.6, 1), (0.9, 2)]:
        emitted, accepted = accept_correct_step(p, q, 0, FixedUniforms(u_accept, u_residual).generator())
        assert (emitted, accepted) == (expected, False)


# --------------------------------------------------------------------------- exact rules


@dataclass
class FixedUniforms:
    """A stand-in generator replaying chosen uniforms, to pin the accept rule at its edges."""

    values: list[float]

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self, n: int) -> NDArray[np.float64]:
        out, self.values = np.array(self.values[:n]), self.values[n:]
        return out

    def generator(self) -> np.random.Generator:
        return cast(np.random.Generator, self)


def test_a_draft_with_p_zero_is_never_accepted_even_with_u_zero() -> None:
    p = np.array([0.0, 0.6, 0.4])
    q = np.array([0.5, 0.25, 0.25])
    emitted, accepted = accept_correct_step(p, q, 0, FixedUniforms(0.0, 0.0).generator())
    assert not accepted
    assert emitted == 1  # the first token of the residual max(p - q, 0) = (0, 0.35, 0.15)
    assert acceptance_ratio(p, q)[0] == 0.0


def test_accept_boundary_is_strict() -> None:
    p = np.array([0.25, 0.75])
    q = np.array([0.5, 0.5])  # ratio at 0 is exactly 0.5
    assert accept_correct_step(p, q, 0, FixedUniforms(0.5, 0.0).generator()) == (1, False)
    assert accept_correct_step(p, q, 0, FixedUniforms(float(np.nextafter(0.5, 0.0)), 0.0).generator()) == (0, True)
    assert accept_correct_step(p, q, 1, FixedUniforms(float(np.nextafter(1.0, 0.0)), 0.0).generator()) == (1, True)


def test_returns_a_python_int_and_bool() -> None:
    p, q = np.array([0.2, 0.8]), np.array([0.5, 0.5])
    for y, u in [(0, 0.1), (0, 0.9), (1, 0.3)]:
        emitted, accepted = accept_correct_step(p, q, np.int64(y), FixedUniforms(u, 0.5).generator())  # type: ignore[arg-type]
        assert type(emitted) is int
        assert type(accepted) is bool


def test_each_step_consumes_exactly_two_uniforms() -> None:
    p, q = dirichlet(6, 1.0, 0), np.full(6, 1 / 6)
    rng, twin = np.random.default_rng(9), np.random.default_rng(9)
    for y in [0, 1, 2, 3, 4, 5] * 20:
        accept_correct_step(p, q, y, rng)
        twin.random(2)
    assert rng.random() == twin.random()


def test_drafts_outside_the_support_of_q_or_the_vocabulary_are_refused() -> None:
    p, q = np.array([0.5, 0.5, 0.0]), np.array([1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"q\[y\]"):
        accept_correct_step(p, q, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="y:"):
        accept_correct_step(p, q, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="y:"):
        accept_correct_step(p, q, -1, np.random.default_rng(0))


# --------------------------------------------------------------------------- negative controls


class SamplesElsewhereTSU(SimTSU):
    """Negative control (a): reports the q = F(ψ) of its payload but samples from another law."""

    def __init__(self, wire: bytes, sampled: NDArray[np.float64]) -> None:
        super().__init__(wire)
        cdf = np.cumsum(sampled)
        cdf.flags.writeable = False
        self.cdf = cdf
        self.sampled = sampled


class MisreportingTSU(SimTSU):
    """Negative control (b): samples F(ψ) honestly but reports a wrong log q."""

    def report_log_q(self, tokens: NDArray[np.int64]) -> NDArray[np.float64]:
        return super().report_log_q(tokens) + 1e-9


@pytest.fixture(scope="module")
def row() -> NDArray[np.float64]:
    return dirichlet(30, 0.3, 21)


def test_honest_tsu_passes_the_machinery_the_controls_fail(row: NDArray[np.float64]) -> None:
    """The baseline of the controls: the same payload, an honest SimTSU, passes."""
    assert_exact(row, SimTSU(encode_payload(craft_payload(row, 8, 3.0))), seed=22)


def test_control_tsu_sampling_other_than_it_reports_fails_chi2(row: NDArray[np.float64]) -> None:
    wire = encode_payload(craft_payload(row, 8, 3.0))
    other = SimTSU(encode_payload(craft_payload(row, 8, 1.0))).q  # samples at τ = 1, reports τ = 3
    liar = SamplesElsewhereTSU(wire, other)
    law = emitted_law(row, other, liar.q)
    lam, dof = noncentrality(law, row, N_STEPS)
    # λ ≈ 1.1e3 on 26 dof: the probability of a miss is below 1e-100
    assert lam > 1000
    assert miss_probability(lam, dof) < 1e-9
    outcome = speculate(row, liar, N_STEPS, seed=22)  # its log q reports agree with its q: not caught there
    assert outcome.chi2_p(row) < ALPHA


def test_control_tsu_misreporting_log_q_is_caught(row: NDArray[np.float64]) -> None:
    liar = MisreportingTSU(encode_payload(craft_payload(row, 8, 3.0)))
    with pytest.raises(MisreportError):
        speculate(row, liar, 10, seed=22)


@pytest.mark.parametrize("wrong", ["target row", "unquantised copy"])
def test_control_acceptance_fed_a_wrong_q_fails_chi2(wrong: str) -> None:
    if wrong == "target row":
        # τ = 3 flattens F(ψ) far from p; accepting with q = p accepts every draft: the output is F(ψ)
        p = dirichlet(30, 0.3, 21)
        tsu = SimTSU(encode_payload(craft_payload(p, 8, 3.0)))
        q_used = p
    else:
        # τ = 1, auto-ε: F of the exact logits is p itself on the ids, F of the sent codes is not.  The
        # logits sit half a step (0.2 nats) off the 0.4-nat grid that the faint tenth id forces
        V = 30
        p = np.full(V, 1e-60)
        p[:10] = np.exp([0, -0.2, -0.6, -1.0, -1.4, -1.8, -2.2, -2.6, -3.0, -102.0])
        p /= p.sum()
        payload = craft_payload(p, 10, 1.0)
        assert payload.delta == pytest.approx(0.4)
        tsu = SimTSU(encode_payload(payload))
        ids = payload.ids
        exact = np.exp(np.log(p[ids]) - np.log(p[ids[0]]))
        q_used = np.full(V, payload.eps)
        q_used[ids] = (1 - payload.tail_mass) * exact / exact.sum()
        np.testing.assert_allclose(q_used[ids], p[ids], rtol=1e-12)
    law = emitted_law(p, tsu.q, q_used)
    lam, dof = noncentrality(law, p, N_STEPS)
    # target row: λ ≈ 1e5 on 26 dof; unquantised copy: λ ≈ 153 on 8 dof, missed with probability ≈ 8e-15
    assert miss_probability(lam, dof) < 1e-9
    assert speculate(p, tsu, N_STEPS, seed=24, q_used=q_used).chi2_p(p) < ALPHA


def test_a_subnormal_q_gives_an_infinite_ratio_silently() -> None:
    """τ very small pushes sent ids to subnormal q: p / q overflows to +inf, which accepts (min(1, p/q) = 1)."""
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([1.0 - 2e-317, 1e-317, 1e-317])
    ratio = acceptance_ratio(p, q)  # RuntimeWarnings are errors in this module
    assert ratio[1] == ratio[2] == np.inf
    assert accept_correct_step(p, q, 1, FixedUniforms(float(np.nextafter(1.0, 0.0)), 0.0).generator()) == (1, True)
    tsu = SimTSU(encode_payload(craft_payload(dirichlet(50, 1.0, 0), 50, 0.001)))
    assert np.any((tsu.q > 0) & (tsu.q < np.finfo(np.float64).tiny))  # this payload does produce subnormals
    acceptance_ratio(dirichlet(50, 1.0, 0), tsu.q)
