"""``run --gamma G``: a block run's tally, summary and telemetry (the engine is `engine.blocks`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from thermospec import __version__
from thermospec.core.expectation import EXPECTATION_MAX_V, BlockExpectation, block_expectation, modelled_speedup
from thermospec.core.statistics import pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.blocks import BLOCKS_FILE, run_blocks, run_blocks_reference
from thermospec.engine.chain import dense_matrices
from thermospec.engine.chunks import BlockChunk
from thermospec.engine.tally import BlockTally
from thermospec.runs.executor import SUMMARY_FILE, software_versions, write_json_atomic
from thermospec.runs.interrupts import interruption_guard, signal_name
from thermospec.runs.prepare import sparse_rows, target_description

__all__ = ["summarise_blocks"]






def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: an undefined standard error (a single block) is null."""
    return value if math.isfinite(value) else None


def length_se_floor(expected: float, gamma: int, blocks: int) -> float:
    """A floor for the standard error of a mean accepted length, from the exact expectation.

    An accepted length lies in [0, γ], so its variance is at most
    ``(γ - μ) μ`` (Bhatia and Davis 2000).  When nearly every draft is accepted a
    run may show no variation at all and its batch-means SE is 0; the test then
    uses this bound instead of declaring any deviation significant.
    """
    return math.sqrt(max(gamma - expected, 0.0) * max(expected, 0.0) / max(blocks, 1))


def batch_means_se(values: NDArray[np.float64], batches: int = 50) -> float:
    """Standard error of a mean of correlated values by non-overlapping batch means."""
    n = values.shape[0]
    if n < 2 * batches:
        return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    size = n // batches
    means = values[: size * batches].reshape(batches, size).mean(axis=1)
    return float(np.std(means, ddof=1) / math.sqrt(batches))


def summarise_blocks(
    tally: BlockTally,
    pi: NDArray[np.float64],
    cost_ratio: float,
    expectation: BlockExpectation | None,
) -> dict[str, Any]:
    """The block run's statistics (all recomputable from the block JSONL but the expectation)."""
    g = tally.gamma
    lengths = tally.accepted_lengths()
    mean_len = float(lengths.mean())
    reached = np.cumsum(tally.length_counts[::-1])[::-1]  # reached[i] = #blocks with L >= i
    per_position = [
        float(reached[i + 1] / reached[i]) if reached[i] > 0 else None for i in range(g)
    ]
    tokens_per_call = tally.tokens / tally.blocks
    chi2 = pooled_chi2(tally.emitted_counts.astype(np.float64), tally.tokens * pi)
    summary: dict[str, Any] = {
        "gamma": g,
        "cost_ratio": cost_ratio,
        "blocks": tally.blocks,
        "tokens_emitted": tally.tokens,
        "mean_accepted_length": mean_len,
        "mean_accepted_length_se": _finite_or_none(batch_means_se(lengths)),
        "tokens_per_target_call": tokens_per_call,
        "per_position_accept_rate": per_position,
        "speedup": modelled_speedup(tokens_per_call, g, cost_ratio),
        "chi2_stat": chi2.stat,
        "chi2_dof": chi2.dof,
        "p_value": chi2.p_value,
    }
    if expectation is None:
        summary["expected"] = None
    else:
        summary["expected"] = {
            "accepted_length": expectation.accepted_length,
            "tokens_per_target_call": expectation.tokens_per_target_call,
            "per_position_accept_rate": expectation.per_position_accept,
            "speedup": modelled_speedup(expectation.tokens_per_target_call, g, cost_ratio),
            "iid_formula_tokens_per_target_call": expectation.iid_tokens_per_target_call,
            "method": "stationary law of block starts, products of min(p, q) along the drafted chain",
        }
    return summary


