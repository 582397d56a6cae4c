"""Recorded next-token distributions (traces): T positions of V log-probabilities, read by rows (SPEC §8).

A trace is a ``(T, V)`` float16 or float32 array of log-probabilities or logits,
a ``.npy`` file or the ``logprobs`` member of a ``.npz`` (with optional ``tokens``,
``vocab``, ``meta``; format: docs/traces.md).  Position t's target is
``softmax(row_t)`` in float64.  A run is teacher-forced (step s uses position
``s mod T`` whatever was emitted): a trace is no bigram chain and has no pi, and
`TraceTarget` is indexed by position.  Files are data from elsewhere: read without
unpickling, its headers and members checked and bounded before their data is read
(`targets.trace_file`), scanned once at load in bounded memory (bad rows are refused
before a run writes anything), rows read with ``pread`` (no memory map) and built on
demand into a byte-bounded cache.  `TraceWriter` (`targets.trace_writer`) streams a trace to disk.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import _lru_cache_wrapper, lru_cache, partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from thermospec.targets.trace_file import (
    MAX_VOCAB,
    RowReader,
    TraceError,
    TraceShrankError,
    array_header,
    npz_layout,
    npz_members,
    open_regular,
    scan_rows,
    softmax64,
)
from thermospec.targets.trace_rows import (
    REREAD_BYTES,
    RowValues,
    add_row,
    row_bytes_held,
    row_values,
    top_support_of,
)
from thermospec.targets.trace_writer import TraceWriter

__all__ = [
    "MAX_VOCAB", "REREAD_BYTES", "ROW_CACHE_BYTES", "SCAN_CHUNK_BYTES", "PositionTarget", "TraceError",
    "TraceShrankError", "TraceTarget", "TraceWriter", "load_trace", "softmax64",
]

ROW_CACHE_BYTES = 256 * 1024 * 1024
"""Memory bound of a trace's cache of rows (float64 once asked for, and a narrow float16 row's codes: 256 rows at
V = 131,072, whose codes are read again when needed)."""
SCAN_CHUNK_BYTES = 8 * 1024 * 1024
"""File bytes read at a time by the load-time scan (its working memory is about 6 times this)."""


class PositionTarget(Protocol):
    """Next-token distributions indexed by position (teacher-forced): what the engine needs of a trace.

    ``V`` tokens, ``positions`` T (step s uses position ``s mod T``), ``source`` and
    ``vocabulary`` as a `BigramTarget`'s, ``rows_stored`` False (rows built on demand),
    ``row(t)`` dense float64 summing to 1, ``support(t)`` its increasing positive tokens
    and their probabilities, ``top_support(t, K)`` the part of it a K-id ψ needs, and
    ``widest_support()`` the most positive entries of any row, ``row_values(t)`` the row with its float16 codes.
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
    def row_values(self, t: int) -> RowValues: ...


@dataclass(frozen=True, eq=False)
class TraceTarget:
    """A trace: position t's target is ``softmax64(logits[t])``; build it with `load_trace`.

    Attributes
    ----------
    path, sha256 : Path, str
        The trace file and the SHA-256 of its bytes.
    reader : RowReader
        The file's ``(T, V)`` float16 or float32 rows, read on demand with ``pread`` (never loaded whole).
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
    reader: RowReader
    sha256: str
    support_sizes: NDArray[np.int64]
    tokens: NDArray[np.int64] | None = None
    vocabulary: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    row_capacity: int = 1
    _rows: _lru_cache_wrapper[RowValues] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rows", lru_cache(maxsize=self.row_capacity)(self._build_row))

    def _build_row(self, t: int) -> RowValues:
        raw = self.reader.row(t)  # read-only: shared by the cache
        if raw.dtype.itemsize == 2 and raw.nbytes >= REREAD_BYTES:  # its codes read again when needed, not kept
            return row_values(raw, partial(self.reader.read_codes, t))
        return row_values(raw)

    @property
    def V(self) -> int:
        """Vocabulary size."""
        return int(self.reader.shape[1])

    @property
    def positions(self) -> int:
        """Number of positions T."""
        return int(self.reader.shape[0])

    source = "trace"
    rows_stored = False
    """Rows are built on demand from the file."""
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
        return str(self.reader.dtype.newbyteorder("="))

    def row_values(self, t: int) -> RowValues:
        """Position t's target and its float16 codes (`targets.trace_rows`), read-only, from the bounded cache."""
        if not 0 <= t < self.positions:
            raise IndexError(f"position {t} is outside the trace's [0, {self.positions})")
        return self._rows(int(t))

    def row(self, t: int) -> NDArray[np.float64]:
        """Position t's target ``softmax(logits[t])``, float64, read-only, from the bounded cache (IndexError off T)."""
        return self.row_values(t).p

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
        values = self.row_values(t)
        tokens = top_support_of(values, K)
        return tokens, values.p[tokens]

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
        for t in range(self.positions if whole else part):  # `cycle += p` (and `head += p`), p never built
            values = row_values(self.reader.row(t))
            if t < part:
                add_row(values, cycle, head)
            else:
                add_row(values, cycle)
        return np.asarray(whole * cycle + head, dtype=np.float64)


