"""A trace row's softmax, top-K support, ψ and ψ's metrics, with the bytes of the plain NumPy code.

A float16 row has at most 65,536 distinct values, and usually a few thousand: its softmax
and the logarithms the payload and the CE gap need are taken once per distinct value
(``exp(x - max x)`` and ``log p``, the same function on the same operand as per entry), and
everything else runs in the optional compiled module ``thermospec.targets._trace_rows`` from
the row's 2-byte codes and per-value tables: the sum of the softmax, the top-K support, the
payload's ids, codes, ε and wire bytes, F(ψ) on the ids and the overlap and CE gap against the
dense q, each sum in NumPy's pairwise order, in three passes over the codes (the largest value and the
sparse top, `RowValues.above`; the softmax's sum; the metrics).  One call does a row (`row_values`), one a ψ
(`craft_position`), taking the C library's exp and log where those are NumPy's bits
(`targets.trace_libm`; elsewhere NumPy's ufuncs run between the passes).  No V-sized float64
array is written while crafting; the dense row is built only when a caller asks for it
(`RowValues.p`).  A trace's wide rows do not even keep their codes (`row_values` with
``reread``): they are read again when needed, into a buffer each thread reuses
(`targets.trace_buffers`), since a cache of V-sized arrays costs the page faults of fresh
memory for each row it holds, about as much as crafting the row.  The passes release the
GIL, so positions craft in parallel on threads.

The plain path — `softmax64`, a partition, `core.payload`'s craft, encode and decode,
`core.metrics` on the dense q — is used for float32 rows and when the module is not built;
the tests pin the compiled path to it (same payload bytes, same floats).
"""

from __future__ import annotations

import importlib
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.core.metrics import ce_gap_nats, overlap_mass, topk_mass
from thermospec.core.payload import (
    HEADER_BYTES,
    MAX_K,
    UINT16_IDS_MAX_V,
    EpsSpec,
    Payload,
    craft_payload_from_support,
    decode_payload,
    encode_payload,
    payload_size,
)
from thermospec.core.proposal import explicit_probabilities, proposal_distribution
from thermospec.targets.trace_buffers import buffers
from thermospec.targets.trace_file import TraceShrankError, softmax64
from thermospec.targets.trace_libm import libm_is_numpys

__all__ = [
    "REREAD_BYTES", "Crafted", "RowValues", "add_row", "compiled", "craft_position", "p_at", "position_metrics",
    "residual_support", "row_bytes_held", "row_into", "row_values", "softmax_row", "top_support_of",
]

NO_KEY = 1 << 16
"""A float16 key (the code's bits ordered as its value) no code reaches: no sparse top kept."""
ABOVE_KEPT = 8192
"""Most tokens of a row's sparse top kept (`RowValues.above`; about V / 341 are found, a sampled estimate)."""
REREAD_BYTES = 128 * 1024
"""A float16 row of at least this many bytes keeps no codes in a trace's cache: they are read again when needed.
So large an array is a fresh memory map for malloc, whose page faults cost about as much as crafting the row,
for each row the cache holds; a smaller one is carved from memory already in use."""


def _load() -> ModuleType | None:
    try:
        module = importlib.import_module("thermospec.targets._trace_rows")
    except ImportError:  # no compiler at install time: the plain NumPy code, same bytes
        return None
    return module if hasattr(module, "craft_all") else None  # a stale build of another layout: the plain code


_COMPILED = _load()


def compiled() -> bool:
    """Whether the compiled passes are in use (else the plain NumPy code, which gives the same bytes)."""
    return _COMPILED is not None


def _empty_codes() -> NDArray[np.uint16]:
    return np.zeros(0, dtype=np.uint16)


def _empty_floats() -> NDArray[np.float64]:
    return np.zeros(0, dtype=np.float64)


def _empty_tokens() -> NDArray[np.uint32]:
    return np.zeros(0, dtype=np.uint32)


