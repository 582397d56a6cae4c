"""Recorded next-token distributions (traces): T positions of V log-probabilities, memory-mapped (SPEC §8).

A trace is a ``(T, V)`` float16 or float32 array of log-probabilities or logits,
a ``.npy`` file or the ``logprobs`` member of a ``.npz`` (with optional ``tokens``,
``vocab``, ``meta``; format: docs/traces.md).  Position t's target is
``softmax(row_t)`` in float64.  A run is teacher-forced (step s uses position
``s mod T`` whatever was emitted): a trace is no bigram chain and has no pi, and
`TraceTarget` is indexed by position.  Files are data from elsewhere: read without
unpickling, scanned once at load in bounded memory (bad rows are refused before a
run writes anything), memory-mapped, rows built on demand into a byte-bounded
cache.  `TraceWriter` (`targets.trace_writer`) streams a trace to disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import _lru_cache_wrapper, lru_cache
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from thermospec.targets.trace_writer import TraceWriter

__all__ = [
    "ROW_CACHE_BYTES", "SCAN_CHUNK_BYTES", "PositionTarget", "TraceError", "TraceTarget", "TraceWriter",
    "load_trace", "softmax64",
]

ROW_CACHE_BYTES = 256 * 1024 * 1024
"""Memory bound of a trace's cache of float64 rows (256 rows at V = 131,072)."""
SCAN_CHUNK_BYTES = 8 * 1024 * 1024
"""File bytes read at a time by the load-time scan (its working memory is about 6 times this)."""
SURELY_POSITIVE = -700.0
"""``x - max x`` above this: the softmax entry is > 0 for any V < 2**32 (exp(-700) / 2**32 > 4.9e-324)."""
SURELY_ZERO = -750.0
"""``x - max x`` below this: exp underflows to exactly 0 in float64."""
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # a zip member's local file header (30 bytes)


class TraceError(ValueError):
    """A trace file that cannot be used; the one-line message names the file and the reason."""


class PositionTarget(Protocol):
    """Next-token distributions indexed by position (teacher-forced): what the engine needs of a trace.

    ``V`` tokens, ``positions`` T (step s uses position ``s mod T``), ``source`` and
    ``vocabulary`` as a `BigramTarget`'s, ``rows_stored`` False (rows built on demand),
    ``row(t)`` dense float64 summing to 1, ``support(t)`` its increasing positive tokens
    and their probabilities, ``top_support(t, K)`` the part of it a K-id ψ needs, and
    ``widest_support()`` the most positive entries of any row.
    """

    @property
    def V(self) -> int: ...
    @property
    def positions(self) -> int: ...
    @property
    def source(self) -> str: ...
    @property
    def vocabulary(self) -> tuple[str, ...] | None: ...
    @property
    def rows_stored(self) -> bool: ...
    def row(self, t: int) -> NDArray[np.float64]: ...
    def support(self, t: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]: ...
    def top_support(self, t: int, K: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]: ...
    def widest_support(self) -> int: ...


