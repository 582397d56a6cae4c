"""Reading a trace file that came from elsewhere: headers, ``.npz`` members, the load-time scan, row reads.

Nothing here trusts the file: a path that is not a regular file is refused before it
is opened (a FIFO would block ``open``); a ``.npy`` header is parsed by
``numpy.lib.format`` (a Python literal, never a pickle) and its shape must be a tuple
of non-negative ``int`` (``True`` is no length); V above `MAX_VOCAB` is refused from the
header; each small ``.npz`` member is checked in its zip entry (not encrypted, stored or
deflated, a declared inflated size within the member's cap) and then inflated at most
to that cap, whatever the entry declares.  Rows are read with ``pread`` into the
caller's buffer, never through a memory map: a file that shrinks under a run gives a
short read (`TraceShrankError`), not a SIGBUS.  Format and limits: docs/traces.md §1.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import struct
import tokenize
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    import zipfile

__all__ = [
    "MAX_VOCAB",
    "MEMBER_HEADER_BYTES",
    "META_MAX_BYTES",
    "SURELY_POSITIVE",
    "SURELY_ZERO",
    "VOCAB_MAX_BYTES",
    "RowReader",
    "TraceError",
    "TraceShrankError",
    "array_header",
    "npz_layout",
    "npz_members",
    "open_regular",
    "read_exact",
    "scan_rows",
    "softmax64",
]

MAX_VOCAB = 1 << 24
"""Largest V a trace may have (16,777,216): a float64 row is then 128 MiB (docs/traces.md §1, memory)."""
MEMBER_HEADER_BYTES = 64 * 1024
"""What a member's ``.npy`` header may add to its data's cap."""
VOCAB_MAX_BYTES = 128 * 1024 * 1024
"""Cap of the ``vocab`` member's data (262,144 tokens of up to 128 characters)."""
META_MAX_BYTES = 1024 * 1024
"""Cap of the ``meta`` member's data (a JSON object of up to 262,144 characters)."""
SURELY_POSITIVE = -700.0
"""``x - max x`` above this: the softmax entry is > 0 for any V < 2**32 (exp(-700) / 2**32 > 4.9e-324)."""
SURELY_ZERO = -750.0
"""``x - max x`` below this: exp underflows to exactly 0 in float64."""
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # a zip member's local file header (30 bytes)


class TraceError(ValueError):
    """A trace file that cannot be used; the one-line message names the file and the reason."""


class TraceShrankError(OSError):
    """The trace file became shorter than its rows while in use (truncated by someone else): a failed read.

    A run stops on it as on a failed write: whole records kept, the summary marked interrupted.
    """


