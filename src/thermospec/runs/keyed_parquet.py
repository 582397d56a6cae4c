"""``--telemetry parquet`` of N-draft steps on order-N contexts or a trace: the JSONL's fields as columns.

The columns are those of ``run --drafts N``'s Parquet file (`runs.telemetry.ParquetWriter`,
``drafts_columns``), with the key its JSONL carries after the guide's 12 fields:
``context`` (text) on order-N contexts, ``position`` on a trace; ``prev_token`` is null
where the JSONL's is (a trace's position 0, or a trace without tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.keyed_drafts import KeyedDraftsChunk
from thermospec.tsu.drafts import DraftSource

__all__ = ["KeyedParquetWriter"]


class KeyedParquetWriter:
    """One row per step, one row group per chunk (and chain).

    Parameters
    ----------
    path : Path
        The ``.parquet`` file to create.
    key_name : {"context", "position"}
        The key's column: a context's text (`key_text`) or the position.
    key_text : callable
        ``key_text(key)``: a context's text (unused for positions).
    chain_column : bool
        Prepend a ``chain`` column (``--chains B``: all chains in one file).
    """

    def __init__(self, path: Path, key_name: str, key_text: Callable[[int], str], chain_column: bool) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa, self.path, self.key_name, self.key_text = pa, path, key_name, key_text
        self.chain_column = chain_column
        key_type = pa.string() if key_name == "context" else pa.int64()
        self.schema = pa.schema(
            [("chain", pa.int64())] * chain_column
            + [("step", pa.int64()), ("prev_token", pa.int64()), ("proposed_token", pa.int64()),
               ("emitted_token", pa.int64()), ("accepted", pa.bool_()), ("K", pa.int64()), ("tau", pa.float64()),
               ("eps_used", pa.float64()), ("psi_bytes", pa.int64()), ("topk_mass", pa.float64()),
               ("overlap_mass", pa.float64()), ("ce_gap_nats", pa.float64()), (key_name, key_type),
               ("drafts_used", pa.int64()), ("accepted_index", pa.int64())]
        )
        self._writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")

    def write(self, chunk: KeyedDraftsChunk, view: DraftSource, prev_token: NDArray[np.int64],
              chain: int = 0) -> None:
        """Append one chunk; `view` gives each key's fields, `prev_token` each step's (-1: null)."""
        if not len(chunk):
            return
        pa = self._pa
        keys, inverse = np.unique(chunk.prev, return_inverse=True)
        drafts = [view(k) for k in keys.tolist()]

        def column(values: list[float] | list[int], dtype: type) -> NDArray[np.generic]:
            found: NDArray[np.generic] = np.array(values, dtype=dtype)[inverse]
            return found

        gap = column([d.ce_gap_nats for d in drafts], np.float64)
        key = (pa.array([self.key_text(k) for k in keys.tolist()]).take(pa.array(inverse))
               if self.key_name == "context" else pa.array(chunk.prev))
        arrays = [
            pa.array(np.arange(chunk.start, chunk.start + len(chunk), dtype=np.int64)),
            pa.array(prev_token, mask=prev_token < 0), pa.array(chunk.proposed), pa.array(chunk.emitted),
            pa.array(chunk.accepted), pa.array(column([d.payload.K for d in drafts], np.int64)),
            pa.array(column([d.payload.tau for d in drafts], np.float64)),
            pa.array(column([d.payload.eps for d in drafts], np.float64)),
            pa.array(column([d.psi_bytes for d in drafts], np.int64)),
            pa.array(column([d.topk_mass for d in drafts], np.float64)),
            pa.array(column([d.overlap_mass for d in drafts], np.float64)),
            pa.array(gap, mask=~np.isfinite(gap)), key, pa.array(chunk.drafts_used),
            pa.array(chunk.accepted_index, mask=chunk.accepted_index < 0),
        ]
        if self.chain_column:
            arrays.insert(0, pa.array(np.full(len(chunk), chain, dtype=np.int64)))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        """Finish the file (its footer)."""
        self._writer.close()
