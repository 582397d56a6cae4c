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
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.core.metrics import ce_gap_nats, overlap_mass
from thermospec.core.payload import Payload
from thermospec.core.proposal import explicit_probabilities, proposal_distribution
from thermospec.targets.trace_file import softmax64

__all__ = [
    "RowValues", "compiled", "position_metrics", "row_bytes_held", "row_values", "softmax_row", "top_support_of",
]

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


@dataclass(frozen=True, eq=False)
class RowValues:
    """A row's target and, for a float16 row, what its passes over V work from.

    Attributes
    ----------
    p : ndarray of float64, shape (V,)
        ``softmax64`` of the stored row, read-only.
    codes : ndarray of uint16, shape (V,), or None
        The stored float16 bit patterns (None: a float32 row).
    present : ndarray of int64
        The distinct codes, increasing (empty for a float32 row).
    counts, p_present : ndarray
        How many entries hold each present code, and their p.
    """

    p: NDArray[np.float64]
    codes: NDArray[np.uint16] | None = None
    present: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    counts: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    p_present: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0, dtype=np.float64))

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        extra = 0 if self.codes is None else self.codes.nbytes + 24 * self.present.shape[0]
        return int(self.p.nbytes) + extra


def row_bytes_held(dtype: np.dtype[Any]) -> int:
    """Bytes per token a cached row holds: its float64 p, and a float16 row's codes (2)."""
    return 10 if dtype.itemsize == 2 else 8


def _codes(raw: NDArray[Any]) -> NDArray[np.uint16] | None:
    """The float16 bit patterns of a row (native order), or None for a float32 row."""
    if raw.dtype.itemsize != 2:
        return None
    codes: NDArray[np.uint16] = np.ascontiguousarray(raw.astype(np.float16, copy=False)).view(np.uint16)
    return codes


def row_values(raw: NDArray[Any]) -> RowValues:
    """`softmax64` of a stored row, byte for byte, and its codes; a float16 row's exp is taken once per value."""
    codes = _codes(raw)
    if codes is None:
        p = softmax64(raw)
        p.setflags(write=False)
        return RowValues(p=p)
    if _COMPILED is not None:
        all_counts = _scratch("counts", CODES, np.int64)
        _COMPILED.code_counts(codes, all_counts)
    else:
        all_counts = np.bincount(codes, minlength=CODES)
    present = np.flatnonzero(all_counts)
    values = present.astype(np.uint16).view(np.float16).astype(np.float64)
    e_by_code = _scratch("e_by_code", CODES, np.float64)
    e_by_code[present] = np.exp(values - values.max())
    if _COMPILED is not None:
        p_by_code = _scratch("p_by_code", CODES, np.float64)
        p = np.empty(codes.shape[0], dtype=np.float64)
        _COMPILED.softmax16(codes, e_by_code, all_counts, p_by_code, p)
        p_present = p_by_code[present]
    else:
        e = e_by_code[codes]
        p = e / e.sum()
        p_present = e_by_code[present] / e.sum()
    p.setflags(write=False)
    return RowValues(p=p, codes=codes, present=present, counts=all_counts[present].astype(np.int64),
                     p_present=np.asarray(p_present, dtype=np.float64))


def softmax_row(raw: NDArray[Any]) -> NDArray[np.float64]:
    """`softmax64` of a stored row, byte for byte (`row_values`' p)."""
    return row_values(raw).p


def top_support_of(values: RowValues, K: int) -> NDArray[np.int64]:
    """The increasing tokens of the K largest entries of p and all tied with the K-th (those > 0 if it is 0)."""
    p = values.p
    V = p.shape[0]
    k = min(max(int(K), 1), V)
    if _COMPILED is None or values.codes is None:
        kth = np.partition(p, V - k)[V - k]
        return (np.flatnonzero(p >= kth) if kth > 0 else np.flatnonzero(p)).astype(np.int64)
    order = np.argsort(-values.p_present, kind="stable")  # the distinct values, largest p first
    ranked = np.cumsum(values.counts[order])
    kth = values.p_present[order[int(np.searchsorted(ranked, k))]]  # the k-th largest, counted with ties
    chosen = np.zeros(CODES, dtype=np.uint8)
    chosen[values.present[values.p_present >= kth if kth > 0 else values.p_present > 0]] = 1
    out = np.empty(V, dtype=np.int64)  # only the pages of the selected tokens are written (faulted in)
    n = _COMPILED.select_codes(values.codes, chosen, out)
    return out[:n].copy()


def position_metrics(values: RowValues, payload: Payload) -> tuple[float, float]:
    """``(overlap_mass, ce_gap_nats)`` of the row against F(ψ), as `core.metrics` on the dense q."""
    p, codes = values.p, values.codes
    if _COMPILED is None or codes is None:
        q = proposal_distribution(payload)
        return overlap_mass(p, q), ce_gap_nats(p, q)
    log_p = _scratch("log_p", CODES, np.float64)
    positive = values.p_present > 0
    log_p[values.present[positive]] = np.log(values.p_present[positive])
    ids = np.asarray(payload.ids, dtype=np.int64)
    order = np.argsort(ids)
    q_ids = explicit_probabilities(payload)[order]
    with np.errstate(divide="ignore"):
        log_q_ids = np.log(q_ids)
        log_eps = float(np.log(np.array([payload.eps], dtype=np.float64))[0])
    full = int(values.counts[positive].sum()) == p.shape[0]  # every p > 0: the gap's terms need no buffer
    work = _scratch("work", 1 if full else p.shape[0], np.float64)
    overlap, ce = _COMPILED.metrics(p, codes, log_p, ids[order], q_ids, log_q_ids, float(payload.eps), log_eps,
                                    full, work)
    return float(overlap), float(ce)
