"""Per-step telemetry: the ``m1_metrics.jsonl`` stream (SPEC §6), a columnar option, or none.

One record per step with exactly the guide's fields, in this order:
``step, prev_token, proposed_token, emitted_token, accepted, K, tau, eps_used,
psi_bytes, topk_mass, overlap_mass, ce_gap_nats``.  The last seven are those of
the step's context, so each context's tail of the line is formatted once and
reused; floats are written as the shortest text that reads back to the same
float64, and an infinite CE gap as ``null``.

Formats (``run --telemetry``):

* ``jsonl`` (default): whole chunks are formatted at once, by the compiled
  kernel when it is built (``thermospec.engine._kernels.jsonl``, given the
  schema's texts) or by the Python
  formatter `jsonl_lines`; both give the same bytes.
* ``parquet``: ``m1_metrics.parquet``, one row per step with the same fields
  (null where the JSONL has ``null``; ``--drafts N`` adds its two,
  ``drafts_used`` and ``accepted_index``), one row group per chunk; needs the
  optional ``parquet`` extra (pyarrow), imported only when used.

* ``none``: no per-step file; the summary is unchanged.

The fields, their JSON text and Arrow types are declared once in `runs.schema`;
`FIELDS` is `runs.schema.M1`'s names, and the formatters and `ParquetWriter` are
built from that layout (order-N, trace and N-draft runs from theirs).  The
records of one chain or of B in lock step (``--chains B``, ``--drafts N``,
``--order N``, ``--trace``) are written by `ChainRecords`, once for every mode:
each chain's chunk of records, or none of them.

Every writer streams chunk by chunk: memory does not grow with the run length.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Generic, Literal, Protocol, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.chunks import ChainChunk, DraftsChunk
from thermospec.engine.kernels import compiled_module
from thermospec.runs.parquet_file import RecordParquet, finish_parquet
from thermospec.runs.schema import M1, M1_FIELDS, Layout
from thermospec.runs.storage import METRICS_FILE, OutputError, RecordFile, append_whole, chain_dir, cut_back
from thermospec.tsu.drafts import ContextDraft, DraftSource, RecordSource

__all__ = [
    "BLOCKS_PARQUET",
    "FIELDS",
    "JSONL_FILE",
    "PARQUET_FILE",
    "TELEMETRY_FORMATS",
    "ChainRecords",
    "JsonlWriter",
    "NullWriter",
    "ParquetWriter",
    "TelemetryFormat",
    "TelemetrySink",
    "TelemetryWriter",
    "context_fields",
    "drafts_arrays",
    "jsonl_lines",
    "parquet_available",
    "step_arrays",
    "step_columns",
]


FIELDS = M1.names
"""The guide's 12 fields of a record, in its order (`runs.schema.M1_FIELDS`)."""


TelemetryFormat = Literal["jsonl", "parquet", "none"]
TELEMETRY_FORMATS: tuple[TelemetryFormat, ...] = ("jsonl", "parquet", "none")
JSONL_FILE = "m1_metrics.jsonl"
_M1_FORMAT = M1.compiled_format()
"""The texts the compiled formatter writes around M1's step values: its field names come from the schema."""
PARQUET_FILE = "m1_metrics.parquet"
BLOCKS_PARQUET = "m1_blocks.parquet"
"""``run --gamma G --telemetry parquet``: one row per block, the block JSONL's fields as columns
(`runs.schema.block_layout`; a token tree adds ``children`` and ``accepted_index``; a leading ``chain`` column
with ``--chains B``), written by `runs.parquet_file.RecordParquet` like every record."""
Chunk = TypeVar("Chunk", bound=ChainChunk)
"""A chunk of steps of one chain (`ChainRecords`)."""


class TelemetryWriter(Protocol):
    """What the run loop calls for every chunk of steps."""

    @property
    def rows_written(self) -> int:
        """Steps whose records are on file: a run counts a chunk once they are (Parquet writes behind the run)."""

    def write(self, chunk: ChainChunk, drafts: DraftSource) -> None:
        """Record one chunk of steps (a failure of an earlier chunk written behind may surface here)."""