def load_trace(
    path: str | Path, *, row_cache_bytes: int = ROW_CACHE_BYTES, scan_chunk_bytes: int = SCAN_CHUNK_BYTES
) -> TraceTarget:
    """Open and check a trace (``.npy`` or ``.npz``; docs/traces.md), then read its rows on demand.

    The file is read once, `scan_chunk_bytes` at a time, to hash it and check every
    row (NaN, +inf, all -inf); nothing is unpickled.  Rows are then read with ``pread``
    and built on demand into an LRU cache of at most `row_cache_bytes` (at least one row).

    Raises
    ------
    TraceError
        Missing, unreadable or not a regular file, not .npy/.npz, a header that does not parse
        or whose shape is not of integers >= 0, object or non-float16/32 dtype, not 2-D, T < 1,
        V < 2 or V > `MAX_VOCAB`, Fortran order, truncated, a compressed ``logprobs``, a bad row,
        or ``tokens``/``vocab``/``meta`` of the wrong shape, type, range or size (each inflated at
        most to its cap).  One line naming the file and the reason.
    """
    path = Path(path)
    fd = open_regular(path)
    try:
        magic = bytearray(6)
        size = os.fstat(fd).st_size
        os.preadv(fd, [magic], 0)
        members: dict[str, NDArray[Any]] = {}
        if magic == b"\x93NUMPY":
            shape, dtype, offset = array_header(io.FileIO(fd, closefd=False), path, "the array")
            end = size
        elif magic[:4] == b"PK\x03\x04":
            shape, dtype, offset, end = npz_layout(fd, path)
        else:
            raise TraceError(f"{path}: is neither a .npy array nor a .npz archive")
        T, V = _check_shape(path, shape, dtype)
        announced = offset + T * V * dtype.itemsize
        if announced > min(size, end):
            raise TraceError(f"{path}: is truncated ({min(size, end)} bytes, the header announces {announced})")
        if magic[:4] == b"PK\x03\x04":
            members = npz_members(fd, path, T, V)
        tokens, vocabulary, metadata = _check_members(path, members, T, V)
        sha256, sizes = scan_rows(fd, path, offset, dtype, (T, V), scan_chunk_bytes)
    except BaseException:
        os.close(fd)
        raise
    return TraceTarget(
        path=path, reader=RowReader(path, fd, offset, dtype, (T, V)), sha256=sha256, support_sizes=sizes,
        tokens=tokens, vocabulary=vocabulary, metadata=metadata,
        row_capacity=max(1, row_cache_bytes // (row_bytes_held(dtype, V) * V)),
    )


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
    if V > MAX_VOCAB:
        raise TraceError(f"{path}: has V = {V:,}: a trace holds at most {MAX_VOCAB:,} tokens per row")
    return T, V


def _check_members(
    path: Path, members: Mapping[str, NDArray[Any]], T: int, V: int
) -> tuple[NDArray[np.int64] | None, tuple[str, ...] | None, dict[str, Any]]:
    tokens = vocabulary = None
    metadata: dict[str, Any] = {}
    if "tokens" in members:
        raw = members["tokens"]
        if T and (int(raw.min()) < 0 or int(raw.max()) >= V):
            raise TraceError(f"{path}: 'tokens' must lie in [0, {V}), got [{raw.min()}, {raw.max()}]")
        tokens = raw.astype(np.int64)
        tokens.setflags(write=False)
    if "vocab" in members:
        vocabulary = tuple(str(w) for w in members["vocab"].tolist())
    if "meta" in members:
        try:
            meta = json.loads(str(members["meta"].item()))
        except (ValueError, TypeError):
            meta = None
        except RecursionError:
            raise TraceError(f"{path}: 'meta' is nested too deeply to be read") from None
        if not isinstance(meta, dict):
            raise TraceError(f"{path}: 'meta' must be a JSON object held in a 0-d string array")
        metadata = meta
    return tokens, vocabulary, metadata
