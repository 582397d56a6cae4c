"""Per-step telemetry: the ``m1_metrics.jsonl`` stream (SPEC §6), a columnar option, or none.

One record per step with exactly the guide's fields, in this order:
``step, prev_token, proposed_token, emitted_token, accepted, K, tau, eps_used,
psi_bytes, topk_mass, overlap_mass, ce_gap_nats``.  The last seven are those of
the step's context, so each context's tail of the line is formatted once and
reused; floats are written as the shortest text that reads back to the same
float64, and an infinite CE gap as ``null``.

Formats (``run --telemetry``):

* ``jsonl`` (default): whole chunks are formatted at once, by the compiled
  kernel when it is built (``thermospec._kernels.jsonl``) or by the Python
  formatter `jsonl_lines`; both give the same bytes.
* ``parquet``: ``m1_metrics.parquet``, one row per step with the same fields
  (``ce_gap_nats`` null where infinite; ``--drafts N`` adds its two,
  ``drafts_used`` and ``accepted_index``), one row group per chunk; needs the
  optional ``parquet`` extra (pyarrow), imported only when used.
* ``none``: no per-step file; the summary is unchanged.

Every writer streams chunk by chunk: memory does not grow with the run length.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Protocol, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.chunks import ChainChunk, DraftsChunk
from thermospec.engine.kernels import compiled_module
from thermospec.runs.storage import RecordFile
from thermospec.tsu.drafts import ContextDraft, DraftSource

__all__ = [
    "FIELDS",
    "JSONL_FILE",
    "PARQUET_FILE",
    "TELEMETRY_FORMATS",
    "ContextColumns",
    "JsonlWriter",
    "NullWriter",
    "ParquetWriter",
    "TelemetryFormat",
    "TelemetrySink",
    "TelemetryWriter",
    "context_fields",
    "jsonl_lines",
    "parquet_available",
]


FIELDS = (
    "step", "prev_token", "proposed_token", "emitted_token", "accepted",
    "K", "tau", "eps_used", "psi_bytes", "topk_mass", "overlap_mass", "ce_gap_nats",
)


TelemetryFormat = Literal["jsonl", "parquet", "none"]
TELEMETRY_FORMATS: tuple[TelemetryFormat, ...] = ("jsonl", "parquet", "none")
JSONL_FILE = "m1_metrics.jsonl"
PARQUET_FILE = "m1_metrics.parquet"


class TelemetryWriter(Protocol):
    """What the run loop calls for every chunk of steps."""

    def write(self, chunk: ChainChunk, drafts: DraftSource) -> None:
        """Record one chunk of steps."""


def _json_float(value: float) -> str:
    return repr(value) if math.isfinite(value) else "null"


def context_fields(draft: ContextDraft) -> str:
    """The JSON text of a context's fields, from ``"K"`` to the closing brace and newline."""
    payload = draft.payload
    return (
        f'"K":{payload.K},"tau":{_json_float(payload.tau)},"eps_used":{_json_float(payload.eps)},'
        f'"psi_bytes":{draft.psi_bytes},"topk_mass":{_json_float(draft.topk_mass)},'
        f'"overlap_mass":{_json_float(draft.overlap_mass)},'
        f'"ce_gap_nats":{_json_float(draft.ce_gap_nats)}}}\n'
    )


def jsonl_lines(chunk: ChainChunk, context_text: dict[int, str]) -> str:
    """Format a chunk of steps as JSONL text (the pure-Python formatter).

    Parameters
    ----------
    chunk : ChainChunk
    context_text : dict
        `context_fields` of every context in the chunk.
    """
    verdict = ("false", "true")
    return "".join(
        [
            f'{{"step":{step},"prev_token":{x},"proposed_token":{y},"emitted_token":{e},'
            f'"accepted":{verdict[a]},{context_text[x]}'
            for step, x, y, e, a in zip(
                range(chunk.start, chunk.start + len(chunk)),
                chunk.prev.tolist(),
                chunk.proposed.tolist(),
                chunk.emitted.tolist(),
                chunk.accepted.tolist(),
                strict=True,
            )
        ]
    )


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
        text: str = self._module.jsonl(
            chunk.start,
            np.ascontiguousarray(chunk.prev, dtype=np.int64),
            np.ascontiguousarray(chunk.proposed, dtype=np.int64),
            np.ascontiguousarray(chunk.emitted, dtype=np.int64),
            np.ascontiguousarray(chunk.accepted, dtype=np.bool_),
            self._blob, self._offsets, self._known.shape[0], len(chunk),
        )
        return text

    def write(self, chunk: ChainChunk, drafts: DraftSource) -> None:
        """Append the records of one chunk."""
        self.stream.write(self.format(chunk, drafts))


