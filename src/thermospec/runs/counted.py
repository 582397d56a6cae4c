"""What the modes that write their own JSONL and count their own steps share (`--order N`, `--trace`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.chunks import ChainChunk
from thermospec.engine.pairs import PairCounts
from thermospec.runs.batch_run import chain_dir
from thermospec.runs.losses import Visits, visits_of
from thermospec.runs.prepare import PreparedRun
from thermospec.runs.storage import METRICS_FILE, RecordFile

__all__ = ["CountedMode"]


class CountedMode:
    """A mode's records and counts over V tokens, for one chain or `chains` in lock step.

    One chain: ``m1_metrics.jsonl`` in `run_dir` with ``jsonl`` telemetry (else none; `run_dir` None runs
    in memory).  B chains: ``chain_<b>/m1_metrics.jsonl`` (``jsonl``), each chain's own counts
    (`per_chain`, for its ``chain_<b>/summary.json``), and this mode's counts pooling every chain.
    """

    def __init__(self, run: PreparedRun, run_dir: Path | None, telemetry: str, V: int, chains: int = 1) -> None:
        if chains < 1 or (chains > 1 and run_dir is None):
            raise ValueError(f"chains must be >= 1 (B > 1 writes into a run folder), got {chains}")
        self.run, self.telemetry, self.chains, self.run_dir = run, telemetry, chains, run_dir
        single = telemetry == "jsonl" and run_dir is not None and chains == 1
        self._file = RecordFile(run_dir / METRICS_FILE) if single and run_dir is not None else None
        self.steps = self.accepted = 0
        self.emitted_counts: NDArray[np.int64] = np.zeros(V, dtype=np.int64)
        self.pairs = PairCounts(V)
        self.per_chain: list[CountedMode] = []
        self._chain_files: list[RecordFile] = []
        if chains > 1 and run_dir is not None:
            self.per_chain = [CountedMode(run, None, telemetry, V) for _ in range(chains)]
            for b in range(chains if telemetry != "none" else 0):
                chain_dir(run_dir, b).mkdir()
                if telemetry == "jsonl":
                    self._chain_files.append(RecordFile(chain_dir(run_dir, b) / METRICS_FILE))

    def write_and_count(self, chunks: Sequence[ChainChunk], lines: Callable[[ChainChunk], str],
                        keys: Callable[[ChainChunk], NDArray[np.int64]]) -> int:
        """Write each chain's chunk (`lines` formats it) and count it by its `keys`; the steps added."""
        if self._file is not None:
            self._file.write(lines(chunks[0]))
        for part, file in zip(chunks, self._chain_files, strict=False):
            file.write(lines(part))
        for part, mine in zip(chunks, self.per_chain, strict=False):
            mine.count(part, keys(part))
        return sum(self.count(part, keys(part)) for part in chunks)

    def count(self, chunk: ChainChunk, contexts: NDArray[np.int64]) -> int:
        """Add a chunk's steps, acceptances, emitted tokens and (context, token) pairs; its length."""
        self.steps += len(chunk)
        self.accepted += int(np.count_nonzero(chunk.accepted))
        self.emitted_counts += np.bincount(chunk.emitted, minlength=self.emitted_counts.shape[0])
        self.pairs.add(contexts, chunk.emitted)
        return len(chunk)

    def close(self) -> str | None:
        """Close the records files; the single chain's SHA-256 (None without telemetry or with B chains)."""
        for file in self._chain_files:
            file.close()
        if self._file is None:
            return None
        self._file.close()
        return self._file.hexdigest()

    def tokens(self) -> int:
        """Steps recorded so far."""
        return self.steps

    def key_visits(self) -> Visits:
        """The keys the steps were counted by (every chain's) and how often."""
        context, _, count = self.pairs.pairs()
        visits = np.bincount(context, weights=count) if context.size else np.zeros(0)
        return visits_of(visits)

    def complete(self) -> bool:
        """Whether every asked-for step was run, in every chain."""
        return self.steps >= self.run.config.steps * self.chains