@dataclass(frozen=True, eq=False)
class RowValues:
    """A row's target by its distinct float16 values (compiled path), or dense (float32 rows, plain path).

    Attributes
    ----------
    V : int
        Tokens.
    codes : ndarray of uint16, shape (V,), or None
        The stored float16 bit patterns (None: the row is held dense, in `p`, or read again by `reread`).
    present : ndarray of uint16
        The distinct codes by decreasing value.
    p_present : ndarray of float64
        ``softmax64`` of the row at each present code (non-increasing).
    log_present : ndarray of float64
        NumPy's ``log`` of the positive ones (a prefix of `p_present`).
    positive : int
        Tokens of ``p > 0``.
    above, above_key : ndarray of uint32, int
        The increasing tokens of the sparse top (every token whose code's key is >= `above_key`, found by the
        row's first pass; `NO_KEY`: none kept), the candidates of a top-K support that holds at most as many.
    reread : callable or None
        ``reread(out)`` writes the codes into `out` (uint16, shape (V,)): a row that does not keep them.
    """

    V: int
    codes: NDArray[np.uint16] | None = None
    present: NDArray[np.uint16] = field(default_factory=_empty_codes)
    p_present: NDArray[np.float64] = field(default_factory=_empty_floats)
    log_present: NDArray[np.float64] = field(default_factory=_empty_floats)
    positive: int = 0
    above: NDArray[np.uint32] = field(default_factory=_empty_tokens)
    above_key: int = NO_KEY
    reread: Callable[[NDArray[np.uint16]], None] | None = field(default=None, repr=False)
    _dense: list[NDArray[np.float64]] = field(default_factory=list, repr=False)

    @property
    def p(self) -> NDArray[np.float64]:
        """``softmax64`` of the stored row, byte for byte, read-only (built from the codes when first asked)."""
        if not self._dense:
            codes = _row_codes(self)
            assert _COMPILED is not None and codes is not None
            dense = np.empty(self.V, dtype=np.float64)
            _COMPILED.dense(codes, self.present, self.p_present, buffers().table, dense)
            dense.setflags(write=False)
            self._dense[:] = [dense]
        return self._dense[0]

    @property
    def nbytes(self) -> int:
        """Bytes held (the dense row counted once built)."""
        held = sum(int(a.nbytes) for a in self._dense) + self.present.nbytes + self.p_present.nbytes + self.above.nbytes
        return held + self.log_present.nbytes + (0 if self.codes is None else self.codes.nbytes)


def _row_codes(values: RowValues) -> NDArray[np.uint16] | None:
    """The row's codes (None: a dense row), those it keeps or else read again into this thread's buffer, valid
    until this thread reads another row's.

    Raises
    ------
    TraceShrankError
        Read again, the row holds a value it did not hold (the file changed under the run).
    """
    if values.codes is not None or values.reread is None:
        return values.codes
    work = buffers()
    if work.held_for is values:
        return work.held
    work.held_for = None
    codes = work.held = work.wide("codes", values.V, np.uint16)
    values.reread(codes)
    if _COMPILED is not None and not _COMPILED.holds(codes, values.present, work.seen):
        raise TraceShrankError("a trace row read again holds other values (the file changed while in use)")
    work.held_for = values
    return codes


def row_bytes_held(dtype: np.dtype[Any], V: int) -> int:
    """Bytes per token a cached row holds at most: its float64 p once asked for, and the codes (2) of a float16
    row narrower than `REREAD_BYTES` (a wider one reads them again when needed).  (Besides its per-value tables,
    18 bytes a distinct value.)"""
    return 10 if dtype.itemsize == 2 and 2 * V < REREAD_BYTES else 8


def _codes(raw: NDArray[Any]) -> NDArray[np.uint16] | None:
    """The float16 bit patterns of a row (native order), or None for a float32 row."""
    if raw.dtype.itemsize != 2:
        return None
    codes: NDArray[np.uint16] = np.ascontiguousarray(raw.astype(np.float16, copy=False)).view(np.uint16)
    return codes


def _dense_values(raw: NDArray[Any]) -> RowValues:
    p = softmax64(raw)
    p.setflags(write=False)
    return RowValues(V=int(p.shape[0]), positive=int(np.count_nonzero(p)), _dense=[p])


