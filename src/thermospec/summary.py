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
from thermospec.statistics import Chi2Result, chi2_sf, pooled_chi2

__all__ = [
    "ACCEPT_OVERLAP_TOLERANCE",
    "PSI_BYTES_LIMIT",
    "TRANSITION_MAX_V",
    "RunTally",
    "summarise_run",
    "transition_chi2",
]

ACCEPT_OVERLAP_TOLERANCE = 0.03
PSI_BYTES_LIMIT = 1024


TRANSITION_MAX_V = 1024


@dataclass
class RunTally:
    """Running counts of a chain, updated chunk by chunk in constant memory.

    With ``track_transitions`` (and V <= 1024, so the V x V counts stay small),
    the counts of every (context, emitted token) pair are kept too, for the
    transition χ² of `summarise_run`.
    """

    vocab_size: int
    track_transitions: bool = False
    steps: int = 0
    accepted: int = 0
    context_counts: NDArray[np.int64] = field(init=False)
    emitted_counts: NDArray[np.int64] = field(init=False)
    transitions: NDArray[np.int64] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.context_counts = np.zeros(self.vocab_size, dtype=np.int64)
        self.emitted_counts = np.zeros(self.vocab_size, dtype=np.int64)
        if self.track_transitions and self.vocab_size <= TRANSITION_MAX_V:
            self.transitions = np.zeros(self.vocab_size * self.vocab_size, dtype=np.int64)

    def update(self, chunk: ChainChunk) -> None:
        """Add one chunk of steps."""
        self.steps += len(chunk)
        self.accepted += int(np.count_nonzero(chunk.accepted))
        self.context_counts += np.bincount(chunk.prev, minlength=self.vocab_size)
        self.emitted_counts += np.bincount(chunk.emitted, minlength=self.vocab_size)
        if self.transitions is not None:
            pairs = chunk.prev * self.vocab_size + chunk.emitted
            self.transitions += np.bincount(pairs, minlength=self.transitions.shape[0])


def transition_chi2(
    transitions: NDArray[np.int64], vocab_size: int, row: Callable[[int], NDArray[np.float64]]
) -> Chi2Result:
    """χ² of each visited context's emitted counts against ``n_x p(. | x)``, summed over contexts.

    Given its context, a step's emitted token is a fresh draw from ``p(. | x)``
    whatever came before (the Markov property), so, unlike the marginal χ²
    against ``N pi``, this test is calibrated for a correlated chain
    (Anderson and Goodman 1957): the per-context statistics (pooled per SPEC §6)
    and their degrees of freedom add up.
    """
    counts = transitions.reshape(vocab_size, vocab_size).astype(np.float64)
    stat_terms: list[float] = []
    dof = 0
    for x in np.flatnonzero(counts.sum(axis=1)).tolist():
        n_x = counts[x].sum()
        result = pooled_chi2(counts[x], n_x * row(x))
        stat_terms.append(result.stat)
        dof += result.dof
    stat = math.fsum(stat_terms)
    return Chi2Result(stat=stat, dof=dof, p_value=chi2_sf(stat, dof) if dof else 1.0, bins=dof + len(stat_terms))


def _step_mean(counts: NDArray[np.int64], values: dict[int, float], steps: int) -> float:
    return math.fsum(int(counts[x]) * v for x, v in values.items()) / steps


def summarise_run(
    tally: RunTally,
    drafts: Callable[[int], ContextDraft],
    pi: NDArray[np.float64],
    row: Callable[[int], NDArray[np.float64]] | None = None,
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
    row : callable, optional
        The target rows; with a tally that tracked transitions, the summary also
        gets the calibrated `transition_chi2` (null otherwise).
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
    transition = (
        transition_chi2(tally.transitions, tally.vocab_size, row)
        if tally.transitions is not None and row is not None
        else None
    )
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
        "transition_chi2_stat": None if transition is None else transition.stat,
        "transition_chi2_dof": None if transition is None else transition.dof,
        "transition_p_value": None if transition is None else transition.p_value,
        "psi_bytes_max": psi_bytes_max,
        "K_sent_min": min(k_sent),
        "K_sent_max": max(k_sent),
        "contexts_visited": len(visited),
        "checklist": {
            "accept_overlap_within_0.03": abs(accept_rate - mean_overlap) < ACCEPT_OVERLAP_TOLERANCE,
            "psi_bytes_le_1024": psi_bytes_max <= PSI_BYTES_LIMIT,
        },
    }
