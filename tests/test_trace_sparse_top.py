"""A wide float16 row's sparse top: the few tokens of its largest values, found by the row's first pass.

`targets.trace_rows.row_values` lists the codes of a row's top values (above a sampled key, about V / 341
tokens) as held, not as a span, so that exp and log are taken only for values the row holds; those tokens are
also the candidates of a top-K support (`RowValues.above`).  Whatever the sparse top, the payload bytes and
metrics are those of the row without it, and a row read again must hold no code the listing lacks.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from thermospec.targets import trace_rows


def _zipf(V: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(-np.log(np.arange(1, V + 1)) + 0.1 * rng.standard_normal(V)).astype(np.float16)


@pytest.fixture(autouse=True)
def _compiled() -> None:
    if not trace_rows.compiled():
        pytest.skip("the compiled module thermospec.targets._trace_rows is not built")


def test_the_sparse_top_lists_only_the_codes_the_row_holds() -> None:
    raw = _zipf(131_072, 1)
    values = trace_rows.row_values(raw)
    codes = raw.view(np.uint16)
    key = np.where(codes & 0x8000, 0xFFFF - codes.astype(np.int64), codes.astype(np.int64) | 0x8000)
    assert values.above_key < trace_rows.NO_KEY and 64 <= values.above.shape[0] <= trace_rows.ABOVE_KEPT
    assert values.above.tolist() == np.flatnonzero(key >= values.above_key).tolist()  # every one, increasing
    listed = values.present.astype(np.int64)
    listed_key = np.where(listed & 0x8000, 0xFFFF - listed, listed | 0x8000)
    assert np.all(np.diff(listed_key) < 0)  # by decreasing value
    top = listed[listed_key >= values.above_key]
    assert sorted(top.tolist()) == sorted(set(codes[key >= values.above_key].tolist()))  # held codes only there
    assert values.present.shape[0] < int(listed_key[0] - listed_key[-1]) + 1  # fewer than the whole span


@pytest.mark.parametrize("K", [1, 64, 700, 5000])
def test_a_craft_from_the_sparse_top_is_the_craft_without_it(K: int) -> None:
    for seed in range(3):
        raw = _zipf(131_072, seed)
        if seed == 2:  # ties across the sparse top's edge and at the top
            raw[::997] = raw.max()
        values = trace_rows.row_values(raw)
        without = dataclasses.replace(values, above=np.zeros(0, dtype=np.uint32), above_key=trace_rows.NO_KEY)
        a, b = trace_rows.craft_position(values, K, 1.0, "auto"), trace_rows.craft_position(without, K, 1.0, "auto")
        assert (a.wire, a.topk_mass, a.overlap_mass, a.ce_gap_nats) == (b.wire, b.topk_mass, b.overlap_mass,
                                                                        b.ce_gap_nats), (seed, K)
        assert trace_rows.top_support_of(values, K).tolist() == trace_rows.top_support_of(without, K).tolist()


def test_a_row_read_again_with_a_code_the_sparse_top_lacks_is_refused() -> None:
    raw = _zipf(131_072, 4)
    values = trace_rows.row_values(raw)
    C, seen = trace_rows._COMPILED, np.zeros(1 << 16, dtype=np.uint8)
    assert C is not None and values.codes is not None
    codes = values.codes.copy()
    assert C.holds(codes, values.present, seen)
    listed = set(values.present.tolist())
    top = [int(c) for c in values.present[:40]]
    gaps = [c for c in range(min(top), max(top)) if c not in listed]  # (negative codes: larger code, smaller value)
    assert gaps, "the sparse top has gaps"
    for code in [*gaps[:5], 0x3C00]:  # absent values among the top ones, and 1.0 (above the row's max)
        changed = codes.copy()
        changed[12_345] = code
        assert not C.holds(changed, values.present, seen), hex(code)
    assert not seen.any()


_SCAN_SCRIPT = """
import hashlib
import numpy as np
from thermospec.targets import trace_rows
C, rng, h = trace_rows._COMPILED, np.random.default_rng(11), hashlib.sha256()
seen, present, d = np.zeros(1 << 16, np.uint8), np.empty(1 << 16, np.uint16), np.empty(1 << 16)
specials = np.array([0x0000, 0x8000, 0xFC00, 0x7C00, 0x7E00, 0xFE00, 0x0001, 0x8001, 0x7BFF, 0xFBFF], np.uint16)
for trial in range(600):
    V, kind = int(rng.choice([16, 17, 100, 5000, 40000, 131072])), trial % 5
    if kind == 0:
        codes = (rng.standard_normal(V) * rng.choice([0.01, 1, 30])).astype(np.float16).view(np.uint16)
    elif kind == 1:
        codes = rng.integers(0, 1 << 16, V).astype(np.uint16)
    else:
        codes = (rng.standard_normal(V) * 3).astype(np.float16).view(np.uint16)
        at = rng.integers(0, V, size=int(rng.integers(1, 20)))
        codes[at] = rng.choice(specials[:3] if kind == 2 else specials, size=at.size)
        if kind == 4:
            codes[:] = 0xFC00
            codes[rng.integers(0, V, 3)] = rng.choice(specials, 3)
    codes = np.ascontiguousarray(codes)
    above = np.empty(V, np.uint32)
    n, m, edge = C.scan_present(codes, seen, present, d, above)
    h.update(repr((n, m, edge)).encode())
    if n > 0:
        listed = present[:n].copy()
        h.update(listed.tobytes() + d[:n].tobytes() + above[:m].tobytes())
        changed = codes.copy()
        changed[V // 2] = specials[trial % 10]
        h.update(bytes([C.holds(codes, listed, seen), C.holds(changed, listed, seen)]))
print(h.hexdigest())
"""


def test_the_avx2_and_sse2_first_passes_find_the_same_codes() -> None:
    """The AVX2 first pass reads the extremes off the codes as int16 and uint16 (a second pass for a row with
    -inf); the SSE2 one off their keys: the same listing, sparse top and holds on rows of every kind (NaN, ±inf,
    ±0, only -inf, random bits)."""
    digests = []
    for env in ({}, {"THERMOSPEC_NO_AVX2": "1"}):
        done = subprocess.run([sys.executable, "-c", _SCAN_SCRIPT], env={**os.environ, **env}, capture_output=True,
                              text=True, check=True)
        digests.append(done.stdout.strip())
    assert digests[0] == digests[1] and len(digests[0]) == 64