def row_values(raw: NDArray[Any], reread: Callable[[NDArray[np.uint16]], None] | None = None) -> RowValues:
    """`softmax64` of a stored row, byte for byte; a float16 row by its distinct values (exp and log once each).

    With `reread` (``reread(out)`` writes the row's codes into `out`, uint16 of shape (V,)), a float16 row
    keeps no V-sized array: the passes read its codes again, into a buffer each thread reuses.
    """
    codes = _codes(raw)
    if codes is None or _COMPILED is None:
        return _dense_values(raw)
    values = _values16(codes, reread)
    if values.reread is not None:  # this thread holds the codes until it reads another row's
        work = buffers()
        work.held, work.held_for = codes, values
    return values


def _values16(codes: NDArray[np.uint16], reread: Callable[[NDArray[np.uint16]], None] | None) -> RowValues:
    """A float16 row by its distinct values: `codes` kept if `reread` is None."""
    assert _COMPILED is not None
    work = buffers()
    above = work.wide("above", codes.shape[0], np.uint32)
    if libm_is_numpys(_COMPILED):  # one call: NumPy's exp and log are the C library's
        got = _COMPILED.values_all(codes, work.seen, work.present, work.d, work.logp, work.table, work.mark, above)
        if got is None:  # NaN or +inf (a loaded trace has none): the plain code's NaNs
            return _dense_values(codes.view(np.float16))
        n, n_pos, positive, m, edge = got
        present, p_present, log_present = work.present[:n].copy(), work.d[:n].copy(), work.logp[:n_pos].copy()
    else:
        n, m, edge = _COMPILED.scan_present(codes, work.seen, work.present, work.d, above)
        if n < 0:
            return _dense_values(codes.view(np.float16))
        present = work.present[:n].copy()
        e = np.exp(work.d[:n])
        p_present = np.empty(n, dtype=np.float64)
        _, n_pos, positive = _COMPILED.softmax_present(codes, present, e, work.table, p_present, work.mark)
        log_present = np.log(p_present[:n_pos])
    kept = m <= ABOVE_KEPT
    return RowValues(V=int(codes.shape[0]), codes=codes if reread is None else None, present=present,
                     p_present=p_present, log_present=log_present, positive=int(positive),
                     above=above[:m].copy() if kept else _empty_tokens(), above_key=edge if kept else NO_KEY,
                     reread=reread)


def add_row(values: RowValues, *totals: NDArray[np.float64]) -> None:
    """``total += values.p`` for each total, without building p (the same float sums)."""
    codes = _row_codes(values)
    if _COMPILED is None or codes is None:
        for total in totals:
            total += values.p
        return
    work = buffers()
    for total in totals:
        _COMPILED.add_to(codes, values.present, values.p_present, work.table, total)


def row_into(values: RowValues, out: NDArray[np.float64]) -> NDArray[np.float64]:
    """The row's dense p: the one held if built (or a float32 row's), else written into `out` (shape (V,)),
    a buffer the caller reuses (a fresh V-sized array costs its page faults)."""
    codes = None if values._dense else _row_codes(values)
    if _COMPILED is None or codes is None:
        return values.p
    _COMPILED.dense(codes, values.present, values.p_present, buffers().table, out)
    return out


