"""What the modes that write their own JSONL and count their own steps share (`--order N`, `--trace`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.chunks import ChainChunk
from thermospec.engine.pairs import PairCounts
from thermospec.runs.prepare import PreparedRun
from thermospec.runs.storage import METRICS_FILE, RecordFile

__all__ = ["CountedMode"]


class CountedMode:
    """A mode's records file (``m1_metrics.jsonl`` with ``jsonl`` telemetry, else none) and its counts over V tokens."""

    def __init__(self, run: PreparedRun, run_dir: Path | None, telemetry: str, V: int) -> None:
        self.run, self.telemetry = run, telemetry
        self._file = RecordFile(run_dir / METRICS_FILE) if telemetry == "jsonl" and run_dir is not None else None
        self.steps = self.accepted = 0
        self.emitted_counts: NDArray[np.int64] = np.zeros(V, dtype=np.int64)
        self.pairs = PairCounts(V)

    def count(self, chunk: ChainChunk, contexts: NDArray[np.int64]) -> int:
        """Add a chunk's steps, acceptances, emitted tokens and (context, token) pairs; its length."""
        self.steps += len(chunk)
        self.accepted += int(np.count_nonzero(chunk.accepted))
        self.emitted_counts += np.bincount(chunk.emitted, minlength=self.emitted_counts.shape[0])
        self.pairs.add(contexts, chunk.emitted)
        return len(chunk)

    def close(self) -> str | None:
        """Close the records file; its SHA-256 (None without telemetry)."""
        if self._file is None:
            return None
        self._file.close()
        return self._file.hexdigest()

    def tokens(self) -> int:
        """Steps recorded so far."""
        return self.steps

    def complete(self) -> bool:
        """Whether every asked-for step was run."""
        return self.steps >= self.run.config.steps
