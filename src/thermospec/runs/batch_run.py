"""``run --chains B``: B chains' telemetry, per-chain and pooled summaries (the engine is `engine.batch`).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from thermospec.engine.batch import run_batch
from thermospec.engine.tally import BatchTally
from thermospec.runs.executor import METRICS_FILE, SUMMARY_FILE, software_versions, write_json_atomic
from thermospec.runs.interrupts import interruption_guard, signal_name
from thermospec.runs.prepare import PreparedRun, sparse_rows, target_description
from thermospec.runs.summary import summarise_run
from thermospec.runs.telemetry import PARQUET_FILE, JsonlWriter, ParquetWriter, TelemetryFormat

__all__ = ["chain_dir", "execute_batch"]




def chain_dir(run_dir: Path, b: int) -> Path:
    """Folder of chain b's telemetry and summary."""
    return run_dir / f"chain_{b:04d}"


def execute_batch(
    run: PreparedRun,
    run_dir: Path,
    chains: int,
    telemetry: TelemetryFormat = "jsonl",
    threads: int | None = None,
) -> dict[str, Any]:
    """Run `chains` chains of ``run.config.steps`` steps each; write telemetry and summaries.

    Files: with ``--telemetry jsonl``, ``chain_<b>/m1_metrics.jsonl`` and
    ``chain_<b>/summary.json`` per chain (chain 0's JSONL is byte for byte the
    single-chain run's); with ``parquet``, one ``m1_metrics.parquet`` with a
    leading ``chain`` column, and per-chain summaries; with ``none``, only the
    batch summary.  ``summary.json`` holds the pooled statistics of all chains
    (χ² of the pooled emitted counts against ``B N pi``), the spread of the
    per-chain acceptance, and the throughput.

    Returns
    -------
    dict
        The batch summary, as written.
    """

    config, target = run.config, run.target
    drafts = run.proposer.draft
    started = time.perf_counter()
    tally = BatchTally(chains, target.V, track_transitions=True, per_chain=telemetry != "none")
    formatter = JsonlWriter(io.StringIO())
    parquet: ParquetWriter | None = None
    if telemetry != "none":
        for b in range(chains):
            chain_dir(run_dir, b).mkdir()
    if telemetry == "jsonl":
        for b in range(chains):
            (chain_dir(run_dir, b) / METRICS_FILE).touch()
    elif telemetry == "parquet":
        parquet = ParquetWriter(run_dir / PARQUET_FILE, chain_column=True)
    # A signal only stops the loop once every chain's records of the chunk in hand are written.
    with interruption_guard() as stop:
        try:
            # The writers below keep no reference to a chunk's arrays, so the chunks can share them.
            for chunk in run_batch(target.row, target.pi, drafts, config.steps, config.seed, chains, threads=threads,
                                   tally=tally, reuse_outputs=True, sparse=sparse_rows(run),
                                   record=telemetry != "none"):
                if telemetry == "jsonl":
                    for b in range(chains):
                        with (chain_dir(run_dir, b) / METRICS_FILE).open("a", encoding="utf-8", newline="\n") as out:
                            out.write(formatter.format(chunk.chain(b), drafts))
                elif parquet is not None:
                    for b in range(chains):
                        parquet.write(chunk.chain(b), drafts, chain=b)
                if stop.requested:
                    break
        finally:
            if parquet is not None:
                parquet.close()
    interrupted = {
        "interrupted": stop.signum is not None,
        "interrupted_by": signal_name(stop.signum) if stop.signum is not None else None,
        "versions": software_versions(),
    }
    if tally.steps == 0:  # stopped before the first chunk: nothing to aggregate
        empty = {"steps": 0, "chains": chains, "config": {**config.as_dict(), "K_used": run.K_used, "chains": chains},
                 "target": target_description(run), "telemetry": telemetry, **interrupted}
        write_json_atomic(run_dir / SUMMARY_FILE, empty)
        return empty
    engine_elapsed = time.perf_counter() - started
    if telemetry != "none":
        for b in range(chains):
            chain_summary = summarise_run(tally.chain(b), drafts, target.pi)
            chain_summary["chain"] = b
            write_json_atomic(chain_dir(run_dir, b) / SUMMARY_FILE, chain_summary)
    pooled = summarise_run(tally.pooled(), drafts, target.pi, row=target.row)
    rates = tally.accepted / tally.steps
    elapsed = time.perf_counter() - started
    summary: dict[str, Any] = {
        **pooled,
        "chains": chains,
        "steps_per_chain": tally.steps,
        "chain_accept_rate_min": float(rates.min()),
        "chain_accept_rate_mean": float(rates.mean()),
        "chain_accept_rate_max": float(rates.max()),
        "elapsed_s": elapsed,
        "tokens_per_s": tally.steps * chains / engine_elapsed if engine_elapsed > 0 else None,
        "config": {**config.as_dict(), "K_used": run.K_used, "chains": chains},
        "target": target_description(run),
        "telemetry": telemetry,
        "streams": "chain 0: random_stream(seed, CHAIN) (the single-chain run); chain b: random_stream(seed, CHAIN, b)",
        **interrupted,
    }
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    return summary
