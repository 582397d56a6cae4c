"""Tests of F(ψ) (SPEC §3) and of `SimTSU`: exact law, exact ``log q``, seeded draws."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.speculative_law import ALPHA, miss_probability, noncentrality, spec_formula
from thermospec import Payload, SimTSU, craft_payload, encode_payload, proposal_distribution
from thermospec.core.payload import EpsSpec
from thermospec.core.statistics import pooled_chi2

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@st.composite
def payloads(draw: st.DrawFn) -> Payload:
    V = draw(st.integers(2, 200))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = rng.dirichlet(np.full(V, draw(st.sampled_from([0.01, 0.3, 3.0]))))
    K = draw(st.integers(1, V))
    k = min(K, int(np.count_nonzero(p)))
    eps: EpsSpec = "auto" if k == V or draw(st.booleans()) else draw(st.floats(0.0, 0.99)) / (V - k)
    tau = draw(st.sampled_from([0.3, 1.0, 3.0])) if draw(st.booleans()) else draw(st.floats(0.05, 10.0))
    return craft_payload(p / p.sum(), K, tau, eps)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(payloads())
def test_proposal_distribution_is_spec_formula_and_sums_to_one(payload: Payload) -> None:
    wire = encode_payload(payload)
    tsu = SimTSU(wire)
    q = proposal_distribution(payload)
    expected = spec_formula(payload.ids, payload.codes, payload.vocab_size, payload.tau, payload.eps, payload.delta)
    np.testing.assert_allclose(q, expected, rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(tsu.q, q)  # the bytes give the same law as the payload they encode
    assert q.dtype == np.float64
    assert np.all(q >= 0)
    assert abs(q.sum() - 1.0) < 1e-12
    assert abs(q[payload.ids].sum() - (1.0 - payload.tail_mass)) < 1e-12


def test_tau_one_auto_eps_no_quantisation_error_gives_q_equal_p() -> None:
    # log-ratios that are exact multiples of delta = 2^-6 (a float32), the largest code being 255
    V, codes = 12, np.array([0, 1, 8, 40, 100, 255])
    ids = np.array([7, 0, 11, 3, 5, 9])
    weights = np.exp(-codes / 64)
    p = np.full(V, 0.0)
    p[ids] = 0.99 * weights / weights.sum()
    p[[1, 2, 4, 6, 8, 10]] = 0.01 / 6  # below the faintest id (≈ 0.005)
    payload = craft_payload(p, 6, 1.0, "auto")
    np.testing.assert_array_equal(payload.ids, ids)
    np.testing.assert_array_equal(payload.codes, codes)
    assert payload.delta == 1 / 64
    q = SimTSU(encode_payload(payload)).q
    np.testing.assert_allclose(q, p, rtol=1e-7)  # ε is the float32 of 0.01/6: relative error ≤ 2^-24
    # with K = V there is no tail, no float32 rounding of ε: equal to the last bits
    p_full = np.zeros(4)
    p_full[:] = np.exp(-np.array([0, 1, 2, 255]) / 64)
    p_full /= p_full.sum()
    np.testing.assert_allclose(SimTSU(encode_payload(craft_payload(p_full, 4, 1.0))).q, p_full, rtol=1e-14)


def test_uint8_codes_are_widened_before_negation() -> None:
    payload = Payload(ids=np.array([1, 0]), codes=np.array([0, 255], dtype=np.uint8), vocab_size=3,
                      tau=1.0, eps=0.0, delta=0.01)
    q = SimTSU(encode_payload(payload)).q
    delta32 = float(np.float32(0.01))  # the value the bytes carry
    assert q[0] / q[1] == pytest.approx(np.exp(-255 * delta32), rel=1e-12)  # a wrapped -255 would read as +1
    assert q[2] == 0.0
    assert q[1] > q[0]


def test_sim_tsu_exposes_read_only_q_and_accepts_payload_or_bytes() -> None:
    payload = craft_payload(np.array([0.5, 0.3, 0.15, 0.05]), 2, 0.8, 0.01)
    from_bytes, from_payload = SimTSU(encode_payload(payload)), SimTSU(payload)
    np.testing.assert_array_equal(from_bytes.q, from_payload.q)
    with pytest.raises(ValueError, match="read-only"):
        from_bytes.q[0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        from_bytes.cdf[0] = 1.0


def test_log_q_is_exact_and_draws_never_land_on_q_zero() -> None:
    # ε = 0 and τ = 0.002 on a wide row: the tail and the faint ids have q exactly 0
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.full(300, 0.1))
    tsu = SimTSU(encode_payload(craft_payload(p, 64, 0.002, 0.0)))
    assert np.count_nonzero(tsu.q[tsu.payload.ids] == 0) > 10
    assert np.count_nonzero(tsu.q) < 64
    tokens, log_q = tsu.sample(np.random.default_rng(1), 200_000)
    assert tokens.dtype == np.int64
    assert log_q.dtype == np.float64
    assert np.all(tsu.q[tokens] > 0)
    np.testing.assert_array_equal(log_q, np.log(tsu.q[tokens]))  # bit for bit
    y, lq = tsu.draw(np.random.default_rng(2))
    assert isinstance(y, int)
    assert isinstance(lq, float)
    assert lq == float(np.log(tsu.q[y]))


def test_draws_are_seeded_and_batch_independent() -> None:
    tsu = SimTSU(craft_payload(np.random.default_rng(0).dirichlet(np.ones(50)), 10, 1.0))
    a, la = tsu.sample(np.random.default_rng(42), 1000)
    b, lb = tsu.sample(np.random.default_rng(42), 1000)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    rng = np.random.default_rng(42)
    one_by_one = [tsu.draw(rng)[0] for _ in range(1000)]  # one uniform per draw, same stream
    np.testing.assert_array_equal(a, one_by_one)
    c, _ = tsu.sample(np.random.default_rng(43), 1000)
    assert not np.array_equal(a, c)


CHI2_CASES = [
    # (V, concentration, K, tau, eps)
    (50, 0.3, 10, 1.0, "auto"),
    (50, 0.3, 10, 0.3, "auto"),
    (50, 0.3, 10, 3.0, 0.0),
    (256, 0.2, 64, 1.0, "auto"),
    (20, 1.0, 1, 1.0, "auto"),
]


@pytest.mark.parametrize(("V", "conc", "K", "tau", "eps"), CHI2_CASES)
def test_sim_tsu_draws_follow_f_psi(V: int, conc: float, K: int, tau: float, eps: EpsSpec) -> None:
    n = 200_000
    p = np.random.default_rng(V + K).dirichlet(np.full(V, conc))
    tsu = SimTSU(encode_payload(craft_payload(p, K, tau, eps)))
    tokens, _ = tsu.sample(np.random.default_rng(11), n)
    counts = np.bincount(tokens, minlength=V).astype(np.float64)
    assert pooled_chi2(counts, n * tsu.q).p_value > ALPHA


def test_chi2_catches_draws_from_a_slightly_different_law() -> None:
    """Negative control of the test above: draws from F at τ = 1.1 tested against F at τ = 1."""
    n, V = 200_000, 50
    p = np.random.default_rng(3).dirichlet(np.full(V, 0.3))
    honest = SimTSU(craft_payload(p, 10, 1.0))
    other = SimTSU(craft_payload(p, 10, 1.1))
    lam, dof = noncentrality(other.q, honest.q, n)
    assert miss_probability(lam, dof) < 1e-9  # lam ≈ 359 on 49 dof: missed with probability ≈ 6e-31
    tokens, _ = other.sample(np.random.default_rng(11), n)
    counts = np.bincount(tokens, minlength=V).astype(np.float64)
    assert pooled_chi2(counts, n * honest.q).p_value < ALPHA


def test_every_tsu_that_reports_its_own_way_says_so() -> None:
    """The host skips comparing reports only for TSUs whose `report_log_q` is SimTSU's own (log F(ψ))."""
    import thermospec.tsu.bounded
    import thermospec.tsu.faults
    import thermospec.tsu.thrml  # noqa: F401 - every TSU class of the package is loaded

    def subclasses(cls: type[SimTSU]) -> list[type[SimTSU]]:
        return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]

    found = subclasses(SimTSU)
    assert found, "no SimTSU subclass found"
    for cls in found:
        overrides = any("report_log_q" in vars(c) for c in cls.__mro__[: cls.__mro__.index(SimTSU)])
        assert cls.reports_exactly == (not overrides), cls.__name__
