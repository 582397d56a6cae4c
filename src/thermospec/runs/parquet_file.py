"""The Parquet telemetry files: records of any `runs.schema.Layout` (`RecordParquet`), finished and readable, or
removed with one line saying so.

`RecordParquet` is the one Parquet writer of every kind of record (steps with their key fields, blocks, trees),
its columns the layout's fields (`runs.schema.Layout.arrow_arrays`).

A Parquet file is readable only through its footer, written when the file is
closed.  On a full disk a row group can be cut half-way, and pyarrow then
closes the file without an error but without a readable footer either.  So
every failed write is turned into an `OutputError` naming the file
(`parquet_write_failed`), and `finish_parquet` closes the file, reads its footer
back, and removes a file that cannot be read, saying so: a run never leaves an
unreadable telemetry file behind.

With ``behind=True`` (the M1 chain) a chunk's row group is encoded and written
in a helper thread while the run computes the next chunk (pyarrow releases the
GIL): `RecordParquet.rows_written` says how many records are on file, and the
run counts a chunk only once they are; a failed row group surfaces at the next
`RecordParquet.write` or at `RecordParquet.close`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from thermospec.runs.schema import KeyTable, Layout
from thermospec.runs.storage import OutputError, failure_reason
from thermospec.tsu.drafts import RecordSource

__all__ = ["ParquetFile", "RecordParquet", "finish_parquet", "parquet_write_failed"]


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
    failed: OSError | None = None
    try:
        writer.close()
    except OSError as exc:  # the last row group written behind failed; the footer may still be written
        failed = exc
    try:
        problem = _readable(path) if failed is None or path.exists() else failure_reason(failed)
    except OSError as exc:
        problem = failure_reason(exc)
    if problem is None:
        if failed is not None:  # readable without the failed row group: kept, the failure reported
            raise failed if isinstance(failed, OutputError) else parquet_write_failed(path, failed)
        return
    with contextlib.suppress(OSError):
        path.unlink()
    raise OutputError(f"{path}: cannot finish the Parquet file ({problem}); removed it, unreadable")


class RecordParquet:
    """A Parquet file of records of one `Layout` (steps or blocks): one row per record, one row group per chunk
    (and chain), the rows equal to the JSONL records field for field.

    Parameters
    ----------
    path : Path
        The ``.parquet`` file to create.
    layout : Layout
    chain_column : bool
        Prepend a ``chain`` column (``--chains B``: all chains in one file).
    key_text : callable, optional
        A key's text (the ``context`` key field).
    empty_file : bool
        Create the file at once, so that a run that writes no record still leaves one (without row groups);
        False creates it with the first row group (a block run's file).
    behind : bool
        Write each row group in a helper thread while the caller goes on (module docstring); the caller
        counts records by `rows_written`.

    Raises
    ------
    ImportError
        If pyarrow is not installed (``pip install 'thermospec[parquet]'``).
    """

    def __init__(self, path: Path, layout: Layout, chain_column: bool = False,
                 key_text: Callable[[int], str] | None = None, empty_file: bool = True, behind: bool = False) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa, self._pq, self.path, self.layout, self.chain_column = pa, pq, path, layout, chain_column
        self.schema = layout.arrow_schema(pa, chain_column)
        self._keys = KeyTable(layout.fields, key_text) if layout.keyed else None
        self._writer: Any = self._open() if empty_file else None
        self._behind = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet") if behind else None
        self._pending: tuple[Future[None], int] | None = None
        self.rows_written = 0
        """Records whose row groups are on file."""

    def _open(self) -> Any:
        return self._pq.ParquetWriter(str(self.path), self.schema, compression="zstd")

    def write(self, start: int, values: Mapping[str, Any], chain: int = 0, keys: NDArray[np.int64] | None = None,
              drafts: RecordSource | None = None) -> None:
        """Append consecutive records from `start` (of chain `chain`) as a row group.

        `values` holds each step or block field's values but the index; a layout with key fields takes each
        step's key (`keys`) and each key's draft (`drafts`).

        Raises
        ------
        OutputError
            A failed write (a full disk), in one line naming the file.
        """
        n = self.layout.count(values, keys)
        if not n:
            return
        if self._keys is not None:
            assert keys is not None and drafts is not None, "key fields need each step's key and the keys' drafts"
            self._keys.learn(keys, drafts)
        pa = self._pa
        arrays = self.layout.arrow_arrays(pa, start, values, chain if self.chain_column else None, keys, self._keys)
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        self._settle()
        if self._behind is None:
            self._write_table(table)
            self.rows_written += n
        else:
            self._pending = (self._behind.submit(self._write_table, table), n)

    def _write_table(self, table: Any) -> None:
        """Write one row group; a failure is the one-line `OutputError` naming the file."""
        try:
            if self._writer is None:
                self._writer = self._open()
            self._writer.write_table(table)
        except OSError as exc:
            if isinstance(exc, OutputError):
                raise
            raise parquet_write_failed(self.path, exc) from None

    def _settle(self) -> None:
        """Wait for the row group being written behind; raise its failure."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[0].result()
            self.rows_written += pending[1]

    @property
    def started(self) -> bool:
        """Whether the file was created (always, unless `empty_file` is False and no record was written)."""
        return self._writer is not None

    def close(self) -> None:
        """Finish the file (its footer); the file is only readable after this.

        Raises
        ------
        OutputError
            The row group written behind failed (the footer is written all the same).
        """
        try:
            self._settle()
        finally:
            if self._behind is not None:
                self._behind.shutdown()  # a row group's write ends in bounded time
                self._behind = None
            if self._writer is not None:
                self._writer.close()
