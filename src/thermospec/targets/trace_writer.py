"""Writing traces: `TraceWriter` streams T rows of V log-probabilities to a .npy or .npz (docs/traces.md).

The ``.npz`` keeps ``logprobs`` stored (not compressed) so that `load_trace` can
memory-map it; the file is written as ``FILE.part`` and renamed when finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["TraceWriter"]


class TraceWriter:
    """Stream a trace to FILE.npy or FILE.npz (``logprobs`` stored, so memory-mappable), rows at a time.

    Written as ``FILE.part``, renamed by `finish`; an error inside ``with`` removes the part file.
    `path` ends in .npy or .npz, T = `positions` >= 1, V = `vocab_size` >= 2, `dtype` float16 or float32.
    """

    def __init__(self, path: str | Path, positions: int, vocab_size: int, dtype: str = "float16") -> None:
        self.path = Path(path)
        if self.path.suffix not in (".npy", ".npz"):
            raise ValueError(f"{self.path}: a trace is written as .npy or .npz")
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype: a trace holds float16 or float32, got {dtype!r}")
        if positions < 1 or vocab_size < 2:
            raise ValueError(f"a trace needs T >= 1 and V >= 2, got T = {positions}, V = {vocab_size}")
        self.positions, self.vocab_size, self.dtype = positions, vocab_size, np.dtype(dtype).newbyteorder("<")
        self.written = 0
        self._part = self.path.with_name(self.path.name + ".part")
        import zipfile  # here, not at the top: importing the package does not pay for it

        self._zip = zipfile.ZipFile(self._part, "w", zipfile.ZIP_STORED) if self.path.suffix == ".npz" else None
        self._fp: IO[bytes] = (
            self._zip.open("logprobs.npy", "w", force_zip64=True) if self._zip else open(self._part, "wb")  # noqa: SIM115
        )
        descr = np.lib.format.dtype_to_descr(self.dtype)
        np.lib.format.write_array_header_1_0(self._fp, {"descr": descr, "fortran_order": False,
                                                        "shape": (positions, vocab_size)})

    def write(self, rows: ArrayLike) -> None:
        """Append rows (shape ``(n, V)``, or ``(V,)`` for one) in the trace's dtype (below -65504: -inf)."""
        block = np.asarray(rows)
        block = block.reshape(1, -1) if block.ndim == 1 else block
        if block.ndim != 2 or block.shape[1] != self.vocab_size or self.written + len(block) > self.positions:
            raise ValueError(f"rows: need shape (n, {self.vocab_size}) within {self.positions} rows, got {block.shape}")
        with np.errstate(over="ignore"):
            self._fp.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.written += block.shape[0]

    def finish(
        self, *, tokens: ArrayLike | None = None, vocabulary: list[str] | tuple[str, ...] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the optional members (.npz only), close, and rename the part file to `path`."""
        if self.written != self.positions:
            raise ValueError(f"rows: {self.written} written, {self.positions} announced")
        extras = {
            "tokens": None if tokens is None else np.asarray(tokens, dtype=np.int64),
            "vocab": None if vocabulary is None else np.asarray([str(w) for w in vocabulary], dtype=np.str_),
            "meta": None if meta is None else np.asarray(json.dumps(dict(meta), sort_keys=True), dtype=np.str_),
        }
        if self._zip is None and any(a is not None for a in extras.values()):
            raise ValueError(f"{self.path}: a .npy holds only the rows; write .npz for tokens, vocab or meta")
        self._fp.close()
        if self._zip is not None:
            for name, array in extras.items():
                if array is not None:
                    with self._zip.open(f"{name}.npy", "w", force_zip64=True) as fm:
                        np.lib.format.write_array(fm, array, allow_pickle=False)
            self._zip.close()
        os.replace(self._part, self.path)
        return self.path

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:  # abort: close and remove the part file
            self._fp.close()
            if self._zip is not None:
                self._zip.close()
            self._part.unlink(missing_ok=True)
