"""The ψ payload: the few hundred bytes the host sends to a TSU (wire format v1).

A payload carries the K most probable tokens of one target row, their
log-probabilities quantised to 8 bits, a temperature τ and a per-token tail
probability ε for the other ``V - K`` tokens.  All integers are little-endian.

==========  =======  =====================================================
offset      bytes    field
==========  =======  =====================================================
0           4        magic ``b"PSI1"``
4           1        version, 1
5           1        flags: bit 0 set iff token ids are uint32 (V > 65536)
6           2        K, uint16, ``1 <= K <= V``
8           4        V, uint32, ``V >= 2``
12          4        tau, float32, finite, > 0
16          4        eps, float32, >= 0 and ``(V - K) * eps < 1``
20          4        delta, float32, >= 0: quantisation step in nats
24          2K / 4K  ids, distinct, < V, in descending order of probability
...         K        codes, uint8: dequantised logit ``-codes[i] * delta``
...         4        CRC-32 (zlib) of every byte before it
==========  =======  =====================================================

Quantisation: with ``l_i = log p_i - log p_max`` over the K ids,
``delta = -min_i l_i / 255`` rounded to float32, then
``codes_i = rint(-l_i / delta)`` with the stored delta, clipped to 0..255.
The error is at most ``delta / 2`` nats per logit.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "HEADER_BYTES",
    "MAGIC",
    "Payload",
    "PayloadError",
    "craft_payload",
    "craft_payload_from_support",
    "decode_payload",
    "encode_payload",
    "payload_size",
]


MAGIC: Final = b"PSI1"
VERSION: Final = 1
HEADER_BYTES: Final = 24
CRC_BYTES: Final = 4
MAX_K: Final = 0xFFFF  # the K field is a uint16
MAX_V: Final = 0xFFFFFFFF  # the V field is a uint32
UINT16_IDS_MAX_V: Final = 65536
_HEADER = struct.Struct("<4sBBHIfff")
EpsSpec = float | Literal["auto"]


class PayloadError(ValueError):
    """A ψ payload that cannot be crafted, encoded or decoded; the message names the field."""


@dataclass(frozen=True, eq=False)
class Payload:
    """A decoded (or freshly crafted) ψ payload.

    Attributes
    ----------
    ids : ndarray of int64, shape (K,)
        Token ids in descending order of probability.
    codes : ndarray of uint8, shape (K,)
        Quantised logits: the dequantised logit of ``ids[i]`` is ``-codes[i] * delta``.
    vocab_size : int
        V, the size of the vocabulary.
    tau : float
        Temperature, a float32 value widened to float64.
    eps : float
        Per-token tail probability, a float32 value widened to float64.
    delta : float
        Quantisation step in nats, a float32 value widened to float64.
    """

    ids: NDArray[np.int64]
    codes: NDArray[np.uint8]
    vocab_size: int
    tau: float
    eps: float
    delta: float

    @property
    def K(self) -> int:
        """Number of explicitly sent token ids."""
        return int(self.ids.shape[0])

    @property
    def tail_mass(self) -> float:
        """``T = (V - K) * eps``, the probability F(ψ) gives to the tokens not sent."""
        return (self.vocab_size - self.K) * self.eps

    @property
    def n_bytes(self) -> int:
        """Length of this payload on the wire."""
        return payload_size(self.K, self.vocab_size)


def payload_size(K: int, V: int) -> int:
    """Number of bytes of an encoded payload with K ids over a vocabulary of V tokens.

    Examples
    --------
    >>> payload_size(128, 256)
    412
    """
    id_bytes = 2 if V <= UINT16_IDS_MAX_V else 4
    return HEADER_BYTES + K * (id_bytes + 1) + CRC_BYTES


def _float32(value: float) -> float:
    """Round to float32 and widen back: the value a payload field really carries.

    A value beyond float32's range becomes inf silently: the field check then rejects it
    with one clear message instead of a NumPy overflow warning on stderr.
    """
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def _check_fields(K: int, V: int, tau: float, eps: float, delta: float) -> None:
    """Validate the scalar fields of a payload, raising `PayloadError` naming the field."""
    if not 2 <= V <= MAX_V:
        raise PayloadError(f"V: must be an integer in [2, {MAX_V}], got {V}")
    if not 1 <= K <= min(V, MAX_K):
        raise PayloadError(f"K: must be an integer in [1, min(V, {MAX_K})] = [1, {min(V, MAX_K)}], got {K}")
    if not (np.isfinite(tau) and tau > 0):
        raise PayloadError(f"tau: must be a finite number > 0 (as float32), got {tau!r}")
    if not (np.isfinite(eps) and eps >= 0):
        raise PayloadError(f"eps: must be a finite number >= 0 (as float32), got {eps!r}")
    if not (V - K) * eps < 1:
        raise PayloadError(f"eps: (V - K) * eps must be < 1, got ({V} - {K}) * {eps!r} = {(V - K) * eps!r}")
    if not (np.isfinite(delta) and delta >= 0):
        raise PayloadError(f"delta: must be a finite number >= 0 (as float32), got {delta!r}")


def _check_ids_codes(ids: NDArray[np.int64], codes: NDArray[np.uint8], V: int) -> None:
    in_order = np.sort(ids)
    if ids.size and (in_order[0] < 0 or in_order[-1] >= V):
        raise PayloadError(f"ids: every id must be in [0, {V}), got range [{in_order[0]}, {in_order[-1]}]")
    if np.any(in_order[1:] == in_order[:-1]):
        raise PayloadError("ids: token ids must be distinct")
    if codes.size and codes[0] != 0:
        raise PayloadError(f"codes: the most probable id must have code 0, got {codes[0]}")
    if np.any(codes[1:] < codes[:-1]):  # compared, not subtracted: no uint8 wrap-around
        raise PayloadError("codes: must be non-decreasing (ids in descending order of probability)")


def craft_payload(p: NDArray[np.float64], K: int, tau: float, eps: EpsSpec = "auto") -> Payload:
    """Craft the Top-K payload of one target row (SPEC §2).

    Parameters
    ----------
    p : ndarray of float64, shape (V,)
        Target row: non-negative, summing to 1.
    K : int
        Number of ids asked for.  Clamped to V and to the number of tokens with p > 0
        (tokens with p = 0 are never sent); the payload's `Payload.K` says what was sent.
    tau : float
        Temperature, > 0.  Stored as float32.
    eps : float or "auto"
        Per-token tail probability.  ``"auto"`` spreads the target's tail mass
        ``1 - sum(p[ids])`` uniformly over the ``V - K`` other tokens.

    Returns
    -------
    Payload

    Raises
    ------
    PayloadError
        If an argument is out of range; the message names it.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise PayloadError(f"p: must be one target row (1-D), got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or not p.sum() > 0:
        raise PayloadError("p: must be finite, non-negative and not all zero")
    support = np.flatnonzero(p)
    return craft_payload_from_support(support, p[support], int(p.shape[0]), K, tau, eps)


def craft_payload_from_support(
    tokens: NDArray[np.int64], probs: NDArray[np.float64], V: int, K: int, tau: float, eps: EpsSpec = "auto"
) -> Payload:
    """Craft the Top-K payload of a target row given by its support: the same bytes as `craft_payload`.

    Parameters
    ----------
    tokens : ndarray of int64, shape (n,)
        The tokens of positive probability, strictly increasing, each < V.
    probs : ndarray of float64, shape (n,)
        Their probabilities, > 0 (the row's other entries are 0).
    V : int
        Vocabulary size.
    K, tau, eps
        As in `craft_payload`.

    Returns
    -------
    Payload

    Raises
    ------
    PayloadError
        If an argument is out of range; the message names it.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if tokens.ndim != 1 or tokens.shape != probs.shape or tokens.size == 0:
        raise PayloadError(f"support: need as many tokens as probabilities (>= 1), got {tokens.shape}, {probs.shape}")
    if not np.all(np.isfinite(probs)) or np.any(probs <= 0):
        raise PayloadError("p: the support's probabilities must be finite and > 0")
    if tokens[0] < 0 or tokens[-1] >= V or np.any(np.diff(tokens) <= 0):
        raise PayloadError(f"support: tokens must be strictly increasing and in [0, {V})")
    if K < 1:
        raise PayloadError(f"K: must be >= 1, got {K}")
    k = min(K, V, int(tokens.shape[0]))
    if k > MAX_K:
        raise PayloadError(f"K: at most {MAX_K} ids fit the uint16 K field, got {k}")
    # Descending probability, ties broken by the lower id: a stable sort of -p over increasing tokens.
    order = np.argsort(-probs, kind="stable")[:k]
    ids = tokens[order]
    top = probs[order]
    logp = np.log(top)
    ell = logp - logp[0]
    spread = float(-ell.min())
    delta = _float32(spread / 255.0) if spread > 0 else 0.0  # +0.0: all equal must not send -0.0's sign bit
    if delta > 0:
        codes = np.clip(np.rint(-ell / delta), 0, 255).astype(np.uint8)
    else:
        codes = np.zeros(k, dtype=np.uint8)
    tau32 = _float32(tau)
    if eps == "auto":
        tail = max(0.0, 1.0 - float(top.sum()))
        eps32 = _float32(tail / (V - k)) if k < V else 0.0
        while (V - k) * eps32 >= 1.0:  # float32 rounding up can only cross 1 by an ulp
            eps32 = float(np.nextafter(np.float32(eps32), np.float32(0)))
    else:
        eps32 = _float32(eps) + 0.0  # a user's -0.0 is sent as +0.0: the same bytes as 0
    _check_fields(k, V, tau32, eps32, delta)
    return Payload(ids=ids, codes=codes, vocab_size=V, tau=tau32, eps=eps32, delta=delta)


def encode_payload(payload: Payload) -> bytes:
    """Encode a payload to its v1 wire bytes.

    Raises
    ------
    PayloadError
        If a field is out of range.
    """
    K, V = payload.K, payload.vocab_size
    _check_fields(K, V, payload.tau, payload.eps, payload.delta)
    ids = np.asarray(payload.ids, dtype=np.int64)
    codes = np.asarray(payload.codes, dtype=np.uint8)
    if codes.shape != ids.shape:
        raise PayloadError(f"codes: need one code per id, got {codes.size} codes for {ids.size} ids")
    _check_ids_codes(ids, codes, V)
    wide = V > UINT16_IDS_MAX_V
    header = _HEADER.pack(MAGIC, VERSION, int(wide), K, V, payload.tau, payload.eps, payload.delta)
    body = header + ids.astype("<u4" if wide else "<u2").tobytes() + codes.tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def decode_payload(data: bytes) -> Payload:
    """Decode and fully validate v1 wire bytes.

    Never crashes on arbitrary input: anything that is not a valid, canonical
    payload raises `PayloadError` naming the offending field.

    Raises
    ------
    PayloadError
        Truncated or too-long data, wrong magic, version, flags or CRC, K, V, τ, ε
        or δ out of range, duplicate or out-of-range ids, codes out of order.
    """
    data = bytes(data)
    if len(data) < HEADER_BYTES + CRC_BYTES:
        raise PayloadError(f"payload: truncated, {len(data)} bytes is less than the minimum 28")
    magic, version, flags, K, V, tau32, eps32, delta32 = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PayloadError(f"magic: expected {MAGIC!r}, got {magic!r}")
    if version != VERSION:
        raise PayloadError(f"version: expected {VERSION}, got {version}")
    if flags & ~1:
        raise PayloadError(f"flags: only bit 0 may be set, got {flags:#04x}")
    wide = bool(flags & 1)
    if V < 2:
        raise PayloadError(f"V: must be >= 2, got {V}")
    if wide != (V > UINT16_IDS_MAX_V):
        raise PayloadError(f"flags: bit 0 (uint32 ids) must be set iff V > {UINT16_IDS_MAX_V}, V = {V}")
    if not 1 <= K <= V:
        raise PayloadError(f"K: must be in [1, V] = [1, {V}], got {K}")
    expected = payload_size(K, V)
    if len(data) < expected:
        raise PayloadError(f"payload: truncated, {len(data)} bytes but K={K}, V={V} needs {expected}")
    if len(data) > expected:
        raise PayloadError(f"payload: too long, {len(data)} bytes but K={K}, V={V} needs {expected}")
    (crc,) = struct.unpack_from("<I", data, expected - CRC_BYTES)
    if crc != zlib.crc32(data[: expected - CRC_BYTES]):
        raise PayloadError("crc32: checksum mismatch, the payload is corrupted")
    tau, eps, delta = float(tau32), float(eps32), float(delta32)
    _check_fields(K, V, tau, eps, delta)
    id_bytes = 4 if wide else 2
    ids = np.frombuffer(data, dtype="<u4" if wide else "<u2", count=K, offset=HEADER_BYTES)
    codes = np.frombuffer(data, dtype=np.uint8, count=K, offset=HEADER_BYTES + K * id_bytes)
    ids64 = ids.astype(np.int64)
    codes8 = codes.copy()
    _check_ids_codes(ids64, codes8, V)
    return Payload(ids=ids64, codes=codes8, vocab_size=int(V), tau=tau, eps=eps, delta=delta)