def open_regular(path: Path) -> int:
    """Open `path` read-only if it is a regular file (a FIFO, device or socket is refused unopened); its fd."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except OSError as exc:
        raise TraceError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise TraceError(f"{path}: is a folder, not a trace file")
    if not stat.S_ISREG(info.st_mode):
        raise TraceError(f"{path}: is not a regular file (a FIFO, device or socket), refused")
    try:  # O_NONBLOCK: should a FIFO be swapped in after the check, open still returns at once
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise TraceError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TraceError(f"{path}: is not a regular file (a FIFO, device or socket), refused")
    return fd


def read_exact(fd: int, buffer: memoryview, offset: int) -> int:
    """``pread`` into all of `buffer` from `offset`; the bytes read (fewer only at the end of the file)."""
    done = 0
    while done < len(buffer):
        n = os.preadv(fd, [buffer[done:]], offset + done)
        if n <= 0:
            break
        done += n
    return done


def array_header(f: IO[bytes], path: Path, what: str) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """Read a .npy header at f's position: (shape, dtype, offset of the data); never unpickles."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
    except (ValueError, OSError, SyntaxError, tokenize.TokenError, RecursionError, MemoryError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise TraceError(f"{path}: {what} is not a valid .npy array ({reason})") from None
    if not all(type(n) is int and n >= 0 for n in shape):
        raise TraceError(f"{path}: {what} has header shape {shape!r}: lengths must be integers >= 0")
    if dtype.hasobject:
        raise TraceError(f"{path}: {what} holds Python objects (reading it would unpickle), refused")
    if fortran and len(shape) > 1 and min(shape) > 1:
        raise TraceError(f"{path}: {what} is Fortran-ordered: save it C-ordered (np.ascontiguousarray)")
    return tuple(shape), dtype, f.tell()


def _member(
    zf: zipfile.ZipFile, path: Path, name: str, shape: tuple[int, ...], kinds: str, cap: int
) -> NDArray[Any]:
    """A small member, inflated to at most its cap and checked from its header before its data is used."""
    import zipfile  # here, not at the top: runs without a trace do not pay its import
    info = zf.getinfo(f"{name}.npy")
    limit = cap + MEMBER_HEADER_BYTES
    if info.flag_bits & 1:
        raise TraceError(f"{path}: '{name}' is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise TraceError(f"{path}: '{name}' uses zip method {info.compress_type}: only stored or deflated")
    if info.file_size > limit:
        raise TraceError(f"{path}: '{name}' declares {info.file_size:,} bytes, more than its cap of {limit:,}")
    with zf.open(info) as fm:
        data = fm.read(limit + 1)  # inflated in bounded steps, never past the cap whatever the entry says
    if len(data) > limit:
        raise TraceError(f"{path}: '{name}' inflates past its cap of {limit:,} bytes")
    held = io.BytesIO(data)
    found, dtype, offset = array_header(held, path, f"'{name}'")
    wanted = f"{shape} integers" if kinds == "iu" else f"{shape} strings" if shape else "a 0-d string array"
    if found != shape or dtype.kind not in kinds:
        raise TraceError(f"{path}: '{name}' must be {wanted}, got shape {found} of {dtype}")
    count = int(np.prod(found, dtype=np.int64))
    if count * dtype.itemsize > cap:
        raise TraceError(f"{path}: '{name}' holds {count * dtype.itemsize:,} bytes, more than its cap of {cap:,}")
    if offset + count * dtype.itemsize > len(data):
        raise TraceError(f"{path}: '{name}' is truncated (shorter than its header announces)")
    array: NDArray[Any] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(found)
    return array


def npz_layout(
    fd: int, path: Path, logprobs_shape: tuple[int, int] | None = None
) -> tuple[tuple[int, ...], np.dtype[Any], int, int]:
    """The ``logprobs`` member's (shape, dtype, data offset in the file, end of its entry)."""
    import zipfile  # here, not at the top: runs without a trace do not pay its import
    try:
        with zipfile.ZipFile(io.FileIO(fd, closefd=False)) as zf:
            names = set(zf.namelist())
            if "logprobs.npy" not in names:
                raise TraceError(f"{path}: has no 'logprobs' array (members: {', '.join(sorted(names)) or 'none'})")
            info = zf.getinfo("logprobs.npy")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        if isinstance(exc, TraceError):
            raise
        raise TraceError(f"{path}: is not a readable .npz archive ({exc})") from None
    if info.flag_bits & 1:
        raise TraceError(f"{path}: 'logprobs' is encrypted")
    if info.compress_type != zipfile.ZIP_STORED:
        raise TraceError(f"{path}: 'logprobs' is compressed (np.savez_compressed) and cannot be "
                         "read by rows: save it with np.savez or as .npy")
    local = bytearray(_LOCAL_HEADER.size)
    if read_exact(fd, memoryview(local), info.header_offset) < len(local) or local[:4] != b"PK\x03\x04":
        raise TraceError(f"{path}: the zip entry of 'logprobs' is damaged")
    name_len, extra_len = _LOCAL_HEADER.unpack(bytes(local))[-2:]
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    f = io.FileIO(fd, closefd=False)
    f.seek(start)
    shape, dtype, offset = array_header(f, path, "'logprobs'")
    return shape, dtype, offset, start + info.file_size


def npz_members(fd: int, path: Path, T: int, V: int) -> dict[str, NDArray[Any]]:
    """The optional members ``tokens`` (<= 8 T bytes), ``vocab`` and ``meta`` (their caps), checked and bounded."""
    import zipfile  # here, not at the top: runs without a trace do not pay its import
    wanted = {"tokens": ((T,), "iu", 8 * T), "vocab": ((V,), "U", VOCAB_MAX_BYTES), "meta": ((), "U", META_MAX_BYTES)}
    members: dict[str, NDArray[Any]] = {}
    try:
        with zipfile.ZipFile(io.FileIO(fd, closefd=False)) as zf:
            names = set(zf.namelist())
            for name, (shape, kinds, cap) in wanted.items():
                if f"{name}.npy" in names:
                    members[name] = _member(zf, path, name, shape, kinds, cap)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, TraceError):
            raise
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise TraceError(f"{path}: a member cannot be read ({reason})") from None
    return members


class RowReader:
    """Rows of a trace read with ``pread`` from the open file (no memory map: a shrunk file is an error, not SIGBUS).

    Parameters
    ----------
    path : Path
        For messages.
    fd : int
        The open file (closed when the reader is collected or `close` is called).
    offset : int
        File offset of row 0.
    dtype : numpy.dtype
        float16 or float32, either byte order.
    shape : (int, int)
        (T, V).
    """

    def __init__(self, path: Path, fd: int, offset: int, dtype: np.dtype[Any], shape: tuple[int, int]) -> None:
        self.path, self.fd, self.offset, self.dtype, self.shape = path, fd, offset, dtype, shape
        self._closer = weakref.finalize(self, os.close, fd)

    def rows(self, start: int, count: int) -> NDArray[Any]:
        """Rows ``[start, start + count)`` as a fresh ``(count, V)`` array of the file's dtype.

        Raises
        ------
        TraceShrankError
            The file ends before these rows (it was truncated after it was loaded).
        """
        V = self.shape[1]
        out: NDArray[Any] = np.empty((count, V), dtype=self.dtype)
        view = memoryview(out.data).cast("B")
        where = self.offset + start * V * self.dtype.itemsize
        if read_exact(self.fd, view, where) < len(view):
            raise TraceShrankError(f"{self.path}: shrank while in use (rows {start}..{start + count - 1} are gone)")
        return out

    def row(self, t: int) -> NDArray[Any]:
        """Row t, ``(V,)``, in the file's dtype."""
        row: NDArray[Any] = self.rows(t, 1)[0]
        return row

    def read_codes(self, t: int, out: NDArray[np.uint16]) -> None:
        """A float16 file's row t into `out` (``(V,)``, contiguous, reused by the caller): its bit patterns in
        native order (a fresh array per row costs its page faults: about as much as crafting the row).

        Raises
        ------
        TraceShrankError
            The file ends before this row.
        """
        V = self.shape[1]
        view = memoryview(out.data).cast("B")
        if self.dtype.itemsize != 2 or len(view) != 2 * V:
            raise ValueError(f"read_codes: a float16 row of {V} codes, not {len(view)} bytes of a {self.dtype} file")
        if read_exact(self.fd, view, self.offset + t * 2 * V) < len(view):
            raise TraceShrankError(f"{self.path}: shrank while in use (row {t} is gone)")
        if not self.dtype.isnative:
            out.byteswap(inplace=True)

    def close(self) -> None:
        """Close the file now."""
        self._closer()


def softmax64(logits: ArrayLike) -> NDArray[np.float64]:
    """``exp(x - max x) / sum`` in float64: a trace row's target (SPEC §8)."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max())
    p: NDArray[np.float64] = e / e.sum()
    return p


def scan_rows(
    fd: int, path: Path, offset: int, dtype: np.dtype[Any], shape: tuple[int, int], chunk_bytes: int
) -> tuple[str, NDArray[np.int64]]:
    """Hash the file and check its rows in one bounded pass: (SHA-256, support size of each row).

    Rows are read `chunk_bytes` at a time; a row longer than that is read in segments of
    `chunk_bytes` (then twice: its maximum first, its support size second), so the working
    memory stays about 6 times `chunk_bytes` whatever V is.
    """
    T, V = shape
    digest = hashlib.sha256()
    header = bytearray(offset)
    read_exact(fd, memoryview(header), 0)
    digest.update(header)
    row_bytes = V * dtype.itemsize
    sizes = np.empty(T, dtype=np.int64)
    where = offset
    if row_bytes <= chunk_bytes:
        rows_per_chunk = max(1, chunk_bytes // row_bytes)
        buffer = bytearray(min(rows_per_chunk, T) * row_bytes)
        for start in range(0, T, rows_per_chunk):
            rows = min(rows_per_chunk, T - start)
            view = memoryview(buffer)[: rows * row_bytes]
            if read_exact(fd, view, where) != len(view):
                raise TraceError(f"{path}: is truncated (ends while its rows are read)")
            where += len(view)
            digest.update(view)
            sizes[start:start + rows] = _check_rows(path, np.frombuffer(view, dtype=dtype).reshape(rows, V), start)
    else:
        for t in range(T):
            sizes[t] = _check_long_row(fd, path, where, dtype, V, chunk_bytes, digest, t)
            where += row_bytes
    block = bytearray(1 << 20)
    while n := read_exact(fd, memoryview(block), where):
        digest.update(memoryview(block)[:n])
        where += n
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


def _check_long_row(
    fd: int, path: Path, where: int, dtype: np.dtype[Any], V: int, chunk_bytes: int, digest: Any, t: int
) -> int:
    """One row longer than a chunk, in segments: refuse it if bad, else its number of positive entries."""
    step = max(1, chunk_bytes // dtype.itemsize)
    buffer = bytearray(min(step, V) * dtype.itemsize)

    def segments(hash_them: bool) -> Iterator[NDArray[np.float32]]:
        for first in range(0, V, step):
            view = memoryview(buffer)[: min(step, V - first) * dtype.itemsize]
            if read_exact(fd, view, where + first * dtype.itemsize) != len(view):
                raise TraceError(f"{path}: is truncated (ends while its rows are read)")
            if hash_them:
                digest.update(view)
            yield np.frombuffer(view, dtype=dtype).astype(np.float32)

    tops = [float(x.max()) for x in segments(True)]  # NaN if the segment has one
    if any(np.isnan(tops)) or max(tops) == np.inf or max(tops) == -np.inf:
        what = "NaN" if any(np.isnan(tops)) else "+inf" if max(tops) == np.inf else "only -inf (no token has p > 0)"
        raise TraceError(f"{path}: row {t} holds {what}")
    top = np.float32(max(tops))
    sure = maybe = 0
    for x in segments(False):
        sure += int(np.count_nonzero(x > top + np.float32(SURELY_POSITIVE)))
        maybe += int(np.count_nonzero(x > top + np.float32(SURELY_ZERO)))
    if sure == maybe:
        return sure
    m = float(top)  # entries near float64's underflow: counted against a segment-wise sum
    total = math.fsum(float(np.exp(x.astype(np.float64) - m).sum()) for x in segments(False))
    return sum(int(np.count_nonzero(np.exp(x.astype(np.float64) - m) / total)) for x in segments(False))
