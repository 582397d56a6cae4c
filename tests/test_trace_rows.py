"""A trace row's softmax, top-K support, ψ and ψ's metrics: the compiled path and SPEC's plain code agree.

`targets.trace_rows` replaces `softmax64`, a partition, `core.payload`'s craft/encode/decode and
`core.metrics` on the dense q by passes over the row's float16 codes that take exp and log once per
distinct value; every value must be the same float, and every payload the same bytes, bit for bit,
with and without the compiled module.  A negative control: a sum taken in another order (NumPy's
pairwise sum is what both must follow) differs.  About 10 s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts.make_trace import write_trace
from thermospec.core.metrics import ce_gap_nats, overlap_mass
from thermospec.core.payload import PayloadError, craft_payload_from_support, decode_payload, encode_payload
from thermospec.core.proposal import proposal_distribution
from thermospec.engine import positions
from thermospec.engine.positions import PositionProposer
from thermospec.targets import trace_rows
from thermospec.targets.trace import load_trace, softmax64


def rows() -> Iterator[tuple[str, np.ndarray[Any, Any]]]:
    rng = np.random.default_rng(5)
    V = 3000
    zipf = -np.log(np.arange(1, V + 1)) + 0.3 * rng.standard_normal(V)
    yield "zipf", rng.permutation(zipf).astype(np.float16)
    ties = rng.standard_normal(V).astype(np.float16)
    ties[100:140] = ties.max() + 1  # 40 tied top tokens
    yield "ties", ties
    wide_ties = rng.standard_normal(40_000).astype(np.float16)
    wide_ties[::7] = wide_ties.max()  # thousands tied at the top: the sampled threshold keeps them all
    yield "wide-ties", wide_ties
    spread = (20 * rng.standard_normal(20_000)).astype(np.float16)  # values over > 4096 codes: marked, not listed
    spread[::11] = -np.inf
    yield "spread", spread
    gaps = (4 * rng.standard_normal(V)).astype(np.float16)
    gaps[::3] = -np.inf
    gaps[5:50] = gaps.max() - 760  # entries whose exp underflows to 0 (p = 0 where stored > -inf)
    yield "gaps", gaps
    yield "uniform", np.zeros(V, dtype=np.float16)
    yield "big-endian", (3 * rng.standard_normal(V)).astype(">f2")
    yield "float32", (3 * rng.standard_normal(V)).astype(np.float32)
    yield "wide", (2 * rng.standard_normal(131_072)).astype(np.float16)
    zipf_wide = -np.log(np.arange(1, 131_073)) + 0.1 * rng.standard_normal(131_072)
    yield "zipf-wide", rng.permutation(zipf_wide).astype(np.float16)


def reference(raw: np.ndarray[Any, Any], K: int, eps: Any) -> tuple[Any, ...]:
    """SPEC's code: softmax64, a partition, core.metrics on the dense q."""
    p = softmax64(raw)
    V = p.shape[0]
    k = min(K, V)
    kth = np.partition(p, V - k)[V - k]
    tokens = np.flatnonzero(p >= kth) if kth > 0 else np.flatnonzero(p)
    payload = decode_payload(encode_payload(craft_payload_from_support(tokens, p[tokens], V, K, 1.0, eps)))
    q = proposal_distribution(payload)
    return p, tokens, payload, overlap_mass(p, q), ce_gap_nats(p, q)


