"""Aggregates of a run (``summary.json``, SPEC §6) and the guide's checklist bounds.

Every aggregate is recomputable from the JSONL: the per-step metrics are those
of the step's context, so the run keeps only per-context step counts and sums
each metric once per context with `math.fsum` (no drift over long runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.engine import ChainChunk
from thermospec.proposer import ContextDraft
from thermospec.statistics import pooled_chi2

__all__ = [
    "ACCEPT_OVERLAP_TOLERANCE",
    "PSI_BYTES_LIMIT",
    "RunTally",
    "summarise_run",
]

ACCEPT_OVERLAP_TOLERANCE = 0.03
PSI_BYTES_LIMIT = 1024


@dataclass
class RunTally:
    """Running counts of a chain, updated chunk by chunk in constant memory."""

    vocab_size: int
    steps: int = 0
    accepted: int = 0
    context_counts: NDArray[np.int64] = field(init=False)
    emitted_counts: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.context_counts = np.zeros(self.vocab_size, dtype=np.int64)
        self.emitted_counts = np.zeros(self.vocab_size, dtype=np.int64)

    def update(self, chunk: ChainChunk) -> None:
        """Add one chunk of steps."""
        self.steps += len(chunk)
        self.accepted += int(np.count_nonzero(chunk.accepted))
        self.context_counts += np.bincount(chunk.prev, minlength=self.vocab_size)
        self.emitted_counts += np.bincount(chunk.emitted, minlength=self.vocab_size)


def _step_mean(counts: NDArray[np.int64], values: dict[int, float], steps: int) -> float:
    return math.fsum(int(counts[x]) * v for x, v in values.items()) / steps


def summarise_run(
    tally: RunTally, drafts: Callable[[int], ContextDraft], pi: NDArray[np.float64]
) -> dict[str, Any]:
    """The run's statistics: acceptance, overlap, CE gap, χ² vs ``N pi``, ψ sizes.

    Parameters
    ----------
    tally : RunTally
        Counts of the steps done.
    drafts : callable
        The (cached) draft of each visited context.
    pi : ndarray of float64, shape (V,)
        Stationary distribution the emitted tokens are tested against.
    """
    n = tally.steps
    visited = np.flatnonzero(tally.context_counts).tolist()
    by_context = {x: drafts(x) for x in visited}
    accept_rate = tally.accepted / n
    mean_overlap = _step_mean(tally.context_counts, {x: d.overlap_mass for x, d in by_context.items()}, n)
    infinite = [x for x, d in by_context.items() if not math.isfinite(d.ce_gap_nats)]
    infinite_steps = int(sum(int(tally.context_counts[x]) for x in infinite))
    mean_ce_gap = (
        None
        if infinite
        else _step_mean(tally.context_counts, {x: d.ce_gap_nats for x, d in by_context.items()}, n)
    )
    chi2 = pooled_chi2(tally.emitted_counts.astype(np.float64), n * pi)
    psi_bytes_max = max(d.psi_bytes for d in by_context.values())
    k_sent = [d.payload.K for d in by_context.values()]
    return {
        "steps": n,
        "accept_rate": accept_rate,
        "mean_overlap": mean_overlap,
        "accept_overlap_gap": abs(accept_rate - mean_overlap),
        "mean_ce_gap": mean_ce_gap,
        "ce_gap_infinite_steps": infinite_steps,
        "chi2_stat": chi2.stat,
        "chi2_dof": chi2.dof,
        "p_value": chi2.p_value,
        "psi_bytes_max": psi_bytes_max,
        "K_sent_min": min(k_sent),
        "K_sent_max": max(k_sent),
        "contexts_visited": len(visited),
        "checklist": {
            "accept_overlap_within_0.03": abs(accept_rate - mean_overlap) < ACCEPT_OVERLAP_TOLERANCE,
            "psi_bytes_le_1024": psi_bytes_max <= PSI_BYTES_LIMIT,
        },
    }
