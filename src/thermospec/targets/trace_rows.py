"""A trace row's passes over V — softmax, top-K support, ψ's metrics — with the bytes of the plain NumPy code.

A float16 row has at most 65,536 distinct values, and usually a few thousand: its softmax
and the logarithms the CE gap needs are computed by NumPy once per distinct value
(``exp(x - max x)`` and ``log p``, the same function on the same operand as per entry), and
the passes over V only gather, compare, divide and sum.  Those passes run in the optional
compiled module ``thermospec.targets._trace_rows`` (the GIL released, so positions craft in
parallel on threads); without it, the NumPy code below gives the same bytes (the tests pin
both to `softmax64` and `core.metrics`).  float32 rows take the plain NumPy path.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.core.metrics import ce_gap_nats, overlap_mass
from thermospec.core.payload import Payload
from thermospec.core.proposal import explicit_probabilities, proposal_distribution
from thermospec.targets.trace_file import softmax64

__all__ = ["compiled", "position_metrics", "softmax_row", "top_support_of"]

CODES = 1 << 16
"""Distinct float16 bit patterns."""
SCRATCH_ITEMS = 1 << 18
"""Largest buffer a thread keeps between rows (2 MiB of float64; V = 262,144)."""


def _load() -> ModuleType | None:
    try:
        return importlib.import_module("thermospec.targets._trace_rows")
    except ImportError:  # no compiler at install time: the NumPy code, same bytes
        return None


_COMPILED = _load()


def compiled() -> bool:
    """Whether the compiled passes are in use (else NumPy's, which give the same bytes)."""
    return _COMPILED is not None


_SCRATCH = threading.local()


def _scratch(name: str, size: int, dtype: type[np.generic]) -> NDArray[Any]:
    """This thread's reusable buffer `name` of `size` items (a fresh array costs its page faults on every write).

    Kept only up to `SCRATCH_ITEMS` items, so that a thread holds at most a few MiB however wide the rows.
    """
    if size > SCRATCH_ITEMS:
        return np.empty(size, dtype=dtype)
    held: NDArray[Any] | None = getattr(_SCRATCH, name, None)
    if held is None or held.shape[0] < size:
        held = np.empty(size, dtype=dtype)
        setattr(_SCRATCH, name, held)
    return held[:size]


def _codes(raw: NDArray[Any]) -> NDArray[np.uint16] | None:
    """The float16 bit patterns of a row (native order), or None for a float32 row."""
    if raw.dtype.itemsize != 2:
        return None
    codes: NDArray[np.uint16] = np.ascontiguousarray(raw.astype(np.float16, copy=False)).view(np.uint16)
    return codes


def _code_index(codes: NDArray[np.uint16]) -> NDArray[np.int64]:
    """``index[c]``: some position holding code c, -1 where none does."""
    if _COMPILED is not None:
        index = _scratch("index", CODES, np.int64)
        _COMPILED.code_index(codes, index)
    else:
        index = np.full(CODES, -1, dtype=np.int64)
        index[codes] = np.arange(codes.shape[0], dtype=np.int64)
    return index


def softmax_row(raw: NDArray[Any]) -> NDArray[np.float64]:
    """`softmax64` of a stored row, byte for byte; a float16 row's exp is taken once per distinct value."""
    codes = _codes(raw)
    if codes is None:
        return softmax64(raw)
    present = np.flatnonzero(_code_index(codes) >= 0)
    values = present.astype(np.uint16).view(np.float16).astype(np.float64)
    e_by_code = np.zeros(CODES, dtype=np.float64)
    e_by_code[present] = np.exp(values - values.max())
    if _COMPILED is not None:
        p = np.empty(codes.shape[0], dtype=np.float64)
        _COMPILED.softmax16(codes, e_by_code, p)
        return p
    e = e_by_code[codes]
    out: NDArray[np.float64] = e / e.sum()
    return out


def top_support_of(p: NDArray[np.float64], K: int) -> NDArray[np.int64]:
    """The increasing tokens of the K largest entries of p and all tied with the K-th (those > 0 if it is 0)."""
    V = p.shape[0]
    k = min(max(int(K), 1), V)
    if _COMPILED is None:
        kth = np.partition(p, V - k)[V - k]
        return (np.flatnonzero(p >= kth) if kth > 0 else np.flatnonzero(p)).astype(np.int64)
    kth = _COMPILED.kth_largest(p, k)
    out = np.empty(V, dtype=np.int64)  # only the pages of the selected tokens are written (faulted in)
    n = _COMPILED.select_top(p, kth, out)
    return out[:n].copy()


def position_metrics(p: NDArray[np.float64], raw: NDArray[Any], payload: Payload) -> tuple[float, float]:
    """``(overlap_mass, ce_gap_nats)`` of row p (stored as `raw`) against F(ψ), as `core.metrics` on the dense q."""
    codes = _codes(raw)
    if _COMPILED is None or codes is None:
        q = proposal_distribution(payload)
        return overlap_mass(p, q), ce_gap_nats(p, q)
    index = _code_index(codes)
    present = np.flatnonzero(index >= 0)
    log_p = np.zeros(CODES, dtype=np.float64)
    at = p[index[present]]
    positive = at > 0
    log_p[present[positive]] = np.log(at[positive])
    ids = np.asarray(payload.ids, dtype=np.int64)
    order = np.argsort(ids)
    q_ids = explicit_probabilities(payload)[order]
    with np.errstate(divide="ignore"):
        log_q_ids = np.log(q_ids)
        log_eps = float(np.log(np.array([payload.eps], dtype=np.float64))[0])
    work = _scratch("work", p.shape[0], np.float64)
    overlap, ce = _COMPILED.metrics(p, codes, log_p, ids[order], q_ids, log_q_ids, float(payload.eps), log_eps, work)
    return float(overlap), float(ce)
