"""A Parquet telemetry file is finished and readable, or removed with one line saying so.

A Parquet file is readable only through its footer, written when the file is
closed.  On a full disk a row group can be cut half-way, and pyarrow then
closes the file without an error but without a readable footer either.  So
every failed write is turned into an `OutputError` naming the file
(`parquet_write_failed`), and `finish_parquet` closes the file, reads its footer
back, and removes a file that cannot be read, saying so: a run never leaves an
unreadable telemetry file behind.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

from thermospec.runs.storage import OutputError, failure_reason

__all__ = ["ParquetFile", "finish_parquet", "parquet_write_failed"]


def parquet_write_failed(path: Path, exc: OSError) -> OutputError:
    """The one-line error of a failed row-group write (pyarrow says only "Error writing bytes to file")."""
    return OutputError(f"{path}: cannot write ({failure_reason(exc)})")


def _readable(path: Path) -> str | None:
    """None if the file's footer reads back, else why not."""
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        return str(exc).split(". ")[0].splitlines()[0] if str(exc) else type(exc).__name__
    return None


class ParquetFile(Protocol):
    """A Parquet writer as `finish_parquet` finishes it: its path, and `close` writing the footer."""

    @property
    def path(self) -> Path: ...

    def close(self) -> None: ...


def finish_parquet(writer: ParquetFile) -> None:
    """Close `writer`'s file and check it reads back; remove it if it does not.

    Raises
    ------
    OutputError
        The file could not be finished (full disk): it was removed, and the message says so.
    """
    path = writer.path
    try:
        writer.close()
        problem = _readable(path)
    except OSError as exc:
        problem = failure_reason(exc)
    if problem is None:
        return
    with contextlib.suppress(OSError):
        path.unlink()
    raise OutputError(f"{path}: cannot finish the Parquet file ({problem}); removed it, unreadable")