def softmax64(logits: ArrayLike) -> NDArray[np.float64]:
    """``exp(x - max x) / sum`` in float64: a trace row's target (SPEC §8)."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max())
    p: NDArray[np.float64] = e / e.sum()
    return p


@dataclass(frozen=True, eq=False)
class TraceTarget:
    """A trace: position t's target is ``softmax64(logits[t])``; build it with `load_trace`.

    Attributes
    ----------
    path, sha256 : Path, str
        The trace file and the SHA-256 of its bytes.
    logits : ndarray, shape (T, V), float16 or float32
        The file's array, memory-mapped read-only (never loaded whole).
    support_sizes : ndarray of int64, shape (T,)
        Number of positive entries of each position's target (found by the load-time scan).
    tokens : ndarray of int64, shape (T,), or None
        The observed token at each position (the token the row predicts), read-only.
    vocabulary : tuple of str or None
        The text of each token id.
    metadata : mapping
        The ``meta`` member's JSON object (model, text, ...), empty if absent.
    row_capacity : int
        Rows the cache holds at most (from `load_trace`'s byte bound).
    """

    path: Path
    logits: NDArray[Any]
    sha256: str
    support_sizes: NDArray[np.int64]
    tokens: NDArray[np.int64] | None = None
    vocabulary: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    row_capacity: int = 1
    _rows: _lru_cache_wrapper[NDArray[np.float64]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rows", lru_cache(maxsize=self.row_capacity)(self._build_row))

    @property
    def V(self) -> int:
        """Vocabulary size."""
        return int(self.logits.shape[1])

    @property
    def positions(self) -> int:
        """Number of positions T."""
        return int(self.logits.shape[0])

    source = "trace"
    rows_stored = False
    """Rows are built on demand from the memory-mapped file."""
    stationary_unique = False
    corpus_sha256 = None
    """A trace is no corpus: its file's digest is `sha256`."""

    @property
    def pi(self) -> NDArray[np.float64]:
        """Nothing: a trace is teacher-forced, no chain, so it has no stationary law (AttributeError)."""
        raise AttributeError("a trace is teacher-forced: it has no stationary distribution π (no x0)")

    @property
    def dtype(self) -> str:
        """``"float16"`` or ``"float32"``: how the file stores the rows."""
        return str(self.logits.dtype.newbyteorder("="))

    def _build_row(self, t: int) -> NDArray[np.float64]:
        p = softmax64(self.logits[t])
        p.setflags(write=False)  # shared by the cache: nobody may change it
        return p

    def row(self, t: int) -> NDArray[np.float64]:
        """Position t's target ``softmax(logits[t])``, float64, read-only, from the bounded cache (IndexError off T)."""
        if not 0 <= t < self.positions:
            raise IndexError(f"position {t} is outside the trace's [0, {self.positions})")
        return self._rows(int(t))

    def support(self, t: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Position t by its support: the increasing tokens of ``p > 0`` and their probabilities (``row(t)``'s)."""
        p = self.row(t)
        tokens = np.flatnonzero(p).astype(np.int64)
        return tokens, p[tokens]

    def top_support(self, t: int, K: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Position t's K most probable tokens and all tied with the K-th, increasing, and their probabilities.

        O(V), no full sort: ``craft_payload_from_support(*top_support(t, K), V, K, tau, eps)``
        gives the same payload bytes as ``craft_payload(row(t), K, tau, eps)``.
        """
        p = self.row(t)
        k = min(max(int(K), 1), self.V)
        kth = np.partition(p, self.V - k)[self.V - k]
        tokens = np.flatnonzero(p >= kth) if kth > 0 else np.flatnonzero(p)
        return tokens.astype(np.int64), p[tokens]

    def widest_support(self) -> int:
        """The largest number of positive entries of any position (V unless logits span > 700 nats or hold -inf)."""
        return int(self.support_sizes.max())

    def cached_rows(self) -> int:
        """How many rows the cache holds (at most `row_capacity`)."""
        return int(self._rows.cache_info().currsize)

    def expected_counts(self, steps: int) -> NDArray[np.float64]:
        """``sum_{s < steps} row(s mod T)``, a run's expected token counts (O(T V), outside the row cache)."""
        whole, part = divmod(int(steps), self.positions)
        cycle, head = np.zeros(self.V, dtype=np.float64), np.zeros(self.V, dtype=np.float64)
        for t in range(self.positions if whole else part):
            p = softmax64(self.logits[t])
            cycle += p
            head += p if t < part else 0.0
        return np.asarray(whole * cycle + head, dtype=np.float64)


def load_trace(
    path: str | Path, *, row_cache_bytes: int = ROW_CACHE_BYTES, scan_chunk_bytes: int = SCAN_CHUNK_BYTES
) -> TraceTarget:
    """Open, check and memory-map a trace (``.npy`` or ``.npz``; docs/traces.md).

    The file is read once, `scan_chunk_bytes` at a time, to hash it and check every
    row (NaN, +inf, all -inf); nothing is unpickled.  Rows are then built on demand
    into an LRU cache of at most `row_cache_bytes` (at least one row).

    Raises
    ------
    TraceError
        Missing or unreadable file, not .npy/.npz, object or non-float16/32 dtype, not 2-D, T < 1,
        V < 2, Fortran order, truncated, a compressed ``logprobs``, a bad row, or ``tokens``/``vocab``/
        ``meta`` of the wrong shape, type or range.  One line naming the file and the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise TraceError(f"{path}: is a folder, not a trace file")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except OSError as exc:
        raise TraceError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    members: dict[str, NDArray[Any]] = {}
    if magic == b"\x93NUMPY":
        with open(path, "rb") as f:
            shape, dtype, offset = _array_header(f, path, "the array")
    elif magic[:4] == b"PK\x03\x04":
        shape, dtype, offset, members = _open_npz(path)
    else:
        raise TraceError(f"{path}: is neither a .npy array nor a .npz archive")
    T, V = _check_shape(path, shape, dtype)
    if offset + T * V * dtype.itemsize > size:
        raise TraceError(f"{path}: is truncated ({size} bytes, the header announces {offset + T * V * dtype.itemsize})")
    tokens, vocabulary, metadata = _check_members(path, members, T, V)
    sha256, sizes = _scan(path, offset, dtype, T, V, scan_chunk_bytes)
    logits = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(T, V))
    return TraceTarget(
        path=path, logits=logits, sha256=sha256, support_sizes=sizes, tokens=tokens, vocabulary=vocabulary,
        metadata=metadata, row_capacity=max(1, row_cache_bytes // (8 * V)),
    )


def _array_header(f: IO[bytes], path: Path, what: str) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """Read a .npy header at f's position: (shape, dtype, offset of the data); never unpickles."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
    except (ValueError, OSError, SyntaxError) as exc:
        raise TraceError(f"{path}: {what} is not a valid .npy array ({str(exc).splitlines()[0]})") from None
    if dtype.hasobject:
        raise TraceError(f"{path}: {what} holds Python objects (reading it would unpickle), refused")
    if fortran and len(shape) > 1 and min(shape) > 1:
        raise TraceError(f"{path}: {what} is Fortran-ordered: save it C-ordered (np.ascontiguousarray)")
    return tuple(int(n) for n in shape), dtype, f.tell()


def _open_npz(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], int, dict[str, NDArray[Any]]]:
    """The ``logprobs`` member's header and file offset, and the small members, loaded without pickle."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "logprobs.npy" not in names:
                raise TraceError(f"{path}: has no 'logprobs' array (members: {', '.join(sorted(names)) or 'none'})")
            info = zf.getinfo("logprobs.npy")
            if info.flag_bits & 1:
                raise TraceError(f"{path}: 'logprobs' is encrypted")
            if info.compress_type != zipfile.ZIP_STORED:
                raise TraceError(f"{path}: 'logprobs' is compressed (np.savez_compressed) and cannot be "
                                 "memory-mapped: save it with np.savez or as .npy")
            members = {}
            for name in ("tokens", "vocab", "meta"):
                if f"{name}.npy" in names:
                    with zf.open(f"{name}.npy") as fm:
                        _array_header(fm, path, f"'{name}'")
                    with zf.open(f"{name}.npy") as fm:
                        members[name] = np.lib.format.read_array(fm, allow_pickle=False)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise TraceError(f"{path}: is not a readable .npz archive ({exc})") from None
    except ValueError as exc:
        if isinstance(exc, TraceError):
            raise
        raise TraceError(f"{path}: a member cannot be read ({str(exc).splitlines()[0]})") from None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(_LOCAL_HEADER.size)
        if len(local) < _LOCAL_HEADER.size or local[:4] != b"PK\x03\x04":
            raise TraceError(f"{path}: the zip entry of 'logprobs' is damaged")
        name_len, extra_len = _LOCAL_HEADER.unpack(local)[-2:]
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        f.seek(start)
        shape, dtype, offset = _array_header(f, path, "'logprobs'")
    if offset + int(np.prod(shape)) * dtype.itemsize > start + info.file_size:
        raise TraceError(f"{path}: 'logprobs' is truncated (the zip entry is shorter than its header announces)")
    return shape, dtype, offset, members


def _check_shape(path: Path, shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[int, int]:
    if dtype.kind != "f" or dtype.itemsize not in (2, 4):
        raise TraceError(f"{path}: has dtype {dtype}: a trace holds float16 or float32")
    if len(shape) != 2:
        raise TraceError(f"{path}: has shape {shape}: a trace is 2-D, (T positions, V tokens)")
    T, V = shape
    if T < 1:
        raise TraceError(f"{path}: has no positions (T = 0)")
    if V < 2:
        raise TraceError(f"{path}: has V = {V}: a target needs at least 2 tokens")
    return T, V


def _scan(
    path: Path, offset: int, dtype: np.dtype[Any], T: int, V: int, chunk_bytes: int
) -> tuple[str, NDArray[np.int64]]:
    """Hash the file and check its rows in one bounded pass: (SHA-256, support size of each row)."""
    digest = hashlib.sha256()
    row_bytes = V * dtype.itemsize
    rows_per_chunk = max(1, chunk_bytes // row_bytes)
    buffer = bytearray(min(rows_per_chunk, T) * row_bytes)
    sizes = np.empty(T, dtype=np.int64)
    with open(path, "rb", buffering=0) as f:
        digest.update(f.read(offset))
        for start in range(0, T, rows_per_chunk):
            rows = min(rows_per_chunk, T - start)
            view = memoryview(buffer)[: rows * row_bytes]
            if f.readinto(view) != len(view):  # a regular file reads in full but at its end
                raise TraceError(f"{path}: is truncated (ends while its rows are read)")
            digest.update(view)
            sizes[start:start + rows] = _check_rows(path, np.frombuffer(view, dtype=dtype).reshape(rows, V), start)
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest(), sizes


def _check_rows(path: Path, raw: NDArray[Any], start: int) -> NDArray[np.int64]:
    """Refuse the first bad row of a block; return each row's number of positive softmax entries."""
    x = raw.astype(np.float32)
    top = x.max(axis=1)  # NaN if the row has one, +inf if it has +inf, -inf iff all -inf
    bad = np.flatnonzero(~(top < np.inf) | (top == -np.inf))
    if bad.size:
        r = int(bad[0])
        what = "NaN" if np.isnan(x[r]).any() else "+inf" if top[r] == np.inf else "only -inf (no token has p > 0)"
        raise TraceError(f"{path}: row {start + r} holds {what}")
    sure = np.asarray(np.count_nonzero(x > (top + np.float32(SURELY_POSITIVE))[:, None], axis=1), dtype=np.int64)
    maybe = np.count_nonzero(x > (top + np.float32(SURELY_ZERO))[:, None], axis=1)
    for near in np.flatnonzero(sure != maybe):  # entries near float64's underflow: count them exactly
        sure[near] = np.count_nonzero(softmax64(raw[near]))
    return sure


def _check_members(
    path: Path, members: Mapping[str, NDArray[Any]], T: int, V: int
) -> tuple[NDArray[np.int64] | None, tuple[str, ...] | None, dict[str, Any]]:
    tokens = vocabulary = None
    metadata: dict[str, Any] = {}
    if "tokens" in members:
        raw = members["tokens"]
        if raw.dtype.kind not in "iu" or raw.shape != (T,):
            raise TraceError(f"{path}: 'tokens' must be ({T},) integers, got shape {raw.shape} of {raw.dtype}")
        if T and (int(raw.min()) < 0 or int(raw.max()) >= V):
            raise TraceError(f"{path}: 'tokens' must lie in [0, {V}), got [{raw.min()}, {raw.max()}]")
        tokens = raw.astype(np.int64)
        tokens.setflags(write=False)
    if "vocab" in members:
        words = members["vocab"]
        if words.dtype.kind != "U" or words.shape != (V,):
            raise TraceError(f"{path}: 'vocab' must be ({V},) strings, got shape {words.shape} of {words.dtype}")
        vocabulary = tuple(str(w) for w in words.tolist())
    if "meta" in members:
        try:
            meta = json.loads(str(members["meta"].item())) if members["meta"].dtype.kind == "U" else None
        except (ValueError, TypeError):
            meta = None
        if not isinstance(meta, dict):
            raise TraceError(f"{path}: 'meta' must be a JSON object held in a 0-d string array")
        metadata = meta
    return tokens, vocabulary, metadata