def context_fields(draft: ContextDraft) -> str:
    """The JSON text of a context's fields, from ``"K"`` to the closing brace and newline (`Layout.key_tail`)."""
    return M1.key_tail(draft, 0)


def step_columns(chunk: ChainChunk) -> dict[str, list[Any]]:
    """The JSON items of a chunk's step fields (`runs.schema.Layout.lines`)."""
    return {"prev_token": chunk.prev.tolist(), "proposed_token": chunk.proposed.tolist(),
            "emitted_token": chunk.emitted.tolist(), "accepted": M1_FIELDS[4].json_column(chunk.accepted)}


def step_arrays(chunk: ChainChunk) -> dict[str, NDArray[Any]]:
    """A chunk's step fields as arrays (`runs.parquet_file.RecordParquet.write`)."""
    return {"prev_token": chunk.prev, "proposed_token": chunk.proposed, "emitted_token": chunk.emitted,
            "accepted": chunk.accepted}


def drafts_arrays(chunk: DraftsChunk) -> dict[str, NDArray[Any]]:
    """An N-draft chunk's step fields as arrays: M1's, then ``drafts_used`` and ``accepted_index``."""
    return step_arrays(chunk) | {"drafts_used": chunk.drafts_used, "accepted_index": chunk.accepted_index}


def jsonl_lines(chunk: ChainChunk, context_text: dict[int, str]) -> str:
    """Format a chunk of steps as JSONL text (the pure-Python formatter).

    Parameters
    ----------
    chunk : ChainChunk
    context_text : dict
        `context_fields` of every context in the chunk.
    """
    return M1.lines(chunk.start, step_columns(chunk), list(map(context_text.__getitem__, chunk.prev.tolist())))


def _new_contexts(chunk: ChainChunk, known: NDArray[np.bool_]) -> list[int]:
    """Contexts of `chunk` not yet in `known` (which is indexed by context)."""
    seen = np.flatnonzero(np.bincount(chunk.prev, minlength=known.shape[0]))
    fresh: list[int] = seen[~known[seen]].tolist() if seen.size else []
    return fresh


class JsonlWriter:
    """Streams chunks of steps as JSONL text to a stream (one ``write`` per chunk).

    Parameters
    ----------
    stream : text stream
        Anything with ``write(str)``.
    compiled : bool
        Format with the compiled kernel when it is built (the same bytes as `jsonl_lines`).
    """

    def __init__(self, stream: IO[str], compiled: bool = True) -> None:
        self.stream = stream
        self._module = compiled_module() if compiled else None
        self._text: dict[int, str] = {}
        self._known = np.zeros(0, dtype=np.bool_)
        self._blob = b""
        self._offsets = np.zeros(1, dtype=np.int64)
        self.rows_written = 0

    def _learn(self, chunk: ChainChunk, drafts: DraftSource) -> bool:
        """Format the contexts first seen in `chunk`; return whether there were any."""
        top = int(chunk.prev.max()) + 1 if len(chunk) else 0
        if top > self._known.shape[0]:
            self._known = np.concatenate([self._known, np.zeros(top - self._known.shape[0], dtype=np.bool_)])
        fresh = _new_contexts(chunk, self._known)
        for x in fresh:
            self._text[x] = context_fields(drafts(x))
        self._known[fresh] = True
        return bool(fresh)

    def _pack(self) -> None:
        """Concatenate the context texts for the kernel: text of x is ``blob[offsets[x]:offsets[x + 1]]``."""
        V = self._known.shape[0]
        texts = [self._text.get(x, "").encode("ascii") for x in range(V)]
        self._blob = b"".join(texts)
        self._offsets = np.zeros(V + 1, dtype=np.int64)
        np.cumsum([len(t) for t in texts], out=self._offsets[1:])

    def format(self, chunk: ChainChunk, drafts: DraftSource) -> str:
        """The JSONL text of one chunk."""
        if self._learn(chunk, drafts) and self._module is not None:
            self._pack()
        if self._module is None or not len(chunk):
            return jsonl_lines(chunk, self._text)
        prev = np.ascontiguousarray(chunk.prev, dtype=np.int64)
        columns = (prev, np.ascontiguousarray(chunk.proposed, dtype=np.int64),
                   np.ascontiguousarray(chunk.emitted, dtype=np.int64))  # M1's step fields after the index
        text: str = self._module.jsonl(
            chunk.start, columns, np.ascontiguousarray(chunk.accepted, dtype=np.bool_), prev,
            self._blob, self._offsets, self._known.shape[0], len(chunk), *_M1_FORMAT,
        )
        return text

    def write(self, chunk: ChainChunk, drafts: DraftSource) -> None:
        """Append the records of one chunk."""
        self.stream.write(self.format(chunk, drafts))
        self.rows_written += len(chunk)