@pytest.fixture(params=["compiled", "numpy"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "compiled":
        if not trace_rows.compiled():
            pytest.skip("the compiled module thermospec.targets._trace_rows is not built")
    else:
        monkeypatch.setattr(trace_rows, "_COMPILED", None)
    return str(request.param)


@pytest.mark.parametrize("K", [1, 16, 64, 5000])
@pytest.mark.parametrize("eps", ["auto", 0.0])
def test_every_pass_gives_the_bytes_of_the_plain_code(backend: str, K: int, eps: Any) -> None:
    gaps = []
    for name, raw in rows():
        p, tokens, payload, overlap, ce = reference(raw, K, eps)
        gaps.append(ce)
        values = trace_rows.row_values(raw)
        assert values.p.tobytes() == p.tobytes(), (name, backend)
        np.testing.assert_array_equal(trace_rows.top_support_of(values, K), tokens, err_msg=f"{name} {backend}")
        got = trace_rows.position_metrics(values, payload)
        assert got == (overlap, ce), (name, backend, got, (overlap, ce))
    assert np.inf in gaps or eps != 0.0  # q = 0 where p > 0: the infinite gap is covered too


@pytest.mark.parametrize("K", [1, 64, 5000])
@pytest.mark.parametrize("eps", ["auto", 0.0, 1e-9])
def test_a_crafted_position_is_the_plain_codes_payload_and_metrics(K: int, eps: Any) -> None:
    if not trace_rows.compiled():
        pytest.skip("the compiled module thermospec.targets._trace_rows is not built")
    for name, raw in rows():
        p, _, payload, overlap, ce = reference(raw, K, eps)
        values = trace_rows.row_values(raw)
        made = trace_rows.craft_position(values, K, 1.0, eps)
        assert made.wire == encode_payload(payload), (name, K, eps)
        decoded = decode_payload(made.wire)
        for got, want in ((made.payload, decoded), (made.payload, payload)):
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_array_equal(got.codes, want.codes)
            assert (got.vocab_size, got.tau, got.eps, got.delta) == (want.vocab_size, want.tau, want.eps, want.delta)
        assert made.topk_mass == float(p[payload.ids].sum()), name
        assert (made.overlap_mass, made.ce_gap_nats) == (overlap, ce), (name, K, eps)
        if values.codes is not None and values.V > 100_000:  # no V-sized float64 array while crafting
            assert values.nbytes < 8 * values.V, name


@pytest.mark.parametrize("K", [1, 64, 5000])
def test_position_tables_from_the_codes_are_those_of_the_dense_row(K: int) -> None:
    for name, raw in rows():
        values = trace_rows.row_values(raw)
        payload = trace_rows.craft_position(values, K, 1.0, "auto").payload
        dense = np.array(values.p)  # a plain array: the NumPy passes
        got, want = positions.position_tables(values, payload), positions.position_tables(dense, payload)
        for field in ("ids", "id_cdf", "explicit_cum", "q_ids", "residual_tokens", "residual_cum"):
            assert getattr(got, field).tobytes() == getattr(want, field).tobytes(), (name, K, field)
        for field in ("eps", "draft_total", "draft_last", "residual_last", "vocab_size"):
            assert getattr(got, field) == getattr(want, field), (name, K, field)
        np.testing.assert_array_equal(trace_rows.p_at(values, want.residual_tokens), dense[want.residual_tokens])


@pytest.mark.parametrize(("tau", "eps"), [(1.0, float("nan")), (1.0, -1.0), (1.0, 1.0), (0.0, "auto"),
                                          (float("nan"), "auto"), (1e300, 0.0)])
def test_a_payload_the_plain_code_refuses_is_refused_with_its_message(tau: float, eps: Any) -> None:
    raw = next(rows())[1]
    with pytest.raises(PayloadError) as plain:
        craft_payload_from_support(np.arange(raw.shape[0]), softmax64(raw), raw.shape[0], 16, tau, eps)
    with pytest.raises(PayloadError, match=re.escape(str(plain.value))):
        trace_rows.craft_position(trace_rows.row_values(raw), 16, tau, eps)


def test_the_sum_order_matters_a_negative_control() -> None:
    raw = next(rows())[1]
    p = softmax64(raw)
    e = np.exp(raw.astype(np.float64) - float(raw.max()))
    assert (e / e.sum()).tobytes() == p.tobytes()
    assert (e / float(np.cumsum(e)[-1])).tobytes() != p.tobytes()  # a sequential sum: other bytes


def test_positions_crafted_on_threads_are_the_ones_crafted_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_trace(tmp_path / "t.npy", 24, 4096, 1.1, 4, progress=False)
    monkeypatch.setattr(positions, "CRAFT_THREADS", 4)  # more threads than cores: interleaved passes
    in_turn = PositionProposer(load_trace(path), 16, 1.0, "auto")
    on_threads = PositionProposer(load_trace(path), 16, 1.0, "auto")
    on_threads.craft_ahead(range(24))
    for t in range(24):
        a, b = in_turn.draft(t), on_threads.draft(t)
        assert (a.payload_bytes, a.overlap_mass, a.ce_gap_nats, a.topk_mass) == (
            b.payload_bytes, b.overlap_mass, b.ce_gap_nats, b.topk_mass), t
