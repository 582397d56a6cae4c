"""A run on disk: its folder, its telemetry stream and its summary.

Everything that can fail on the user's input (options, corpus, ε range, ψ
crafting) is done by `prepare_run` before anything is written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from thermospec import __version__
from thermospec.config import RunConfig, Stream, check_eps, load_target, random_stream
from thermospec.engine import ChainChunk, run_chain
from thermospec.proposer import Proposer
from thermospec.summary import RunTally, summarise_run
from thermospec.targets import BigramTarget
from thermospec.telemetry import JsonlWriter

__all__ = [
    "METRICS_FILE",
    "SUMMARY_FILE",
    "PreparedRun",
    "create_run_dir",
    "execute_run",
    "prepare_run",
    "write_json_atomic",
]

METRICS_FILE = "m1_metrics.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True, eq=False)
class PreparedRun:
    """A validated configuration with its target and proposer, ready to run."""

    config: RunConfig
    target: BigramTarget
    proposer: Proposer

    @property
    def K_used(self) -> int:
        """The K asked for, clamped to the vocabulary size."""
        return min(self.config.K, self.target.V)


def prepare_run(config: RunConfig) -> PreparedRun:
    """Load the target and craft ψ for every context; raise before anything is written.

    Raises
    ------
    thermospec.targets.CorpusError, thermospec.config.ConfigError, thermospec.payload.PayloadError
    """
    target = load_target(config)
    check_eps(config, target.V)
    proposer = Proposer(target.row, config.K, config.tau, config.eps)
    proposer.all_drafts(target.V)
    return PreparedRun(config=config, target=target, proposer=proposer)


def create_run_dir(runs_dir: str | Path) -> Path:
    """Create a fresh ``runs_dir/<UTC timestamp>`` folder, never reusing an existing one."""
    root = Path(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1, 10_000):
        candidate = root / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{root}: too many runs named {stamp}")


def write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    """Write JSON through a temporary file and a rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        json.dump(document, out, indent=2, allow_nan=False)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def target_description(run: PreparedRun) -> dict[str, Any]:
    """Where the target came from, for the summary."""
    target = run.target
    return {
        "source": target.source,
        "V": target.V,
        "corpus": run.config.corpus,
        "corpus_sha256": target.corpus_sha256,
        "vocabulary": None if target.vocabulary is None else "".join(target.vocabulary),
        "stationary": "unique" if target.stationary_unique
        else "not unique: long-run average from a uniform start",
    }


def execute_run(
    run: PreparedRun,
    run_dir: Path,
    on_chunk: Callable[[ChainChunk], None] | None = None,
) -> dict[str, Any]:
    """Run the chain, stream its telemetry to `run_dir` and write ``summary.json``.

    Returns
    -------
    dict
        The summary, as written.
    """
    config, target = run.config, run.target
    started = time.perf_counter()
    tally = RunTally(target.V)
    rng = random_stream(config.seed, Stream.CHAIN)
    with (run_dir / METRICS_FILE).open("w", encoding="utf-8", newline="\n", buffering=1 << 20) as out:
        writer = JsonlWriter(out)
        for chunk in run_chain(target.row, target.pi, run.proposer.draft, config.steps, rng):
            writer.write(chunk, run.proposer.draft)
            tally.update(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    stats = summarise_run(tally, run.proposer.draft, target.pi)
    elapsed = time.perf_counter() - started
    summary: dict[str, Any] = {
        "accept_rate": stats.pop("accept_rate"),
        "mean_overlap": stats.pop("mean_overlap"),
        "mean_ce_gap": stats.pop("mean_ce_gap"),
        "chi2_stat": stats.pop("chi2_stat"),
        "chi2_dof": stats.pop("chi2_dof"),
        "p_value": stats.pop("p_value"),
        **stats,
        "elapsed_s": elapsed,
        "tokens_per_s": config.steps / elapsed,
        "config": {**config.as_dict(), "K_used": run.K_used},
        "target": target_description(run),
        "thermospec_version": __version__,
    }
    checklist = summary.pop("checklist")
    summary["checklist"] = checklist
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    return summary
