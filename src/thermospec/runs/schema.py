"""The one schema of the per-step telemetry records: each field once, and the writers built from it.

A record's fields come in layers, each added by an axis of the run:

* ``m1``: the guide's 12 fields, in its order (SPEC §6): ``step``, ``prev_token``,
  ``proposed_token``, ``emitted_token``, ``accepted`` (per step), then ``K``, ``tau``,
  ``eps_used``, ``psi_bytes``, ``topk_mass``, ``overlap_mass``, ``ce_gap_nats`` (per key:
  those of the context, order-N context or trace position the step drafted in);
* ``context`` (``--order N``, N > 2): the context's text, per key;
* ``position`` (``--trace``): the position, per key;
* ``drafts`` (``--drafts N``): ``drafts_used`` and ``accepted_index``, per step.

A `Field` says its name, its kind (which fixes its JSON text and its Arrow type),
its level and its axis; a `Layout` is the fields of one kind of run, from which
come its JSONL formatter (`Layout.lines`, with each key's fields formatted once,
`Layout.key_tail`), its Parquet schema (`Layout.arrow_schema`) and its Parquet
writer (`RecordParquet`, whose rows equal the JSONL records field for field, a
leading ``chain`` column holding every chain with ``--chains B``).  A new
per-step field is one `Field` here plus the array its run hands the writers.

JSON text: integers as decimals, booleans as ``true``/``false``, floats as the
shortest text reading back to the same float64 (``null`` where not finite),
optional integers ``null`` where negative, text as a JSON string.  Parquet: the
same values, nulls where JSON has ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from thermospec.tsu.drafts import ContextDraft, DraftSource

__all__ = [
    "DRAFTS_FIELDS",
    "M1",
    "M1_FIELDS",
    "Field",
    "KeyTable",
    "Layout",
    "RecordParquet",
    "json_float",
    "layout",
]

Kind = Literal["int", "optional_int", "float", "bool", "text"]
Level = Literal["step", "key"]
Axis = Literal["m1", "context", "position", "drafts"]
KeyValue = Callable[[ContextDraft, int, Callable[[int], str] | None], Any]

_BOOL_TEXT = np.array(["false", "true"], dtype=object)


def json_float(value: float) -> str:
    """A float64 as JSON: the shortest text reading back to it, ``null`` where not finite."""
    return repr(value) if math.isfinite(value) else "null"


def _json(kind: Kind, value: Any) -> str:
    if kind == "float":
        return json_float(value)
    if kind == "bool":
        return "true" if value else "false"
    if kind == "text":
        return json.dumps(value)
    if kind == "optional_int" and value < 0:
        return "null"
    return str(value)


@dataclass(frozen=True)
class Field:
    """One field of the records.

    Attributes
    ----------
    name : str
    kind : {"int", "optional_int", "float", "bool", "text"}
        Its values: ``optional_int`` is null where negative, ``float`` null where not finite.
    level : {"step", "key"}
        Per step (the run hands an array), or per key (the same for every step drafting at the key:
        formatted once, looked up per step).
    axis : {"m1", "context", "position", "drafts"}
        What adds it to the records.
    of_key : callable, optional
        A key field's value: ``of_key(draft, key, key_text)``.
    """

    name: str
    kind: Kind
    level: Level
    axis: Axis
    of_key: KeyValue | None = None

    def json(self, value: Any) -> str:
        """One value's JSON text."""
        return _json(self.kind, value)

    def json_column(self, values: NDArray[Any]) -> list[Any]:
        """A step field's values as items whose ``str`` is their JSON text."""
        if self.kind == "bool":
            texts: list[str] = _BOOL_TEXT[values.astype(np.intp)].tolist()
            return texts
        if self.kind == "optional_int":
            found: NDArray[Any] = values.astype(object)
            found[values < 0] = "null"
            return list(found)
        if self.kind == "float":
            return [json_float(v) for v in values.tolist()]
        return list(values.tolist())

    def arrow_type(self, pa: Any) -> Any:
        """Its Arrow type (``pa``: the pyarrow module)."""
        return {"int": pa.int64(), "optional_int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                "text": pa.string()}[self.kind]

    def nulls(self, values: NDArray[Any]) -> NDArray[np.bool_] | None:
        """Where `values` are null (JSON ``null``), or None if none can be."""
        if self.kind == "optional_int":
            found: NDArray[np.bool_] = values < 0
        elif self.kind == "float":
            found = ~np.isfinite(values)
        else:
            return None
        return found if found.any() else None

    def arrow_array(self, pa: Any, values: NDArray[Any]) -> Any:
        """Its Arrow array of `values` (nulls where its JSON text is ``null``)."""
        null = self.nulls(values)
        return pa.array(values) if null is None else pa.array(values, mask=null)


def _draft_key(get: Callable[[ContextDraft], Any]) -> KeyValue:
    return lambda draft, key, text: get(draft)


def _context_text(draft: ContextDraft, key: int, text: Callable[[int], str] | None) -> str:
    assert text is not None, "the context field needs the contexts' text"
    return text(key)


M1_FIELDS: tuple[Field, ...] = (
    Field("step", "int", "step", "m1"),
    Field("prev_token", "optional_int", "step", "m1"),
    Field("proposed_token", "int", "step", "m1"),
    Field("emitted_token", "int", "step", "m1"),
    Field("accepted", "bool", "step", "m1"),
    Field("K", "int", "key", "m1", _draft_key(lambda d: d.payload.K)),
    Field("tau", "float", "key", "m1", _draft_key(lambda d: d.payload.tau)),
    Field("eps_used", "float", "key", "m1", _draft_key(lambda d: d.payload.eps)),
    Field("psi_bytes", "int", "key", "m1", _draft_key(lambda d: d.psi_bytes)),
    Field("topk_mass", "float", "key", "m1", _draft_key(lambda d: d.topk_mass)),
    Field("overlap_mass", "float", "key", "m1", _draft_key(lambda d: d.overlap_mass)),
    Field("ce_gap_nats", "float", "key", "m1", _draft_key(lambda d: d.ce_gap_nats)),
)
"""The guide's 12 fields, in its order."""

KEY_FIELDS: dict[str, Field] = {
    "context": Field("context", "text", "key", "context", _context_text),
    "position": Field("position", "int", "key", "position", lambda draft, key, text: key),
}
"""The key a context source adds after the guide's fields: an order-N context's text, a trace position."""

DRAFTS_FIELDS: tuple[Field, ...] = (
    Field("drafts_used", "int", "step", "drafts"),
    Field("accepted_index", "optional_int", "step", "drafts"),
)
"""``--drafts N``'s two: TSU draws the step needed, the accepted draft's index (null: the residual)."""


class Layout:
    """The fields of one kind of record, in order, and their JSONL formatter.

    The key fields must be consecutive (after the first step fields): a record is
    ``{`` + the head's step fields + the key's fields (`key_tail`, formatted once per key)
    + the rest's step fields + ``}`` and a newline.
    """

    def __init__(self, fields: Sequence[Field]) -> None:
        self.fields = tuple(fields)
        self.names = tuple(f.name for f in self.fields)
        self.field = {f.name: f for f in self.fields}
        levels = "".join("k" if f.level == "key" else "s" for f in self.fields)
        first, last = levels.index("k"), levels.rindex("k")
        if "s" in levels[first:last] or first == 0:
            raise ValueError(f"the key fields must be consecutive, after a step field: {self.names}")
        self.head, self.keyed, self.rest = self.fields[:first], self.fields[first:last + 1], self.fields[last + 1:]
        self.step_fields = self.head + self.rest
        self.template = (
            "{" + ",".join(f'"{f.name}":%s' for f in self.head) + ",%s"
            + "".join(f',"{f.name}":%s' for f in self.rest) + ("}\n" if self.rest else "")
        )

    def key_tail(self, draft: ContextDraft, key: int, key_text: Callable[[int], str] | None = None) -> str:
        """The JSON text of a key's fields (and, when they end the record, its closing brace and newline)."""
        text = ",".join(f'"{f.name}":{f.json(self.key_value(f, draft, key, key_text))}' for f in self.keyed)
        return text if self.rest else text + "}\n"

    @staticmethod
    def key_value(field: Field, draft: ContextDraft, key: int, key_text: Callable[[int], str] | None) -> Any:
        """A key field's value at `key`."""
        assert field.of_key is not None, f"{field.name} is not a key field"
        return field.of_key(draft, key, key_text)

    def lines(self, start: int, columns: Mapping[str, Sequence[Any]], tails: Sequence[str]) -> str:
        """The JSONL text of consecutive steps from `start`.

        Parameters
        ----------
        start : int
            The first step's index.
        columns : mapping
            Each step field but ``step``: a sequence whose items' ``str`` is their JSON text
            (`Field.json_column`, or plain ints).
        tails : sequence of str
            Each step's `key_tail`.
        """
        n = len(tails)
        parts: list[Sequence[Any]] = [range(start, start + n) if f.name == "step" else columns[f.name]
                                      for f in self.head]
        parts.append(tails)
        parts += [columns[f.name] for f in self.rest]
        template = self.template
        return "".join([template % row for row in zip(*parts, strict=True)])

    def arrow_schema(self, pa: Any, chain_column: bool = False) -> Any:
        """The Parquet schema: the fields in order, after a ``chain`` column if asked for."""
        return pa.schema([("chain", pa.int64())] * chain_column + [(f.name, f.arrow_type(pa)) for f in self.fields])


def layout(key: Literal["context", "position"] | None = None, drafts: bool = False) -> Layout:
    """The layout of a single-step source's records: the guide's fields, the source's key, the N-draft fields."""
    return Layout(M1_FIELDS + ((KEY_FIELDS[key],) if key else ()) + (DRAFTS_FIELDS if drafts else ()))


M1 = layout()
"""M1's records: the guide's 12 fields."""


class KeyTable:
    """The key fields' values by key id (grown on demand), each key's learned once from its draft."""

    def __init__(self, fields: Sequence[Field], key_text: Callable[[int], str] | None = None) -> None:
        self.fields = tuple(f for f in fields if f.level == "key")
        self.key_text = key_text
        self.known = np.zeros(0, dtype=np.bool_)
        self.values: dict[str, NDArray[Any]] = {f.name: np.zeros(0, dtype=self._dtype(f)) for f in self.fields}

    @staticmethod
    def _dtype(field: Field) -> type:
        return {"float": np.float64, "bool": np.bool_, "text": object}.get(field.kind, np.int64)

    def learn(self, keys: NDArray[np.int64], drafts: DraftSource) -> None:
        """Record the fields of the keys in `keys` not met before."""
        top = int(keys.max()) + 1 if keys.shape[0] else 0
        if top > self.known.shape[0]:
            size = max(top, 2 * self.known.shape[0]) if self.known.shape[0] else top
            grow = size - self.known.shape[0]
            self.known = np.concatenate([self.known, np.zeros(grow, dtype=np.bool_)])
            for name, column in self.values.items():
                self.values[name] = np.concatenate([column, np.zeros(grow, dtype=column.dtype)])
        seen = np.flatnonzero(np.bincount(keys, minlength=self.known.shape[0])) if keys.shape[0] else keys
        fresh = seen[~self.known[seen]].tolist()
        for key in fresh:
            draft = drafts(key)
            for f in self.fields:
                self.values[f.name][key] = Layout.key_value(f, draft, key, self.key_text)
        self.known[fresh] = True


class RecordParquet:
    """A Parquet file of records of one `Layout`: one row per step, one row group per chunk (and chain).

    Parameters
    ----------
    path : Path
        The ``.parquet`` file to create.
    layout : Layout
    key_text : callable, optional
        A key's text (the ``context`` field).
    chain_column : bool
        Prepend a ``chain`` column (``--chains B``: all chains in one file).

    Raises
    ------
    ImportError
        If pyarrow is not installed (``pip install 'thermospec[parquet]'``).
    """

    def __init__(self, path: Path, layout: Layout, key_text: Callable[[int], str] | None = None,
                 chain_column: bool = False) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa, self.path, self.layout, self.chain_column = pa, path, layout, chain_column
        self.schema = layout.arrow_schema(pa, chain_column)
        self._keys = KeyTable(layout.fields, key_text)
        self._writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")

    def write(self, start: int, keys: NDArray[np.int64], columns: Mapping[str, NDArray[Any]], drafts: DraftSource,
              chain: int = 0) -> None:
        """Append consecutive steps from `start` (each drafting at `keys`; `columns`: each step field but
        ``step``; `drafts`: each key's draft) as a row group."""
        n = keys.shape[0]
        if not n:
            return
        pa = self._pa
        self._keys.learn(keys, drafts)
        arrays = [pa.array(np.full(n, chain, dtype=np.int64))] if self.chain_column else []
        for f in self.layout.fields:
            if f.name == "step":
                arrays.append(pa.array(np.arange(start, start + n, dtype=np.int64)))
            elif f.level == "step":
                arrays.append(f.arrow_array(pa, columns[f.name]))
            elif f.kind == "text":  # each key's text once, then taken per step
                met, inverse = np.unique(keys, return_inverse=True)
                arrays.append(pa.array(self._keys.values[f.name][met].tolist(), type=pa.string())
                              .take(pa.array(inverse)))
            else:  # nulls found among the keys' values (a few), then taken per step
                table = self._keys.values[f.name]
                null = f.nulls(table)
                arrays.append(pa.array(table[keys]) if null is None else pa.array(table[keys], mask=null[keys]))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        """Finish the file (its footer); the file is only readable after this."""
        self._writer.close()