def block_lines(chunk: BlockChunk) -> str:
    """The block JSONL records of a chunk.

    Fields: ``block, first_step, context, drafted, accepted_length, emitted``.
    """
    lines = []
    for i, (b, s, x, ys, n) in enumerate(
        zip(
            range(chunk.start, chunk.start + len(chunk)),
            chunk.first_step.tolist(),
            chunk.context.tolist(),
            chunk.drafted.tolist(),
            chunk.accepted_length.tolist(),
            strict=True,
        )
    ):
        emitted = [*ys[:n], int(chunk.final[i])]
        lines.append(
            f'{{"block":{b},"first_step":{s},"context":{x},"drafted":{json.dumps(ys, separators=(",", ":"))},'
            f'"accepted_length":{n},"emitted":{json.dumps(emitted, separators=(",", ":"))}}}\n'
        )
    return "".join(lines)


def execute_block_run(
    run: Any,
    run_dir: Path,
    gamma: int,
    cost_ratio: float,
    on_chunk: Callable[[BlockChunk], None] | None = None,
) -> dict[str, Any]:
    """Run γ-token blocks for a prepared run; write ``m1_blocks.jsonl`` and ``summary.json``.

    Parameters
    ----------
    run : thermospec.runs.PreparedRun
    run_dir : Path
    gamma, cost_ratio
        Drafts per block and TSU-draft / target-call time ratio.
    """

    config, target = run.config, run.target
    started = time.perf_counter()
    tally = BlockTally(target.V, gamma)
    rng = random_stream(config.seed, Stream.CHAIN)
    chunks: Iterable[BlockChunk]
    if getattr(config, "tsu", "sim") == "thrml":  # the TSU must draw every token itself: per-block loop
        chunks = [run_blocks_reference(target.row, target.pi, run.proposer.draft, gamma, config.steps, rng)]
    else:
        chunks = run_blocks(target.row, target.pi, run.proposer.draft, gamma, config.steps, rng,
                            sparse=sparse_rows(run))
    digest = hashlib.sha256()
    out: IO[str]
    metrics = run_dir / BLOCKS_FILE
    # A signal only stops the loop between whole chunks of blocks.
    with interruption_guard() as stop, metrics.open("w", encoding="utf-8", newline="\n", buffering=1 << 20) as out:
        for chunk in chunks:
            text = block_lines(chunk)
            out.write(text)
            digest.update(text.encode("utf-8"))
            tally.update(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
            if stop.requested:
                break
    interrupted = {
        "interrupted": stop.signum is not None,
        "interrupted_by": signal_name(stop.signum) if stop.signum is not None else None,
        "versions": software_versions(),
    }
    if tally.blocks == 0:  # stopped before the first chunk: nothing to aggregate
        empty = {"blocks": 0, "tokens_emitted": 0, "steps": 0, "config": {**config.as_dict(), "K_used": run.K_used},
                 "target": target_description(run), "telemetry": BLOCKS_FILE,
                 "metrics_sha256": digest.hexdigest(), **interrupted}
        write_json_atomic(run_dir / SUMMARY_FILE, empty)
        return empty
    expectation = (
        block_expectation(*dense_matrices(target.row, run.proposer.draft, target.V), target.pi, gamma)
        if target.V <= EXPECTATION_MAX_V
        else None
    )
    stats = summarise_blocks(tally, target.pi, cost_ratio, expectation)
    visited = np.flatnonzero(tally.draft_context_counts).tolist()
    elapsed = time.perf_counter() - started
    summary: dict[str, Any] = {
        **stats,
        "steps": tally.tokens,  # tokens emitted: what a replay of an interrupted run asks for again
        "psi_bytes_max": max(run.proposer.draft(x).psi_bytes for x in visited),
        "elapsed_s": elapsed,
        "tokens_per_s": tally.tokens / elapsed,
        "config": {**config.as_dict(), "K_used": run.K_used},
        "target": target_description(run),
        "telemetry": BLOCKS_FILE,
        "metrics_sha256": digest.hexdigest(),
        "thermospec_version": __version__,
        **interrupted,
    }
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    return summary
