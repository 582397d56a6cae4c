"""A field of the telemetry records: its name, kind, level and axis; its kind fixes its JSON text and Arrow type.

`runs.schema` declares every field of every record with this class and builds the
formatters and Parquet writers from the declarations.

JSON text: integers as decimals, booleans as ``true``/``false``, floats as the
shortest text reading back to the same float64 (``null`` where not finite),
optional integers ``null`` where negative, text as a JSON string, lists of integers
(and lists of them) without spaces.  Parquet: the same values (lists as list
columns), nulls where JSON has ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from thermospec.tsu.drafts import DraftRecord

__all__ = ["Axis", "Field", "KeyValue", "Kind", "Level", "json_float"]

Kind = Literal["index", "int", "optional_int", "float", "bool", "text", "int_list", "int_lists"]
Level = Literal["step", "key", "block"]
Axis = Literal["m1", "context", "position", "drafts", "gamma", "tree"]
KeyValue = Callable[[DraftRecord, int, Callable[[int], str] | None], Any]

_BOOL_TEXT = np.array(["false", "true"], dtype=object)


def json_float(value: float) -> str:
    """A float64 as JSON: the shortest text reading back to it, ``null`` where not finite."""
    return repr(value) if math.isfinite(value) else "null"


def _int_list(values: Sequence[int]) -> str:
    return "[" + ",".join(map(str, values)) + "]"


def _int_lists(values: Sequence[Sequence[int]]) -> str:
    return "[" + ",".join(map(_int_list, values)) + "]"


def _json(kind: Kind, value: Any) -> str:
    if kind == "int_list":
        return _int_list(value)
    if kind == "int_lists":
        return _int_lists(value)
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
    kind : {"index", "int", "optional_int", "float", "bool", "text", "int_list", "int_lists"}
        Its values: ``index`` is the record's number in the run (``step``, ``block``: the writers
        count it from a chunk's start), ``optional_int`` is null where negative, ``float`` null
        where not finite, ``int_list`` a list of integers per record, ``int_lists`` a list of them.
    level : {"step", "key", "block"}
        Per step (the run hands an array), per key (the same for every step drafting at the key:
        formatted once, looked up per step), or per block (a block record's: the run hands a
        sequence of values, one per block).
    axis : {"m1", "context", "position", "drafts", "gamma", "tree"}
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

    def json_column(self, values: NDArray[Any] | Sequence[Any]) -> list[Any]:
        """A step or block field's values as items whose ``str`` is their JSON text."""
        if self.kind == "int_list":
            return list(map(_int_list, values))
        if self.kind == "int_lists":
            return list(map(_int_lists, values))
        if self.kind == "text":
            return list(map(json.dumps, values))
        if not isinstance(values, np.ndarray):
            if self.kind in ("index", "int"):
                return list(values)
            values = np.asarray(values)
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
        ints = pa.list_(pa.int64())
        return {"index": pa.int64(), "int": pa.int64(), "optional_int": pa.int64(), "float": pa.float64(),
                "bool": pa.bool_(), "text": pa.string(), "int_list": ints, "int_lists": pa.list_(ints)}[self.kind]

    def nulls(self, values: NDArray[Any]) -> NDArray[np.bool_] | None:
        """Where `values` are null (JSON ``null``), or None if none can be."""
        if self.kind == "optional_int":
            found: NDArray[np.bool_] = values < 0
        elif self.kind == "float":
            found = ~np.isfinite(values)
        else:
            return None
        return found if found.any() else None

    def arrow_array(self, pa: Any, values: NDArray[Any] | Sequence[Any]) -> Any:
        """Its Arrow array of `values` (nulls where its JSON text is ``null``)."""
        if self.kind in ("text", "int_list", "int_lists"):
            return pa.array(values, type=self.arrow_type(pa))
        found = np.asarray(values, dtype=np.int64 if self.kind in ("index", "int", "optional_int") else None)
        null = self.nulls(found)
        return (pa.array(found, type=self.arrow_type(pa)) if null is None
                else pa.array(found, mask=null, type=self.arrow_type(pa)))