class NullWriter:
    """``--telemetry none``: records nothing."""

    def __init__(self) -> None:
        self.rows_written = 0

    def write(self, chunk: ChainChunk, drafts: DraftSource) -> None:
        """Ignore one chunk of steps."""
        self.rows_written += len(chunk)


def parquet_available() -> bool:
    """Whether pyarrow (the ``parquet`` extra) is installed, without importing it."""
    from importlib.util import find_spec

    return find_spec("pyarrow") is not None


class ParquetWriter:
    """``--telemetry parquet`` of the M1 chain: one row per step, the JSONL's fields as columns, one row group per
    chunk (`ChainRecords` writes those of the other bigram runs: ``--drafts N``, ``--chains B``), each written
    behind the run (`RecordParquet`'s ``behind``): `rows_written` says which are on file.

    Parameters
    ----------
    path : Path
        The ``.parquet`` file to create.

    Raises
    ------
    ImportError
        If pyarrow is not installed (``pip install 'thermospec[parquet]'``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = RecordParquet(path, M1, behind=True)
        self.schema = self._file.schema

    @property
    def rows_written(self) -> int:
        """Steps whose row groups are on file."""
        return self._file.rows_written

    def write(self, chunk: ChainChunk, drafts: DraftSource) -> None:
        """Append one chunk as a row group, written behind; raise the failure of the one before, if any."""
        self._file.write(chunk.start, step_arrays(chunk), 0, chunk.prev, drafts)

    def close(self) -> None:
        """Finish the file (its footer); the file is only readable after this."""
        self._file.close()


class ChainRecords(Generic[Chunk]):
    """The records of one chain or of B in lock step, written a chunk at a time: every chain's of it, or none.

    ``jsonl``: one chain's ``m1_metrics.jsonl`` in `run_dir` (a `RecordFile`, hashed for the summary's
    ``metrics_sha256``), or each chain's ``chain_<b>/m1_metrics.jsonl``, appended without holding B files open
    and, on a failed write (a full disk) or a second signal, all cut back to the same whole chunks.
    ``parquet``: one ``m1_metrics.parquet`` of `records` (a leading ``chain`` column with B chains), finished
    and read back on `close` (removed, saying so, if it cannot be read).  ``none``, or `run_dir` None: nothing.
    With B chains and telemetry, the chains' folders are created (their summaries go there too).

    Parameters
    ----------
    run_dir : Path or None
    telemetry : {"jsonl", "parquet", "none"}
    chains : int
    records : Layout, optional
        The records' fields, for Parquet (without it ``parquet`` writes nothing).
    key_text : callable, optional
        A key's text (the ``context`` key field).
    """

    def __init__(self, run_dir: Path | None, telemetry: str, chains: int = 1, records: Layout | None = None,
                 key_text: Callable[[int], str] | None = None) -> None:
        self.run_dir, self.chains = run_dir, chains
        self.steps = 0  # each chain's steps of whole records
        self._file: RecordFile | None = None
        self._paths: list[Path] = []  # with B chains: each chain's JSONL
        self._sizes: list[int] = []  # and its bytes of whole chunks
        self._parquet: RecordParquet | None = None
        if run_dir is None or telemetry == "none":
            return
        if chains > 1:
            for b in range(chains):
                chain_dir(run_dir, b).mkdir()
        if telemetry == "jsonl" and chains == 1:
            self._file = RecordFile(run_dir / METRICS_FILE)
        elif telemetry == "jsonl":
            self._paths = [chain_dir(run_dir, b) / METRICS_FILE for b in range(chains)]
            for path in self._paths:
                path.touch()
            self._sizes = [0] * chains
        elif telemetry == "parquet" and records is not None:
            self._parquet = RecordParquet(run_dir / PARQUET_FILE, records, chains > 1, key_text)

    def write(self, chunks: Sequence[Chunk], lines: Callable[[Chunk], str],
              columns: Callable[[Chunk], Mapping[str, NDArray[Any]]] | None = None,
              keys: Callable[[Chunk], NDArray[np.int64]] | None = None, drafts: RecordSource | None = None) -> None:
        """Write chain b's records of the same steps, ``chunks[b]``, for every b: `lines` formats a chunk's JSONL;
        `columns` are its Parquet step columns, `keys` each step's key and `drafts` the keys' drafts.

        Raises
        ------
        OutputError
            A failed write, in one line naming the file; every file keeps the whole chunks before it.
        """
        if self._parquet is not None:
            assert columns is not None and keys is not None and drafts is not None, "Parquet needs the columns"
            for b, part in enumerate(chunks):
                self._parquet.write(part.start, columns(part), b, keys(part), drafts)
        if self._file is not None:
            self._file.write(lines(chunks[0]))
        elif self._paths:
            self._append(chunks, lines)
        self.steps += len(chunks[0])

    def _append(self, chunks: Sequence[Chunk], lines: Callable[[Chunk], str]) -> None:
        """Every chain's records, formatted one chain at a time, or none of them (the files cut back to their
        whole chunks on a failure)."""
        sizes = list(self._sizes)
        try:
            for b, (path, part) in enumerate(zip(self._paths, chunks, strict=True)):
                sizes[b] = append_whole(path, lines(part), self._sizes[b])
        except OutputError as exc:
            self._cut_back()
            raise OutputError(f"{exc}; every chain's file kept its {self.steps} steps of whole records") from None
        except BaseException:  # a second signal: stop at once, every file cut back
            self._cut_back()
            raise
        self._sizes = sizes

    def _cut_back(self) -> None:
        for path, size in zip(self._paths, self._sizes, strict=True):
            cut_back(path, size)

    def close(self) -> str | None:
        """Finish the Parquet file (removed, saying so, if it cannot be read back), then close the JSONL; the one
        chain's JSONL SHA-256 (None with B chains or another format)."""
        try:
            if self._parquet is not None:
                finish_parquet(self._parquet)
        finally:
            if self._file is not None:
                self._file.close()
        return None if self._file is None else self._file.hexdigest()


