"""``run --gamma G --telemetry parquet``: a block run's records as Parquet, one row per block.

The columns are the block JSONL's fields (`runs.block_run.block_lines`), in its order:
``block``, ``first_step``, ``context`` (the block's first key as the JSONL writes it: a token id, an
order-N context's text, a trace position), ``drafted`` and ``emitted`` (lists of token ids),
``accepted_length``; a token tree adds ``children`` (a list per verified level of its N drafts) and
``accepted_index``; with ``--chains B`` a leading ``chain`` column holds every chain in one file.  One row
group per chunk; the file is finished (and read back) by `runs.parquet_file.finish_parquet`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from thermospec.engine.chunks import BlockChunk
from thermospec.engine.trees import TreeChunk
from thermospec.runs.parquet_file import parquet_write_failed

__all__ = ["BLOCKS_PARQUET", "BlockParquetWriter"]

BLOCKS_PARQUET = "m1_blocks.parquet"


class BlockParquetWriter:
    """One Parquet file of block records (see the module docstring).

    Raises
    ------
    ImportError
        If pyarrow is not installed (``pip install 'thermospec[parquet]'``).
    """

    def __init__(self, path: Path, key_json: Callable[[int], str], tree: bool, chain_column: bool) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa, self.path, self._key_json = pa, path, key_json
        self.tree, self.chain_column = tree, chain_column
        self._writer: pq.ParquetWriter | None = None

    def write(self, chunk: BlockChunk, chain: int = 0) -> None:
        """Append one chunk of blocks (of chain `chain`) as a row group."""
        if not len(chunk):
            return
        pa = self._pa
        n = len(chunk)
        lengths = chunk.accepted_length.tolist()
        columns: dict[str, object] = {}
        if self.chain_column:
            columns["chain"] = pa.array([chain] * n, type=pa.int64())
        columns["block"] = pa.array(range(chunk.start, chunk.start + n), type=pa.int64())
        columns["first_step"] = pa.array(chunk.first_step)
        columns["context"] = pa.array([json.loads(self._key_json(k)) for k in chunk.context.tolist()])
        columns["drafted"] = pa.array(chunk.drafted.tolist(), type=pa.list_(pa.int64()))
        columns["accepted_length"] = pa.array(chunk.accepted_length)
        columns["emitted"] = pa.array([chunk.emitted(i) for i in range(n)], type=pa.list_(pa.int64()))
        if self.tree:
            assert isinstance(chunk, TreeChunk)
            g = chunk.gamma
            columns["children"] = pa.array(
                [chunk.children[i, : min(lengths[i] + 1, g)].tolist() for i in range(n)],
                type=pa.list_(pa.list_(pa.int64())))
            columns["accepted_index"] = pa.array(
                [chunk.accepted_index[i, : lengths[i]].tolist() for i in range(n)], type=pa.list_(pa.int64()))
        table = pa.table(columns)
        try:
            if self._writer is None:
                import pyarrow.parquet as pq

                self._writer = pq.ParquetWriter(str(self.path), table.schema, compression="zstd")
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
