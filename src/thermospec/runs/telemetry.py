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

The fields, their JSON text and Arrow types are declared once in `runs.schema`;
`FIELDS` is `runs.schema.M1`'s names, and the formatters and `ParquetWriter` are
built from that layout (order-N, trace and N-draft runs from theirs).
* ``none``: no per-step file; the summary is unchanged.

Every writer streams chunk by chunk: memory does not grow with the run length.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Protocol, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.chunks import ChainChunk, DraftsChunk
from thermospec.engine.kernels import compiled_module
from thermospec.runs.parquet_file import RecordParquet
from thermospec.runs.schema import M1, M1_FIELDS, layout
from thermospec.runs.storage import RecordFile
from thermospec.tsu.drafts import ContextDraft, DraftSource

__all__ = [
    "FIELDS",
    "JSONL_FILE",
    "PARQUET_FILE",
    "TELEMETRY_FORMATS",
    "JsonlWriter",
    "NullWriter",
    "ParquetWriter",
    "TelemetryFormat",
    "TelemetrySink",
    "TelemetryWriter",
    "context_fields",
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


class TelemetryWriter(Protocol):
    """What the run loop calls for every chunk of steps."""

    def write(self, chunk: ChainChunk, drafts: DraftSource) -> None:
        """Record one chunk of steps."""


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


class NullWriter:
    """``--telemetry none``: records nothing."""

    def write(self, chunk: ChainChunk, drafts: DraftSource) -> None:
        """Ignore one chunk of steps."""


def parquet_available() -> bool:
    """Whether pyarrow (the ``parquet`` extra) is installed, without importing it."""
    from importlib.util import find_spec

    return find_spec("pyarrow") is not None


class ParquetWriter:
    """``--telemetry parquet``: one row per step, the JSONL's fields as columns, one row group per chunk.

    Parameters
    ----------
    path : Path
        The ``.parquet`` file to create.
    chain_column : bool
        Prepend a ``chain`` column (``run --chains B``: all chains in one file).
    drafts_columns : bool
        Append ``run --drafts N``'s two fields, ``drafts_used`` and ``accepted_index``
        (null where the residual was drawn), as its JSONL has them; `write` then takes
        `DraftsChunk` s.

    Raises
    ------
    ImportError
        If pyarrow is not installed (``pip install 'thermospec[parquet]'``).
    """

    def __init__(self, path: Path, chain_column: bool = False, drafts_columns: bool = False) -> None:
        self.path = path
        self.chain_column, self.drafts_columns = chain_column, drafts_columns
        self._file = RecordParquet(path, layout(drafts=drafts_columns), chain_column)
        self.schema = self._file.schema

    def write(self, chunk: ChainChunk, drafts: DraftSource, chain: int = 0) -> None:
        """Append one chunk (of chain `chain`) as a row group."""
        columns = step_arrays(chunk)
        if self.drafts_columns:
            steps = cast(DraftsChunk, chunk)
            columns |= {"drafts_used": steps.drafts_used, "accepted_index": steps.accepted_index}
        self._file.write(chunk.start, columns, chain, chunk.prev, drafts)

    def close(self) -> None:
        """Finish the file (its footer); the file is only readable after this."""
        self._file.close()


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
