"""``run --tsu thrml``: the per-step reference loop with THRML drawing the drafts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from thermospec import __version__
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import run_chain_reference
from thermospec.engine.tally import RunTally
from thermospec.runs.executor import METRICS_FILE, SUMMARY_FILE, write_json_atomic
from thermospec.runs.prepare import target_description
from thermospec.runs.summary import summarise_run
from thermospec.runs.telemetry import JsonlWriter
from thermospec.tsu.thrml import node_dtype_name

__all__ = ["execute_thrml_run"]


def execute_thrml_run(run: Any, run_dir: Path) -> dict[str, Any]:
    """An M1 run whose draws come from THRML: the per-step loop, the M1 JSONL and summary.

    Parameters
    ----------
    run : thermospec.runs.PreparedRun
        Prepared with ``tsu="thrml"`` (its proposer is a `ThrmlProposer`).
    run_dir : Path
    """

    config, target = run.config, run.target
    started = time.perf_counter()
    rng = random_stream(config.seed, Stream.CHAIN)
    chunk = run_chain_reference(target.row, target.pi, run.proposer.draft, config.steps, rng)
    with (run_dir / METRICS_FILE).open("w", encoding="utf-8", newline="\n") as out:
        JsonlWriter(out).write(chunk, run.proposer.draft)
    tally = RunTally(target.V)
    tally.update(chunk)
    stats = summarise_run(tally, run.proposer.draft, target.pi)
    elapsed = time.perf_counter() - started
    summary: dict[str, Any] = {
        **stats,
        "elapsed_s": elapsed,
        "tokens_per_s": config.steps / elapsed,
        "config": {**config.as_dict(), "K_used": run.K_used},
        "target": target_description(run),
        "tsu_backend": {"name": "thrml", "node_dtype": node_dtype_name(target.V),
                        "nodes_per_call": run.proposer.sampler.nodes},
        "thermospec_version": __version__,
    }
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    return summary
