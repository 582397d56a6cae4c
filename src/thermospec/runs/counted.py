"""What the modes that write their own JSONL and count their own steps share (`--order N`, `--trace`)."""

from __future__ import annotations

from pathlib import Path

from thermospec.runs.prepare import PreparedRun
from thermospec.runs.storage import METRICS_FILE, RecordFile

__all__ = ["CountedMode"]


class CountedMode:
    """A mode's records file (``m1_metrics.jsonl`` with ``jsonl`` telemetry, else none) and its step count."""

    def __init__(self, run: PreparedRun, run_dir: Path | None, telemetry: str) -> None:
        self.run, self.telemetry = run, telemetry
        self._file = RecordFile(run_dir / METRICS_FILE) if telemetry == "jsonl" and run_dir is not None else None
        self.steps = self.accepted = 0

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