class TelemetrySink:
    """The telemetry file of a run in one of `TELEMETRY_FORMATS`, as a context manager.

    ``jsonl`` goes through `thermospec.runs.storage.RecordFile` (whole chunks only,
    hashed for the summary's ``metrics_sha256``); ``parquet`` through
    `ParquetWriter`; ``none`` writes nothing.

    Parameters
    ----------
    run_dir : Path
        The run's folder.
    fmt : {"jsonl", "parquet", "none"}

    Attributes
    ----------
    writer : TelemetryWriter
        What the run loop calls per chunk.
    path : Path or None
        The file written, if any.
    """

    def __init__(self, run_dir: Path, fmt: TelemetryFormat = "jsonl") -> None:
        self._record: RecordFile | None = None
        self._parquet: ParquetWriter | None = None
        self.writer: TelemetryWriter
        self.path: Path | None
        if fmt == "jsonl":
            self.path = run_dir / JSONL_FILE
            self._record = RecordFile(self.path)
            self.writer = JsonlWriter(cast(IO[str], self._record))
        elif fmt == "parquet":
            self.path = run_dir / PARQUET_FILE
            self._parquet = ParquetWriter(self.path)
            self.writer = self._parquet
        elif fmt == "none":
            self.path = None
            self.writer = NullWriter()
        else:
            raise ValueError(f"--telemetry: must be one of {', '.join(TELEMETRY_FORMATS)}, got {fmt!r}")

    def hexdigest(self) -> str | None:
        """SHA-256 of the JSONL written so far (None for the other formats)."""
        return self._record.hexdigest() if self._record is not None else None

    def close(self) -> None:
        """Finish the file."""
        if self._record is not None:
            self._record.close()
        if self._parquet is not None:
            self._parquet.close()

    def __enter__(self) -> TelemetrySink:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
