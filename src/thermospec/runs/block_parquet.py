"""``run --gamma G --telemetry parquet``: a block run's records as Parquet, one row per block.

The columns are the block JSONL's fields, in its order, as `runs.schema.block_layout` declares them (the
values of both are `runs.block_run.block_values`): ``block``, ``first_step``, ``context`` (the block's
first key: a token id or a trace position, an order-N context's text), ``drafted`` (a list of token ids),
``accepted_length``, ``emitted`` (a list); a token tree adds ``children`` (a list per verified level of
its N drafts) and ``accepted_index`` (a list); with ``--chains B`` a leading ``chain`` column holds every
chain in one file.  The writer is the one of every record, `runs.parquet_file.RecordParquet`: one row
group per chunk; the file is created with the first row group (an empty run writes none) and finished (and
read back) by `runs.parquet_file.finish_parquet`.
"""

from __future__ import annotations

from pathlib import Path

from thermospec.runs.parquet_file import RecordParquet
from thermospec.runs.schema import Layout

__all__ = ["BLOCKS_PARQUET", "BlockParquetWriter"]

BLOCKS_PARQUET = "m1_blocks.parquet"


def BlockParquetWriter(path: Path, layout: Layout, chain_column: bool) -> RecordParquet:
    """The Parquet file of block records (`RecordParquet` over `layout`, created with its first row group).

    The name `runs.block_run` builds it by; ``RecordParquet(path, layout, chain_column, empty_file=False)``.
    """
    return RecordParquet(path, layout, chain_column, empty_file=False)
