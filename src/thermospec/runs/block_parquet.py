"""``run --gamma G --telemetry parquet``: a block run's records as Parquet, one row per block.

The columns are the block JSONL's fields, in its order, as `runs.schema.block_layout` declares them (the
values of both are `runs.block_run.block_values`): ``block``, ``first_step``, ``context`` (the block's
first key: a token id or a trace position, an order-N context's text), ``drafted`` (a list of token ids),
``accepted_length``, ``emitted`` (a list); a token tree adds ``children`` (a list per verified level of
its N drafts) and ``accepted_index`` (a list); with ``--chains B`` a leading ``chain`` column holds every
chain in one file.  One row group per chunk; the file is created with the first row group (an empty run
writes none) and finished (and read back) by `runs.parquet_file.finish_parquet`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from thermospec.runs.parquet_file import parquet_write_failed
from thermospec.runs.schema import Layout

__all__ = ["BLOCKS_PARQUET", "BlockParquetWriter"]

BLOCKS_PARQUET = "m1_blocks.parquet"


class BlockParquetWriter:
    """One Parquet file of block records (see the module docstring).

    Parameters
    ----------
    path : Path
        The ``.parquet`` file to create.
    layout : Layout
        The block records' fields (`runs.schema.block_layout`).
    chain_column : bool
        Prepend a ``chain`` column (``--chains B``: all chains in one file).

    Raises
    ------
    ImportError
        If pyarrow is not installed (``pip install 'thermospec[parquet]'``).
    """

    def __init__(self, path: Path, layout: Layout, chain_column: bool) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa, self._pq, self.path, self.layout, self.chain_column = pa, pq, path, layout, chain_column
        self.schema = layout.arrow_schema(pa, chain_column)
        self._writer: Any = None

    def write(self, start: int, values: Mapping[str, Sequence[Any]], chain: int = 0) -> None:
        """Append blocks from `start` (of chain `chain`; `values`: each field's but ``block``,
        `runs.block_run.block_values`) as a row group."""
        n = len(values[self.layout.names[1]])
        if not n:
            return
        arrays = self.layout.arrow_arrays(self._pa, start, n, values, chain if self.chain_column else None)
        table = self._pa.Table.from_arrays(arrays, schema=self.schema)
        try:
            if self._writer is None:
                self._writer = self._pq.ParquetWriter(str(self.path), self.schema, compression="zstd")
            self._writer.write_table(table)
        except OSError as exc:
            raise parquet_write_failed(self.path, exc) from None

    @property
    def started(self) -> bool:
        """Whether a row group was written (an empty run writes no file)."""
        return self._writer is not None

    def close(self) -> None:
        """Finish the file (an empty run writes no file)."""
        if self._writer is not None:
            self._writer.close()
