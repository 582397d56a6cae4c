"""The one schema of the telemetry records: each field once, and the writers built from it.

A per-step record's fields come in layers, each added by an axis of the run:

* ``m1``: the guide's 12 fields, in its order (SPEC §6): ``step``, ``prev_token``,
  ``proposed_token``, ``emitted_token``, ``accepted`` (per step), then ``K``, ``tau``,
  ``eps_used``, ``psi_bytes``, ``topk_mass``, ``overlap_mass``, ``ce_gap_nats`` (per key:
  those of the context, order-N context or trace position the step drafted in);
* ``context`` (``--order N``, N > 2): the context's text, per key;
* ``position`` (``--trace``): the position, per key;
* ``drafts`` (``--drafts N``): ``drafts_used`` and ``accepted_index``, per step.

A block record (``--gamma G``: one per block, `block_layout`) holds block fields only:

* ``gamma``: ``block``, ``first_step``, ``context`` (the block's first key: a token id or a
  position as an integer, an order-N context as its text), ``drafted`` (the γ drafted tokens),
  ``accepted_length``, ``emitted`` (the accepted drafts, then the residual or bonus token);
* ``tree`` (``--gamma G --drafts N``): ``children`` (each verified level's N drafts) and
  ``accepted_index`` (the child each accepted level took).

A `Field` says its name, its kind (which fixes its JSON text and its Arrow type),
its level and its axis; a `Layout` is the fields of one kind of run, from which
come its JSONL formatter (`Layout.lines`, with each key's fields formatted once,
`Layout.key_tail`), its Parquet schema (`Layout.arrow_schema`) and its Parquet
columns (`Layout.arrow_arrays`, every level's: steps, their keys' fields through a
`KeyTable`, blocks), which the one Parquet writer, `runs.parquet_file.RecordParquet`,
writes (its rows equal the JSONL records field for field, a leading ``chain``
column holding every chain with ``--chains B``).  A new per-step field is
one `Field` here plus the array its run hands the writers; a new per-block field is
one `Field` here plus its values in `runs.block_run.block_values`.  The compiled
formatter of M1's lines takes the texts around its step values from
`Layout.compiled_format`.

A field's JSON text and Arrow type follow from its kind (`runs.fields`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from thermospec.runs.fields import Field, KeyValue, json_float
from thermospec.tsu.drafts import DraftRecord, RecordSource

__all__ = [
    "BLOCK_FIELDS",
    "DRAFTS_FIELDS",
    "M1",
    "M1_FIELDS",
    "TREE_FIELDS",
    "CompiledFormat",
    "Field",
    "KeyTable",
    "Layout",
    "block_layout",
    "json_float",
    "layout",
]


def _draft_key(get: Callable[[DraftRecord], Any]) -> KeyValue:
    return lambda draft, key, text: get(draft)


def _context_text(draft: DraftRecord, key: int, text: Callable[[int], str] | None) -> str:
    assert text is not None, "the context field needs the contexts' text"
    return text(key)


M1_FIELDS: tuple[Field, ...] = (
    Field("step", "index", "step", "m1"),
    Field("prev_token", "optional_int", "step", "m1"),
    Field("proposed_token", "int", "step", "m1"),
    Field("emitted_token", "int", "step", "m1"),
    Field("accepted", "bool", "step", "m1"),
    Field("K", "int", "key", "m1", _draft_key(lambda d: d.K)),
    Field("tau", "float", "key", "m1", _draft_key(lambda d: d.tau)),
    Field("eps_used", "float", "key", "m1", _draft_key(lambda d: d.eps_used)),
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


class CompiledFormat(NamedTuple):
    """The texts a compiled formatter writes around a record's step values (`Layout.compiled_format`).

    A record is, in order: for each integer field of the head, ``int_prefixes[i]`` then its
    decimal (``null`` instead where ``nullable[i]`` and the value is negative; the first is the
    index, counted from the chunk's start); then ``bool_texts[value]`` of the head's last field
    (its prefix, its value and the comma before the key's fields, whole); then the key's
    `Layout.key_tail`, which ends the record.
    """

    int_prefixes: tuple[bytes, ...]
    nullable: tuple[bool, ...]
    bool_texts: tuple[bytes, bytes]


class Layout:
    """The fields of one kind of record, in order, and their JSONL formatter.

    Per-step records: the key fields must be consecutive (after the first step fields): a record
    is ``{`` + the head's step fields + the key's fields (`key_tail`, formatted once per key) + the
    rest's step fields + ``}`` and a newline.  Block records hold block fields only: ``{`` + every
    field + ``}`` and a newline.
    """

    def __init__(self, fields: Sequence[Field]) -> None:
        self.fields = tuple(fields)
        self.names = tuple(f.name for f in self.fields)
        self.field = {f.name: f for f in self.fields}
        levels = "".join({"key": "k", "step": "s", "block": "b"}[f.level] for f in self.fields)
        if "b" in levels:
            if levels.strip("b"):
                raise ValueError(f"a block record holds block fields only: {self.names}")
            first = last = len(levels)
        else:
            first, last = levels.find("k"), levels.rfind("k") + 1
            if first <= 0 or "s" in levels[first:last]:
                raise ValueError(f"the key fields must be consecutive, after a step field: {self.names}")
        self.head, self.keyed, self.rest = self.fields[:first], self.fields[first:last], self.fields[last:]
        self.step_fields = self.head + self.rest
        self.template = (
            "{" + ",".join(f'"{f.name}":%s' for f in self.head) + (",%s" if self.keyed else "")
            + "".join(f',"{f.name}":%s' for f in self.rest) + ("" if self.keyed and not self.rest else "}\n")
        )

    def key_tail(self, draft: DraftRecord, key: int, key_text: Callable[[int], str] | None = None) -> str:
        """The JSON text of a key's fields (and, when they end the record, its closing brace and newline)."""
        text = ",".join(f'"{f.name}":{f.json(self.key_value(f, draft, key, key_text))}' for f in self.keyed)
        return text if self.rest else text + "}\n"

    @staticmethod
    def key_value(field: Field, draft: DraftRecord, key: int, key_text: Callable[[int], str] | None) -> Any:
        """A key field's value at `key`."""
        assert field.of_key is not None, f"{field.name} is not a key field"
        return field.of_key(draft, key, key_text)

    def lines(self, start: int, columns: Mapping[str, Sequence[Any]], tails: Sequence[str] | None = None) -> str:
        """The JSONL text of consecutive records (steps or blocks) from `start`.

        Parameters
        ----------
        start : int
            The first record's index (``step``, ``block``).
        columns : mapping
            Each field but the index and the key's: a sequence whose items' ``str`` is their JSON
            text (`Field.json_column`, or plain ints).
        tails : sequence of str, optional
            Each step's `key_tail` (a layout with key fields only).
        """
        n = len(tails) if tails is not None else len(columns[self.names[1]])
        parts: list[Sequence[Any]] = [range(start, start + n) if f.kind == "index" else columns[f.name]
                                      for f in self.head]
        if self.keyed:
            assert tails is not None, "a layout with key fields needs each step's key_tail"
            parts.append(tails)
        parts += [columns[f.name] for f in self.rest]
        template = self.template
        return "".join([template % row for row in zip(*parts, strict=True)])

    def json_lines(self, start: int, values: Mapping[str, Sequence[Any]]) -> str:
        """The JSONL text of consecutive block records from `start` (`values`: each field's but the index)."""
        return self.lines(start, {f.name: f.json_column(values[f.name]) for f in self.fields if f.kind != "index"})

    def arrow_schema(self, pa: Any, chain_column: bool = False) -> Any:
        """The Parquet schema: the fields in order, after a ``chain`` column if asked for."""
        return pa.schema([("chain", pa.int64())] * chain_column + [(f.name, f.arrow_type(pa)) for f in self.fields])

    def arrow_arrays(self, pa: Any, start: int, values: Mapping[str, Any], chain: int | None = None,
                     keys: NDArray[np.int64] | None = None, table: KeyTable | None = None) -> list[Any]:
        """The Arrow arrays of consecutive records from `start`, one per field, after a ``chain`` column
        holding `chain` unless it is None.

        Parameters
        ----------
        pa : module
            pyarrow.
        start : int
            The first record's index (``step``, ``block``).
        values : mapping
            Each step or block field's values (arrays, or sequences of lists or text).
        chain : int, optional
        keys, table : optional
            With key fields: each step's key, and the keys' values (`KeyTable`, knowing every key in `keys`).
        """
        n = self.count(values, keys)
        arrays = [] if chain is None else [pa.array(np.full(n, chain, dtype=np.int64))]
        for f in self.fields:
            if f.kind == "index":
                arrays.append(pa.array(np.arange(start, start + n, dtype=np.int64)))
            elif f.level != "key":
                arrays.append(f.arrow_array(pa, values[f.name]))
            else:
                assert keys is not None and table is not None, f"{f.name}: a key field needs the keys and their table"
                arrays.append(table.arrow_array(pa, f, keys))
        return arrays

    def count(self, values: Mapping[str, Any], keys: NDArray[np.int64] | None = None) -> int:
        """How many records `values` (and `keys`, with key fields) hold."""
        if keys is not None:
            return int(keys.shape[0])
        return len(values[next(f.name for f in self.fields if f.kind != "index")])

    def compiled_format(self) -> CompiledFormat:
        """What a compiled formatter of these records writes around the step values (`CompiledFormat`).

        Raises
        ------
        ValueError
            Unless the record is integer step fields (the index first), one boolean, then the key's
            fields ending it: M1's layout.
        """
        *ints, flag = self.head
        if (self.rest or not self.keyed or flag.kind != "bool" or not ints or ints[0].kind != "index"
                or any(f.kind not in ("index", "int", "optional_int") for f in ints)):
            raise ValueError(f"no compiled format: {self.names}")
        prefixes = tuple(("{" if i == 0 else ",").encode() + f'"{f.name}":'.encode() for i, f in enumerate(ints))
        return CompiledFormat(prefixes, tuple(f.kind == "optional_int" for f in ints),
                              (f',"{flag.name}":false,'.encode(), f',"{flag.name}":true,'.encode()))


def layout(key: Literal["context", "position"] | None = None, drafts: bool = False) -> Layout:
    """The layout of a single-step source's records: the guide's fields, the source's key, the N-draft fields."""
    return Layout(M1_FIELDS + ((KEY_FIELDS[key],) if key else ()) + (DRAFTS_FIELDS if drafts else ()))


M1 = layout()
"""M1's records: the guide's 12 fields."""

BLOCK_FIELDS: tuple[Field, ...] = (
    Field("block", "index", "block", "gamma"),
    Field("first_step", "int", "block", "gamma"),
    Field("context", "int", "block", "gamma"),
    Field("drafted", "int_list", "block", "gamma"),
    Field("accepted_length", "int", "block", "gamma"),
    Field("emitted", "int_list", "block", "gamma"),
)
"""A block's record (``--gamma G``); ``context``, its first key, is text on order-N contexts (`block_layout`)."""

TREE_FIELDS: tuple[Field, ...] = (
    Field("children", "int_lists", "block", "tree"),
    Field("accepted_index", "int_list", "block", "tree"),
)
"""What a token tree's block adds (``--gamma G --drafts N``): each verified level's N drafts, the accepted child."""


def block_layout(key: Literal["int", "text"] = "int", tree: bool = False) -> Layout:
    """The layout of block records: a block's fields (its first key an integer, or an order-N context's text),
    then a tree's."""
    fields = tuple(replace(f, kind=key) if f.name == "context" else f for f in BLOCK_FIELDS)
    return Layout(fields + (TREE_FIELDS if tree else ()))


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

    def learn(self, keys: NDArray[np.int64], drafts: RecordSource) -> None:
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

    def arrow_array(self, pa: Any, field: Field, keys: NDArray[np.int64]) -> Any:
        """A key field's Arrow array at each step's key in `keys` (all learned)."""
        column = self.values[field.name]
        if field.kind == "text":  # each key's text once, then taken per step
            met, inverse = np.unique(keys, return_inverse=True)
            return pa.array(column[met].tolist(), type=pa.string()).take(pa.array(inverse))
        null = field.nulls(column)  # nulls found among the keys' values (a few), then taken per step
        return pa.array(column[keys]) if null is None else pa.array(column[keys], mask=null[keys])
