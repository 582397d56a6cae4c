"""``run --tsu thrml``: the per-step reference loop with THRML drawing the drafts.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import run_chain_reference
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.tally import RunTally
from thermospec.runs.prepare import PreparedRun
from thermospec.runs.storage import METRICS_FILE
from thermospec.runs.summary import summarise_run
from thermospec.runs.telemetry import JsonlWriter
from thermospec.tsu.thrml import ThrmlProposer, node_dtype_name

__all__ = ["ThrmlMode"]


class ThrmlMode:
    """``run --tsu thrml``: an M1 run whose draws come from THRML, on the per-step reference loop, in one chunk."""

    telemetry = "jsonl"

    def __init__(self, run: PreparedRun, run_dir: Path) -> None:
        self.run = run
        self.tally = RunTally(run.target.V)
        self._digest = hashlib.sha256()
        self._out = (run_dir / METRICS_FILE).open("w", encoding="utf-8", newline="\n")

    def chunks(self) -> Iterator[ChainChunk]:
        config, target = self.run.config, self.run.target
        rng = random_stream(config.seed, Stream.CHAIN)
        return iter([run_chain_reference(target.row, target.pi, self.run.proposer.draft, config.steps, rng)])

    def record(self, chunk: ChainChunk) -> int:
        text = JsonlWriter(io.StringIO()).format(chunk, self.run.proposer.draft)
        self._out.write(text)
        self._digest.update(text.encode("utf-8"))
        self.tally.update(chunk)
        return len(chunk)

    def close(self) -> str | None:
        self._out.close()
        return self._digest.hexdigest()

    def tokens(self) -> int:
        return self.tally.steps

    def complete(self) -> bool:
        return self.tally.steps >= self.run.config.steps

    def statistics(self) -> dict[str, Any]:
        return summarise_run(self.tally, self.run.proposer.draft, self.run.target.pi)

    def extras(self) -> dict[str, Any]:
        proposer = self.run.proposer
        assert isinstance(proposer, ThrmlProposer), "ThrmlMode needs a run prepared with tsu='thrml'"
        return {"tsu_backend": {"name": "thrml", "node_dtype": node_dtype_name(self.run.target.V),
                                "nodes_per_call": proposer.sampler.nodes}}
