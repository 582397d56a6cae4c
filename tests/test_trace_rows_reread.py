"""A wide float16 trace row keeps no codes in the row cache: read again when a pass needs them, same bytes.

`TraceTarget` builds a row of at least `REREAD_BYTES` with ``row_values(raw, reread)``: the cache holds
its per-code tables only (a cache of V-sized arrays pays the page faults of fresh memory for each row),
and every pass reads the codes again into a buffer the thread reuses.  The payloads and metrics must be
those of the row that keeps its codes; a file whose row changed under the run is refused, not misread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts.make_trace import write_trace
from thermospec.core.payload import encode_payload
from thermospec.engine import positions
from thermospec.targets import trace_libm, trace_rows
from thermospec.targets.trace import REREAD_BYTES, TraceShrankError, load_trace


@pytest.fixture(scope="module")
def wide_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trace(tmp_path_factory.mktemp("reread") / "t.npy", 6, 70_000, 1.0, 3, progress=False)


def test_a_wide_row_keeps_no_codes_and_crafts_the_bytes_of_a_row_that_does(wide_trace: Path) -> None:
    if not trace_rows.compiled():
        pytest.skip("the compiled module thermospec.targets._trace_rows is not built")
    target = load_trace(wide_trace)
    assert target.reader.shape[1] * 2 >= REREAD_BYTES
    for t in range(6):
        values = target.row_values(t)
        assert values.codes is None and values.reread is not None
        kept = trace_rows.row_values(target.reader.row(t))
        assert kept.codes is not None
        trace_rows.row_values(target.reader.row((t + 1) % 6))  # this thread now holds another row's codes
        a, b = trace_rows.craft_position(values, 64, 1.0, "auto"), trace_rows.craft_position(kept, 64, 1.0, "auto")
        assert (a.wire, a.topk_mass, a.overlap_mass, a.ce_gap_nats) == (b.wire, b.topk_mass, b.overlap_mass,
                                                                        b.ce_gap_nats), t
        got, want = positions.position_tables(values, a.payload), positions.position_tables(kept, a.payload)
        assert got.residual_cum.tobytes() == want.residual_cum.tobytes(), t
        assert values.nbytes < values.V, t  # no V-sized array held (until the dense row is asked for)
        assert values.p.tobytes() == kept.p.tobytes(), t


def test_a_row_changed_under_the_run_is_refused_when_read_again(wide_trace: Path, tmp_path: Path) -> None:
    if not trace_rows.compiled():
        pytest.skip("the compiled module thermospec.targets._trace_rows is not built")
    path = tmp_path / "t.npy"
    path.write_bytes(wide_trace.read_bytes())
    target = load_trace(path)
    values = target.row_values(2)
    target.row_values(3)  # the thread's buffer holds row 3's codes: row 2's are read again below
    data = np.load(path, mmap_mode="r+")
    data[2, 7] = np.float16(60000.0)  # a value the row did not hold
    data.flush()
    del data
    with pytest.raises(TraceShrankError, match="holds other values"):
        trace_rows.craft_position(values, 64, 1.0, "auto")


def test_a_row_holds_its_codes_and_no_other() -> None:
    if not trace_rows.compiled():
        pytest.skip("the compiled module thermospec.targets._trace_rows is not built")
    from tests.test_trace_rows import rows  # the rows of every shape: listed spans, marked spreads, -inf

    C, seen = trace_rows._COMPILED, np.zeros(1 << 16, dtype=np.uint8)
    assert C is not None
    for name, raw in rows():
        values = trace_rows.row_values(raw)
        if values.codes is None:  # a float32 row: held dense
            continue
        codes = values.codes.copy()
        assert C.holds(codes, values.present, seen), name
        listed = set(values.present.tolist())
        for other in (0x7BFF, 0xFC00, 0x0001, 0x8001, 0x7E00, 0xFE00):  # largest, -inf, tiny, -tiny, NaNs
            if other not in listed:
                changed = codes.copy()
                changed[len(changed) // 2] = other
                assert not C.holds(changed, values.present, seen), (name, hex(other))
        assert not seen.any(), name


@pytest.mark.parametrize("fused", [True, False])
def test_the_fused_calls_and_the_numpy_ufuncs_between_passes_give_the_same_bytes(
    fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where NumPy's exp and log are not the C library's, the passes run apart with NumPy's between them."""
    if not trace_rows.compiled():
        pytest.skip("the compiled module thermospec.targets._trace_rows is not built")
    from tests.test_trace_rows import test_a_crafted_position_is_the_plain_codes_payload_and_metrics as crafted
    from tests.test_trace_rows import test_every_pass_gives_the_bytes_of_the_plain_code as every_pass

    assert trace_rows._COMPILED is not None
    if not fused:
        monkeypatch.setitem(trace_libm._DECIDED, "same", False)
    assert trace_libm.libm_is_numpys(trace_rows._COMPILED) or not fused  # (this machine: NumPy calls the C library)
    for K in (1, 64, 5000):
        for eps in ("auto", 0.0):
            every_pass("compiled", K, eps)
            crafted(K, eps)


def test_a_row_crafted_again_with_other_budgets_gives_the_plain_codes_bytes() -> None:
    """A row's per-code tables serve any number of crafts (--psi-budget: K per position)."""
    if not trace_rows.compiled():
        pytest.skip("the compiled module thermospec.targets._trace_rows is not built")
    from tests.test_trace_rows import reference, rows

    for name, raw in rows():
        values = trace_rows.row_values(raw)
        for K in (64, 1000, 3, 64):
            _, _, payload, overlap, ce = reference(raw, K, "auto")
            made = trace_rows.craft_position(values, K, 1.0, "auto")
            assert made.wire == encode_payload(payload), (name, K)
            assert (made.overlap_mass, made.ce_gap_nats) == (overlap, ce), (name, K)


def test_the_avx2_and_sse2_passes_choose_the_same_tokens() -> None:
    """THERMOSPEC_NO_AVX2 (read when the module loads) keeps the SSE2 loops: the same payloads."""
    if not trace_rows.compiled():
        pytest.skip("the compiled module thermospec.targets._trace_rows is not built")
    script = (
        "import numpy as np, hashlib\n"
        "from thermospec.targets import trace_rows\n"
        "rng = np.random.default_rng(3)\n"
        "h = hashlib.sha256()\n"
        "for scale, shift in ((0.3, -5.0), (3.0, 0.0), (30.0, 40.0), (1.0, 5.0)):\n"
        "    raw = (shift + scale * rng.standard_normal(50_000)).astype(np.float16)\n"
        "    values = trace_rows.row_values(raw)\n"
        "    for K in (1, 64, 700):\n"
        "        h.update(trace_rows.craft_position(values, K, 1.0, 'auto').wire)\n"
        "        h.update(trace_rows.top_support_of(values, K).tobytes())\n"
        "print(h.hexdigest())\n"
    )
    digests = []
    for env in ({}, {"THERMOSPEC_NO_AVX2": "1"}):
        done = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True,
                              text=True, check=True)
        digests.append(done.stdout.strip())
    assert digests[0] == digests[1] and len(digests[0]) == 64
