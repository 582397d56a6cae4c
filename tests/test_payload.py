"""Tests of the ψ payload (SPEC §2): crafting, the v1 wire bytes, and validation on decode."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from thermospec import Payload, PayloadError, craft_payload, decode_payload, encode_payload, payload_size
from thermospec.core.payload import HEADER_BYTES, MAGIC, EpsSpec

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def dirichlet_row(V: int, concentration: float, seed: int) -> NDArray[np.float64]:
    """A target row; small concentrations give exact zeros, which are legal."""
    row: NDArray[np.float64] = np.random.default_rng(seed).dirichlet(np.full(V, concentration))
    row /= row.sum()
    return row


def with_crc(body: bytes) -> bytes:
    """Replace the trailing CRC of a (modified) payload so that only the field under test is wrong."""
    return body[:-4] + struct.pack("<I", zlib.crc32(body[:-4]))


def patch(data: bytes, offset: int, fmt: str, value: Any) -> bytes:
    """Overwrite one field and fix the CRC."""
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return with_crc(bytes(buf))


def reference_quantisation(p: NDArray[np.float64], K: int) -> tuple[NDArray[np.int64], NDArray[np.uint8], float]:
    """SPEC §2 written out independently: ids, codes and the stored delta."""
    positive = np.flatnonzero(p > 0)
    # descending probability, ties broken by the lower id
    order = sorted(positive.tolist(), key=lambda v: (-p[v], v))
    ids = np.array(order[: min(K, len(order))], dtype=np.int64)
    ell = np.log(p[ids]) - np.log(p[ids[0]])
    m = float(-ell.min())
    delta = float(np.float32(m / 255.0)) if m > 0 else 0.0
    if delta > 0:
        codes = np.clip(np.rint(-ell / delta), 0, 255).astype(np.uint8)
    else:
        codes = np.zeros(ids.size, dtype=np.uint8)
    return ids, codes, delta


@st.composite
def crafted(draw: st.DrawFn) -> tuple[NDArray[np.float64], int, float, EpsSpec]:
    """A target row with a K, τ and ε that are legal for it."""
    V = draw(st.integers(2, 300))
    concentration = draw(st.sampled_from([1e-3, 0.05, 0.2, 1.0, 10.0]))
    p = dirichlet_row(V, concentration, draw(st.integers(0, 2**32 - 1)))
    K = draw(st.integers(1, V + 10))
    tau = draw(st.floats(0.05, 20.0))
    k = min(K, V, int(np.count_nonzero(p)))
    if k == V or draw(st.booleans()):
        eps: EpsSpec = "auto"
    else:
        eps = draw(st.floats(0.0, 0.999)) / (V - k)
    return p, K, tau, eps


def assert_same_payload(a: Payload, b: Payload) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert (a.vocab_size, a.tau, a.eps, a.delta) == (b.vocab_size, b.tau, b.eps, b.delta)
    assert a.ids.dtype == b.ids.dtype == np.int64
    assert a.codes.dtype == b.codes.dtype == np.uint8


# --------------------------------------------------------------------------- round trip


@SETTINGS
@given(crafted())
def test_round_trip_craft_encode_decode(case: tuple[NDArray[np.float64], int, float, EpsSpec]) -> None:
    p, K, tau, eps = case
    payload = craft_payload(p, K, tau, eps)
    wire = encode_payload(payload)
    decoded = decode_payload(wire)
    assert_same_payload(payload, decoded)
    assert encode_payload(decoded) == wire
    assert len(wire) == payload.n_bytes == payload_size(payload.K, len(p))


@SETTINGS
@given(crafted())
def test_quantisation_ids_and_tail_follow_spec(case: tuple[NDArray[np.float64], int, float, EpsSpec]) -> None:
    p, K, tau, eps = case
    V = len(p)
    payload = craft_payload(p, K, tau, eps)
    ids, codes, delta = reference_quantisation(p, K)
    np.testing.assert_array_equal(payload.ids, ids)
    np.testing.assert_array_equal(payload.codes, codes)
    assert payload.delta == delta
    assert payload.tau == float(np.float32(tau))
    assert not np.signbit(payload.delta) and not np.signbit(payload.eps)  # canonical +0.0, never -0.0
    # every logit within delta / 2 of its dequantised value
    ell = np.log(p[ids]) - np.log(p[ids[0]])
    error = np.abs(-payload.codes.astype(np.float64) * payload.delta - ell)
    assert np.all(error <= payload.delta / 2 * (1 + 1e-6) + 1e-12)
    k = payload.K
    if eps == "auto":
        tail = max(0.0, 1.0 - float(p[ids].sum()))  # rounding may push 1 - sum a hair below 0
        expected = float(np.float32(tail / (V - k))) if k < V else 0.0
        # only a float32 rounding up across (V - K) * eps = 1 may move it down, by one ulp
        assert payload.eps == expected or payload.eps == float(np.nextafter(np.float32(expected), np.float32(0)))
    else:
        assert payload.eps == float(np.float32(eps))
    assert (V - k) * payload.eps < 1


def test_wide_ids_round_trip_above_65536() -> None:
    V = 70_000
    p = np.zeros(V)
    hot = np.array([69_999, 3, 65_536, 65_535, 12_345])
    p[hot] = [0.4, 0.3, 0.15, 0.1, 0.05]
    payload = craft_payload(p, 4, 1.0)
    wire = encode_payload(payload)
    assert wire[5] == 1  # flags: uint32 ids
    assert len(wire) == HEADER_BYTES + 4 * 5 + 4
    np.testing.assert_array_equal(decode_payload(wire).ids, [69_999, 3, 65_536, 65_535])
    assert encode_payload(decode_payload(wire)) == wire


def test_narrow_ids_at_exactly_65536() -> None:
    V = 65_536
    p = np.full(V, 1.0 / V)
    wire = encode_payload(craft_payload(p, 128, 1.0))
    assert wire[5] == 0
    assert len(wire) == 412


# --------------------------------------------------------------------------- sizes


def test_payload_size_spec_values() -> None:
    assert payload_size(128, 256) == 412
    assert payload_size(128, 65_536) == 412
    assert payload_size(128, 65_537) == 24 + 128 * 5 + 4
    assert payload_size(1, 2) == 24 + 3 + 4


@pytest.mark.parametrize("V", [2, 65, 256, 65_536, 65_537, 200_000])
def test_every_K_up_to_128_fits_in_1024_bytes(V: int) -> None:
    rng = np.random.default_rng(V)
    p = rng.dirichlet(np.ones(min(V, 300)))
    row = np.zeros(V)
    row[rng.choice(V, size=p.size, replace=False)] = p
    for K in range(1, 129):
        wire = encode_payload(craft_payload(row, K, 1.0))
        assert len(wire) == payload_size(min(K, V, p.size), V) <= 1024
    if V >= 128:
        assert len(encode_payload(craft_payload(row, 128, 1.0))) == (412 if V <= 65_536 else 668)


# --------------------------------------------------------------------------- crafting rules


def test_ties_are_broken_by_the_lower_id() -> None:
    p = np.array([0.1, 0.2, 0.1, 0.2, 0.1, 0.3])
    payload = craft_payload(p, 4, 1.0)
    np.testing.assert_array_equal(payload.ids, [5, 1, 3, 0])
    np.testing.assert_array_equal(payload.codes[1:3], [payload.codes[1]] * 2)


def test_zero_probability_tokens_are_never_sent() -> None:
    p = np.array([0.0, 0.5, 0.0, 0.3, 0.2, 0.0])
    payload = craft_payload(p, 5, 1.0)
    assert payload.K == 3
    np.testing.assert_array_equal(payload.ids, [1, 3, 4])
    assert payload.eps == 0.0  # auto: no tail mass left
    assert len(encode_payload(payload)) == payload_size(3, 6)


def test_K_above_V_is_clamped() -> None:
    p = np.array([0.25, 0.5, 0.25])
    payload = craft_payload(p, 64, 1.0)
    assert payload.K == 3
    np.testing.assert_array_equal(payload.ids, [1, 0, 2])
    assert payload.eps == 0.0


def test_auto_eps_spreads_the_tail_uniformly() -> None:
    p = np.array([0.4, 0.3, 0.1, 0.1, 0.05, 0.05])
    payload = craft_payload(p, 2, 1.0)
    assert payload.eps == float(np.float32(0.3 / 4))
    assert payload.tail_mass == pytest.approx(0.3, rel=1e-7)


def test_quantisation_rounds_half_to_even() -> None:
    # logits exactly half-way between multiples of delta = 1/16 (the spread is 255/16 nats); the row is left
    # unnormalised (p_max = 1) so that every log-ratio, and so every tie, is exact in float64
    halves = np.array([4, 5, 7, 8, 9, 10, 11, 12]) + 0.5
    p = np.exp(np.concatenate([[0.0], -halves / 16, [-255 / 16]]))
    ell = np.log(p) - np.log(p[0])
    assert (-ell[1:-1] * 16).tolist() == halves.tolist()
    payload = craft_payload(p, p.size, 1.0)
    assert payload.delta == 1 / 16
    np.testing.assert_array_equal(payload.codes, [0, 4, 6, 8, 8, 10, 10, 12, 12, 255])


def test_all_equal_probabilities_have_zero_delta() -> None:
    payload = craft_payload(np.full(8, 0.125), 5, 1.0)
    assert payload.delta == 0.0
    np.testing.assert_array_equal(payload.codes, 0)
    assert encode_payload(payload)[20:24] == b"\0\0\0\0"  # +0.0, not -0.0: the canonical bytes


def test_negative_zero_eps_is_sent_as_zero() -> None:
    p = np.array([0.5, 0.25, 0.25])
    assert encode_payload(craft_payload(p, 2, 1.0, -0.0)) == encode_payload(craft_payload(p, 2, 1.0, 0.0))


def test_extreme_logit_range_uses_code_255() -> None:
    p = np.array([1.0 - 1e-300, 1e-300, 0.0])
    payload = craft_payload(p, 3, 1.0)
    np.testing.assert_array_equal(payload.codes, [0, 255])
    assert payload.delta == float(np.float32(-np.log(1e-300) / 255))


@pytest.mark.parametrize(
    ("p", "K", "tau", "eps", "field"),
    [
        (np.array([[0.5, 0.5]]), 1, 1.0, "auto", "p:"),
        (np.array([0.5, -0.1, 0.6]), 1, 1.0, "auto", "p:"),
        (np.array([0.5, np.nan]), 1, 1.0, "auto", "p:"),
        (np.zeros(3), 1, 1.0, "auto", "p:"),
        (np.array([0.5, 0.5]), 0, 1.0, "auto", "K:"),
        (np.array([0.5, 0.5]), 1, 0.0, "auto", "tau:"),
        (np.array([0.5, 0.5]), 1, -1.0, "auto", "tau:"),
        (np.array([0.5, 0.5]), 1, float("nan"), "auto", "tau:"),
        (np.array([0.5, 0.5]), 1, 1e-50, "auto", "tau:"),  # 0 as float32
        (np.array([0.5, 0.5]), 1, 1e39, "auto", "tau:"),  # inf as float32
        (np.array([0.5, 0.5]), 1, 1.0, -0.1, "eps:"),
        (np.array([0.5, 0.5]), 1, 1.0, float("inf"), "eps:"),
        (np.array([0.25, 0.25, 0.25, 0.25]), 1, 1.0, 0.34, "eps:"),
        (np.array([1.0, 0.0, 0.0]), 1, 1.0, 0.5, "eps:"),  # K shrinks to 1: (3 - 1) * 0.5 = 1
    ],
)
def test_craft_rejects_bad_arguments(p: NDArray[np.float64], K: int, tau: float, eps: EpsSpec, field: str) -> None:
    with pytest.raises(PayloadError, match=f"^{field}"):
        craft_payload(p, K, tau, eps)


def test_encode_rejects_an_invalid_payload() -> None:
    good = craft_payload(np.array([0.5, 0.3, 0.2]), 2, 1.0)
    cases = [
        (Payload(ids=np.array([0, 0]), codes=good.codes, vocab_size=3, tau=1.0, eps=0.1, delta=good.delta), "ids:"),
        (Payload(ids=np.array([0, 3]), codes=good.codes, vocab_size=3, tau=1.0, eps=0.1, delta=good.delta), "ids:"),
        (Payload(ids=good.ids, codes=np.array([0], np.uint8), vocab_size=3, tau=1.0, eps=0.1, delta=0.1), "codes:"),
        (Payload(ids=good.ids, codes=np.array([3, 4], np.uint8), vocab_size=3, tau=1.0, eps=0.1, delta=0.1), "codes:"),
        (Payload(ids=good.ids, codes=good.codes, vocab_size=3, tau=0.0, eps=0.1, delta=good.delta), "tau:"),
        (Payload(ids=good.ids, codes=good.codes, vocab_size=3, tau=1.0, eps=1.0, delta=good.delta), "eps:"),
        (Payload(ids=good.ids, codes=good.codes, vocab_size=3, tau=1.0, eps=0.1, delta=-1.0), "delta:"),
        (Payload(ids=good.ids, codes=good.codes, vocab_size=1, tau=1.0, eps=0.1, delta=good.delta), "V:"),
    ]
    for payload, field in cases:
        with pytest.raises(PayloadError, match=f"^{field}"):
            encode_payload(payload)


# --------------------------------------------------------------------------- decoding bad bytes


@pytest.fixture(scope="module")
def wire() -> bytes:
    """A valid payload: K = 4 over V = 10, numeric ε."""
    p = dirichlet_row(10, 1.0, 3)
    return encode_payload(craft_payload(p, 4, 0.7, 0.01))


def test_valid_wire_layout(wire: bytes) -> None:
    magic, version, flags, K, V, tau, eps, delta = struct.unpack_from("<4sBBHIfff", wire)
    assert (magic, version, flags, K, V) == (MAGIC, 1, 0, 4, 10)
    assert tau == pytest.approx(0.7, rel=1e-7)
    assert eps == pytest.approx(0.01, rel=1e-7)
    assert delta > 0
    ids = np.frombuffer(wire, "<u2", 4, HEADER_BYTES)
    codes = np.frombuffer(wire, np.uint8, 4, HEADER_BYTES + 8)
    assert codes[0] == 0
    assert len(set(ids.tolist())) == 4
    assert struct.unpack_from("<I", wire, len(wire) - 4)[0] == zlib.crc32(wire[:-4])


def bad_variants(wire: bytes) -> list[tuple[str, bytes, str]]:
    """(name, bytes, the field the error must name) for every rejection rule of SPEC §2."""
    ids_at, codes_at = HEADER_BYTES, HEADER_BYTES + 8
    corrupted = bytearray(wire)
    corrupted[ids_at] ^= 0x01
    return [
        ("empty", b"", "payload:"),
        ("27 bytes", wire[:27], "payload:"),
        ("truncated by one", wire[:-1], "payload:"),
        ("truncated body, crc fixed", with_crc(wire[:-5] + b"\0\0\0\0"), "payload:"),
        ("one byte too long", wire + b"\0", "payload:"),
        ("too long, crc fixed", with_crc(wire[:-4] + b"\0" + b"\0\0\0\0"), "payload:"),
        ("magic", with_crc(b"PSI2" + wire[4:]), "magic:"),
        ("version 0", patch(wire, 4, "<B", 0), "version:"),
        ("version 2", patch(wire, 4, "<B", 2), "version:"),
        ("unknown flag", patch(wire, 5, "<B", 2), "flags:"),
        ("uint32 flag with small V", patch(wire, 5, "<B", 1), "flags:"),
        ("K = 0", patch(wire, 6, "<H", 0), "K:"),
        ("K > V", patch(wire, 6, "<H", 11), "K:"),
        ("V = 0", patch(wire, 8, "<I", 0), "V:"),
        ("V = 1", patch(wire, 8, "<I", 1), "V:"),
        ("V below an id", patch(patch(wire, 8, "<I", 4), 16, "<f", 0.0), "ids:"),
        ("tau = 0", patch(wire, 12, "<f", 0.0), "tau:"),
        ("tau < 0", patch(wire, 12, "<f", -1.0), "tau:"),
        ("tau nan", patch(wire, 12, "<f", float("nan")), "tau:"),
        ("tau inf", patch(wire, 12, "<f", float("inf")), "tau:"),
        ("eps < 0", patch(wire, 16, "<f", -0.01), "eps:"),
        ("eps nan", patch(wire, 16, "<f", float("nan")), "eps:"),
        ("eps inf", patch(wire, 16, "<f", float("inf")), "eps:"),
        ("(V - K) eps = 1", patch(wire, 16, "<f", 1 / 6), "eps:"),
        ("delta < 0", patch(wire, 20, "<f", -0.5), "delta:"),
        ("delta nan", patch(wire, 20, "<f", float("nan")), "delta:"),
        ("delta inf", patch(wire, 20, "<f", float("inf")), "delta:"),
        ("duplicate id", patch(wire, ids_at + 2, "<H", struct.unpack_from("<H", wire, ids_at)[0]), "ids:"),
        ("id out of range", patch(wire, ids_at + 2, "<H", 10), "ids:"),
        ("id 65535", patch(wire, ids_at, "<H", 0xFFFF), "ids:"),
        ("first code not 0", patch(wire, codes_at, "<B", 1), "codes:"),
        ("codes decreasing", patch(wire, codes_at + 3, "<B", 0) if wire[codes_at + 2] else
         patch(patch(wire, codes_at + 2, "<B", 9), codes_at + 3, "<B", 8), "codes:"),
        ("crc", bytes(wire[:-1]) + bytes([wire[-1] ^ 0xFF]), "crc32:"),
        ("corrupted body", bytes(corrupted), "crc32:"),
    ]


def test_every_bad_variant_raises_payload_error_naming_the_field(wire: bytes) -> None:
    decode_payload(wire)  # the base is valid
    for name, data, field in bad_variants(wire):
        with pytest.raises(PayloadError, match=f"^{field}") as info:
            decode_payload(data)
        assert str(info.value), name


def test_decode_accepts_bytearray_and_memoryview(wire: bytes) -> None:
    assert encode_payload(decode_payload(bytearray(wire))) == wire  # type: ignore[arg-type]
    assert encode_payload(decode_payload(memoryview(wire))) == wire  # type: ignore[arg-type]


def decodes_or_payload_error(data: bytes) -> None:
    """The never-crash property: a valid payload (which re-encodes to the same bytes) or PayloadError."""
    try:
        payload = decode_payload(data)
    except PayloadError as exc:
        assert str(exc).split(":")[0] in {"payload", "magic", "version", "flags", "K", "V", "tau", "eps",
                                          "delta", "ids", "codes", "crc32"}
        return
    assert encode_payload(payload) == data


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data: bytes) -> None:
    decodes_or_payload_error(data)


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_behind_a_valid_header_never_crash(tail: bytes) -> None:
    decodes_or_payload_error(with_crc(MAGIC + b"\x01\x00" + tail + b"\0\0\0\0"))


@SETTINGS
@given(st.data())
def test_mutated_payloads_never_crash(data: st.DataObject) -> None:
    p = dirichlet_row(300, 0.2, data.draw(st.integers(0, 1000)))
    wire = encode_payload(craft_payload(p, data.draw(st.integers(1, 128)), 1.0))
    buf = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    mutated = bytes(buf)
    decodes_or_payload_error(mutated)
    decodes_or_payload_error(with_crc(mutated))  # past the CRC: the field checks themselves
    cut = data.draw(st.integers(0, len(wire)))
    decodes_or_payload_error(wire[:cut])