class NullWriter:
    """``--telemetry none``: records nothing."""

    def write(self, chunk: ChainChunk, drafts: DraftSource) -> None:
        """Ignore one chunk of steps."""


class ContextColumns:
    """Per-context values of the seven context fields, as arrays indexed by context (grown on demand)."""

    INT_FIELDS = ("K", "psi_bytes")
    FLOAT_FIELDS = ("tau", "eps_used", "topk_mass", "overlap_mass", "ce_gap_nats")

    def __init__(self) -> None:
        self.known = np.zeros(0, dtype=np.bool_)
        self.values: dict[str, NDArray[Any]] = {
            **{f: np.zeros(0, dtype=np.int64) for f in self.INT_FIELDS},
            **{f: np.zeros(0, dtype=np.float64) for f in self.FLOAT_FIELDS},
        }

    def learn(self, chunk: ChainChunk, drafts: DraftSource) -> None:
        """Record the fields of the contexts first seen in `chunk`."""
        top = int(chunk.prev.max()) + 1 if len(chunk) else 0
        if top > self.known.shape[0]:
            grow = top - self.known.shape[0]
            self.known = np.concatenate([self.known, np.zeros(grow, dtype=np.bool_)])
            for name, column in self.values.items():
                self.values[name] = np.concatenate([column, np.zeros(grow, dtype=column.dtype)])
        for x in _new_contexts(chunk, self.known):
            draft = drafts(x)
            payload = draft.payload
            self.values["K"][x] = payload.K
            self.values["psi_bytes"][x] = draft.psi_bytes
            self.values["tau"][x] = payload.tau
            self.values["eps_used"][x] = payload.eps
            self.values["topk_mass"][x] = draft.topk_mass
            self.values["overlap_mass"][x] = draft.overlap_mass
            self.values["ce_gap_nats"][x] = draft.ce_gap_nats
            self.known[x] = True


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
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self.path = path
        self.chain_column = chain_column
        self.schema = pa.schema(
            [("chain", pa.int64())] * chain_column
            + [
                ("step", pa.int64()), ("prev_token", pa.int64()), ("proposed_token", pa.int64()),
                ("emitted_token", pa.int64()), ("accepted", pa.bool_()), ("K", pa.int64()),
                ("tau", pa.float64()), ("eps_used", pa.float64()), ("psi_bytes", pa.int64()),
                ("topk_mass", pa.float64()), ("overlap_mass", pa.float64()), ("ce_gap_nats", pa.float64()),
            ]
            + [("drafts_used", pa.int64()), ("accepted_index", pa.int64())] * drafts_columns
        )
        self.drafts_columns = drafts_columns
        self._writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")
        self._columns = ContextColumns()

    def write(self, chunk: ChainChunk, drafts: DraftSource, chain: int = 0) -> None:
        """Append one chunk (of chain `chain`) as a row group."""
        if not len(chunk):
            return
        pa = self._pa
        self._columns.learn(chunk, drafts)
        x = chunk.prev
        values = {name: column[x] for name, column in self._columns.values.items()}
        gap = values["ce_gap_nats"]
        arrays = [
            pa.array(np.arange(chunk.start, chunk.start + len(chunk), dtype=np.int64)),
            pa.array(chunk.prev), pa.array(chunk.proposed), pa.array(chunk.emitted), pa.array(chunk.accepted),
            pa.array(values["K"]), pa.array(values["tau"]), pa.array(values["eps_used"]),
            pa.array(values["psi_bytes"]), pa.array(values["topk_mass"]), pa.array(values["overlap_mass"]),
            pa.array(gap, mask=~np.isfinite(gap)),
        ]
        if self.chain_column:
            arrays.insert(0, pa.array(np.full(len(chunk), chain, dtype=np.int64)))
        if self.drafts_columns:
            steps = cast(DraftsChunk, chunk)
            arrays += [pa.array(steps.drafts_used), pa.array(steps.accepted_index, mask=steps.accepted_index < 0)]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        """Finish the file (its footer); the file is only readable after this."""
        self._writer.close()


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
