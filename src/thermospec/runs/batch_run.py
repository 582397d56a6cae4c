"""``run --chains B``: B chains' telemetry, per-chain and pooled summaries (the engine is `engine.batch`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.batch import run_batch
from thermospec.engine.chain import run_chain_reference
from thermospec.engine.chunks import BatchChunk, ChainChunk
from thermospec.engine.tally import BatchTally, batch_of
from thermospec.runs.chain_tsus import reference_chains
from thermospec.runs.losses import Visits, visits_of
from thermospec.runs.prepare import PreparedRun, sparse_rows
from thermospec.runs.schema import M1
from thermospec.runs.storage import SUMMARY_FILE, chain_dir, write_json_atomic
from thermospec.runs.summary import summarise_run
from thermospec.runs.telemetry import ChainRecords, JsonlWriter, TelemetryFormat, step_arrays
from thermospec.tsu.drafts import DraftSource

__all__ = ["STREAMS", "BatchMode", "TokenChains", "chain_dir", "chain_spread", "chain_statistics"]

STREAMS = "chain 0: random_stream(seed, CHAIN) (the single-chain run); chain b: random_stream(seed, CHAIN, b)"
"""The summary's ``streams`` of B chains in lock step."""


def chain_spread(steps_per_chain: int, rates: NDArray[np.float64], mean: bool = True) -> dict[str, Any]:
    """The pooled summary's fields of B chains: their count, steps each, and the spread of their acceptance
    `rates` (min, `mean` if asked, max)."""
    return {"chains": int(rates.shape[0]), "steps_per_chain": steps_per_chain,
            "chain_accept_rate_min": float(rates.min()),
            **({"chain_accept_rate_mean": float(rates.mean())} if mean else {}),
            "chain_accept_rate_max": float(rates.max())}


def chain_statistics(tally: BatchTally, drafts: DraftSource, pi: NDArray[np.float64], run_dir: Path | None,
                     **extra: Any) -> dict[str, Any]:
    """The pooled summary's fields of B chains (`chain_spread`); with `run_dir`, each chain's own summary beside its
    records, ``chain_<b>/summary.json`` (its `summarise_run`, its ``chain`` and the `extra` fields)."""
    if run_dir is not None:
        for b in range(tally.chains):
            write_json_atomic(chain_dir(run_dir, b) / SUMMARY_FILE,
                              summarise_run(tally.chain(b), drafts, pi) | {"chain": b} | extra)
    return chain_spread(tally.steps, tally.accepted / tally.steps)


class TokenChains:
    """What the bigram chain's modes of B chains in lock step share (``--chains B``, ``--drafts N``): every
    chain's records (`runs.telemetry.ChainRecords`) and counts (a `BatchTally`, pooled on demand)."""

    run: PreparedRun
    chains: int
    tally: BatchTally
    records: ChainRecords[Any]

    def close(self) -> str | None:
        return self.records.close()

    def tokens(self) -> int:
        return self.tally.steps * self.chains

    def key_visits(self) -> Visits:
        """The contexts the verifier ran at (every chain's steps) and how often."""
        return visits_of(self.tally.pooled().context_counts if self.tally.steps else np.zeros(0, dtype=np.int64))

    def complete(self) -> bool:
        return self.tally.steps >= self.run.config.steps


class BatchMode(TokenChains):
    """``run --chains B``: `chains` chains of ``run.config.steps`` steps each, in lock step (`engine.batch`).

    Files: with ``--telemetry jsonl``, ``chain_<b>/m1_metrics.jsonl`` and
    ``chain_<b>/summary.json`` per chain (chain 0's JSONL is byte for byte the
    single-chain run's); with ``parquet``, one ``m1_metrics.parquet`` with a
    leading ``chain`` column, and per-chain summaries; with ``none``, only the
    batch summary.  ``summary.json`` holds the pooled statistics of all chains
    (χ² of the pooled emitted counts against ``B N pi``), the spread of the
    per-chain acceptance, and the throughput; its ``metrics_sha256`` is null
    (the records are spread over B files).

    A chunk is counted only once every chain's records of it are written: a
    failed write (a full disk) cuts every chain's file back to the same whole
    chunks, and the summaries cover exactly those; a Parquet file that cannot be
    finished is removed (`finish_parquet`).  Without telemetry the kernel counts
    as it steps.  Per-chain summaries carry ``interrupted`` like the batch's.

    A TSU whose draws are its own (``--tsu thrml``): each chain runs the per-step
    reference with its own TSUs (`runs.chain_tsus`), in one chunk, chain 0 being
    the single-chain run token for token.
    """

    def __init__(self, run: PreparedRun, run_dir: Path, chains: int, telemetry: TelemetryFormat,
                 threads: int | None = None) -> None:
        self.run, self.run_dir, self.chains, self.telemetry = run, run_dir, chains, telemetry
        self.threads = threads
        self.tally = BatchTally(chains, run.target.V, track_transitions=True, per_chain=telemetry != "none")
        self._formatter = JsonlWriter(io.StringIO())
        self.records: ChainRecords[ChainChunk] = ChainRecords(run_dir, telemetry, chains, M1)

    @property
    def counted_by_engine(self) -> bool:
        """Whether the kernel counts as it steps (no telemetry: no write can fail after it; tables of F(ψ))."""
        return self.telemetry == "none" and self.run.proposer.samples_payload

    def chunks(self) -> Iterator[BatchChunk]:
        target, config = self.run.target, self.run.config
        if not self.run.proposer.samples_payload:  # THRML: each chain's draws its own TSUs'
            return iter([batch_of(reference_chains(
                self.run, self.chains,
                lambda drafts, rng: run_chain_reference(target.row, target.pi, drafts, config.steps, rng)))])
        # The writers keep no reference to a chunk's arrays, so the chunks can share them.
        return run_batch(target.row, target.pi, self.run.proposer.draft, config.steps, config.seed, self.chains,
                         threads=self.threads, tally=self.tally if self.counted_by_engine else None,
                         reuse_outputs=True, sparse=sparse_rows(self.run), record=self.telemetry != "none")

    def record(self, chunk: BatchChunk) -> int:
        drafts = self.run.proposer.draft
        if self.telemetry != "none":
            self.records.write([chunk.chain(b) for b in range(self.chains)],
                               lambda part: self._formatter.format(part, drafts), step_arrays, lambda part: part.prev,
                               drafts)
        if not self.counted_by_engine:
            self.tally.update(chunk)
        return len(chunk) * self.chains

    def statistics(self) -> dict[str, Any]:
        if self.tally.steps == 0:  # stopped before the first chunk: nothing to aggregate
            return {"steps": 0, "chains": self.chains}
        drafts, target = self.run.proposer.draft, self.run.target
        pooled = summarise_run(self.tally.pooled(), drafts, target.pi, row=target.row)
        beside = self.run_dir if self.telemetry != "none" else None  # each chain's summary beside its records
        return pooled | chain_statistics(self.tally, drafts, target.pi, beside, interrupted=not self.complete())

    def extras(self) -> dict[str, Any]:
        backend = self.run.proposer.backend
        return {"streams": STREAMS, **({"tsu_backend": backend} if backend is not None else {})}