def p_at(values: RowValues, tokens: NDArray[np.int64]) -> NDArray[np.float64]:
    """The row's p at `tokens` (``values.p[tokens]``, without building p)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    codes = _row_codes(values)
    if _COMPILED is None or codes is None:
        return np.asarray(values.p[tokens], dtype=np.float64)
    out = np.empty(tokens.shape[0], dtype=np.float64)
    _COMPILED.p_at(codes, values.present, values.p_present, buffers().table, tokens, out)
    return out


def residual_support(values: RowValues, eps: float, ids: NDArray[np.int64],
                     q_ids: NDArray[np.float64]) -> tuple[NDArray[np.int64], NDArray[np.float64]] | None:
    """The increasing tokens where ``p > q`` (q = `eps` off the increasing `ids`, `q_ids` on them) and the
    running sum (``np.cumsum``) of the residual ``p - min(p, q)`` there, or where that is empty or sums to 0,
    the tokens of ``p > 0`` and the running sum of p; None: no compiled pass for this row (use the dense p)."""
    codes = _row_codes(values)
    if _COMPILED is None or codes is None:
        return None
    work = buffers()
    tokens, cum = work.wide("residual_tokens", values.V, np.int64), work.wide("residual_cum", values.V, np.float64)
    r = _COMPILED.residual(codes, values.present, values.p_present, work.table, float(eps),
                           np.ascontiguousarray(ids, dtype=np.int64), np.ascontiguousarray(q_ids, dtype=np.float64),
                           tokens, cum)
    return tokens[:r].copy(), cum[:r].copy()


def softmax_row(raw: NDArray[Any]) -> NDArray[np.float64]:
    """`softmax64` of a stored row, byte for byte (`row_values`' p)."""
    return row_values(raw).p


def top_support_of(values: RowValues, K: int) -> NDArray[np.int64]:
    """The increasing tokens of the K largest entries of p and all tied with the K-th (those > 0 if it is 0)."""
    V = values.V
    k = min(max(int(K), 1), V)
    codes = _row_codes(values)
    if _COMPILED is None or codes is None:
        p = values.p
        kth = np.partition(p, V - k)[V - k]
        return (np.flatnonzero(p >= kth) if kth > 0 else np.flatnonzero(p)).astype(np.int64)
    work = buffers()
    out = work.wide("tokens", V, np.int64)
    m = _COMPILED.top_tokens(codes, values.present, values.p_present, values.log_present.shape[0],
                             min(k, values.positive), work.jmap, work.count, work.wide("chosen", V, np.uint32), out,
                             values.above, values.above_key)
    return out[:m].copy()


def _metrics16(values: RowValues, codes: NDArray[np.uint16], ids: NDArray[np.int64], q: NDArray[np.float64],
               zero: bool) -> tuple[float, float]:
    """The compiled overlap and CE gap; q is F(ψ) on the ids (payload order) followed by ε."""
    assert _COMPILED is not None
    if zero:
        with np.errstate(divide="ignore"):
            log_q = np.log(q)
    else:
        log_q = np.log(q)
    full = values.positive == values.V  # every p > 0: the gap's terms need no buffer
    work = buffers()
    overlap, ce = _COMPILED.metrics(
        codes, values.present, values.p_present, values.log_present, values.positive, ids, q, log_q,
        work.jmap, work.pairs, np.empty(2 * ids.shape[0], dtype=np.float64),
        work.wide("terms", 1 if full else values.V, np.float64),
    )
    return float(overlap), float(ce)


def position_metrics(values: RowValues, payload: Payload) -> tuple[float, float]:
    """``(overlap_mass, ce_gap_nats)`` of the row against F(ψ), as `core.metrics` on the dense q."""
    codes = _row_codes(values)
    if _COMPILED is None or codes is None:
        q = proposal_distribution(payload)
        return overlap_mass(values.p, q), ce_gap_nats(values.p, q)
    ids = np.asarray(payload.ids, dtype=np.int64)
    q = np.append(explicit_probabilities(payload), payload.eps)
    return _metrics16(values, codes, ids, q, bool(np.any(q <= 0)))


@dataclass(frozen=True, eq=False)
class Crafted:
    """ψ of one row and its metrics against the row (`craft_position`).

    Attributes
    ----------
    wire : bytes
        The encoded payload.
    payload : Payload
        The payload decoded from `wire`.
    topk_mass, overlap_mass, ce_gap_nats : float
        `core.metrics` of the row and F(ψ).
    """

    wire: bytes
    payload: Payload
    topk_mass: float
    overlap_mass: float
    ce_gap_nats: float


def _craft_plain(values: RowValues, K: int, tau: float, eps: EpsSpec) -> Crafted:
    """SPEC's code: the top support, `craft_payload_from_support`, encode, decode, `core.metrics` on the dense q."""
    p = values.p
    tokens = top_support_of(values, K)
    wire = encode_payload(craft_payload_from_support(tokens, p[tokens], values.V, K, tau, eps))
    payload = decode_payload(wire)
    q = proposal_distribution(payload)
    return Crafted(wire=wire, payload=payload, topk_mass=topk_mass(p, payload.ids), overlap_mass=overlap_mass(p, q),
                   ce_gap_nats=ce_gap_nats(p, q))


def _payload_of(wire: bytes, ids: NDArray[np.int64], V: int, tau32: float, eps32: float, delta: float) -> Payload:
    """The payload whose encoding is `wire`, whose ids (payload order) the compiled pass wrote into `ids` (crafted
    here: its fields are known, nothing to check)."""
    k = ids.shape[0]
    at = HEADER_BYTES + k * (4 if V > UINT16_IDS_MAX_V else 2)
    psi_codes = np.frombuffer(wire, dtype=np.uint8, count=k, offset=at)
    return Payload(ids=ids.copy(), codes=psi_codes.copy(), vocab_size=V, tau=tau32, eps=eps32, delta=delta)


@lru_cache(maxsize=64)
def _float32(value: float) -> float:
    """`core.payload`'s float32 rounding of a field (τ, a given ε), remembered: a run crafts with the same few."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def craft_position(values: RowValues, K: int, tau: float, eps: EpsSpec) -> Crafted:
    """ψ of a row (``craft_payload`` of the dense row, encoded) and its metrics, without a V-sized float64 array.

    Raises
    ------
    PayloadError
        As `core.payload.craft_payload_from_support` (the plain code is run to say why).
    """
    C, codes = _COMPILED, _row_codes(values)
    V = values.V
    k = min(int(K), V, values.positive)
    if C is None or codes is None or not 1 <= k <= MAX_K or (eps != "auto" and not math.isfinite(eps)):
        return _craft_plain(values, K, tau, eps)  # (NaN is the compiled pass's "auto": a given one is refused here)
    body = bytearray(payload_size(k, V) - 4)
    work = buffers()
    eps_in = float("nan") if eps == "auto" else _float32(eps) + 0.0
    if libm_is_numpys(C):  # one call: craft, F(ψ) and the metrics (NumPy's exp and log are the C library's)
        chosen, order, ids, top, d, q, log_q, on_ids, terms = work.crafting(k, V, values.positive == V)
        got = C.craft_all(codes, values.present, values.p_present, values.log_present, values.positive, k,
                          _float32(tau), eps_in, work.jmap, work.count, chosen, order, ids, top, body, d, q, log_q,
                          work.pairs, on_ids, terms, values.above, values.above_key)
        if got is None:  # the plain code raises the PayloadError that says why
            return _craft_plain(values, K, tau, eps)
        eps32, delta, topk, overlap, ce = got
        wire = bytes(body + struct.pack("<I", zlib.crc32(body)))
        return Crafted(wire=wire, payload=_payload_of(wire, ids, V, _float32(tau), eps32, delta), topk_mass=topk,
                       overlap_mass=overlap, ce_gap_nats=ce)
    d, ids = np.empty(k, dtype=np.float64), np.empty(k, dtype=np.int64)
    got = C.craft(codes, values.present, values.p_present, values.log_present, values.log_present.shape[0], k,
                  _float32(tau), eps_in, work.jmap, work.count, work.wide("chosen", V, np.uint32),
                  work.wide("order", V, np.uint32), ids, np.empty(k, dtype=np.float64), body, d,
                  values.above, values.above_key)
    if got is None:
        return _craft_plain(values, K, tau, eps)
    eps32, delta, topk = got
    body += struct.pack("<I", zlib.crc32(body))
    wire = bytes(body)
    payload = _payload_of(wire, ids, V, _float32(tau), eps32, delta)
    ids = payload.ids
    q = np.empty(k + 1, dtype=np.float64)
    zero = bool(C.explicit_q(np.exp(d), V, eps32, q))
    overlap, ce = _metrics16(values, codes, ids, q, zero)
    return Crafted(wire=wire, payload=payload, topk_mass=float(topk), overlap_mass=overlap, ce_gap_nats=ce)
