"""The passes over a trace row (softmax, top-K support, ψ's metrics): compiled, NumPy fallback and SPEC's code agree.

`targets.trace_rows` replaces `softmax64`, a partition and `core.metrics` on the dense q by
passes that take exp and log once per distinct float16 value; every value must be the
same float, bit for bit, with and without the compiled module.  A negative control: a
sum taken in another order (NumPy's pairwise sum is what both must follow) differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts.make_trace import write_trace
from thermospec.core.metrics import ce_gap_nats, overlap_mass
from thermospec.core.payload import craft_payload_from_support, decode_payload, encode_payload
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
    gaps = (4 * rng.standard_normal(V)).astype(np.float16)
    gaps[::3] = -np.inf
    gaps[5:50] = gaps.max() - 760  # entries whose exp underflows to 0 (p = 0 where stored > -inf)
    yield "gaps", gaps
    yield "uniform", np.zeros(V, dtype=np.float16)
    yield "big-endian", (3 * rng.standard_normal(V)).astype(">f2")
    yield "float32", (3 * rng.standard_normal(V)).astype(np.float32)
    yield "wide", (2 * rng.standard_normal(131_072)).astype(np.float16)


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
    assert (np.inf in gaps) == (eps == 0.0)  # q = 0 where p > 0: the infinite gap is covered too


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
