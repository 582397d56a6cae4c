"""Aggregates of a run (``summary.json``, SPEC §6) and the guide's checklist bounds.

Every aggregate is recomputable from the JSONL: the per-step metrics are those
of the step's context, so the run keeps only per-context step counts and sums
each metric once per context with `math.fsum` (no drift over long runs).
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec import __version__
from thermospec.core.statistics import Chi2Result, context_chi2, pooled_chi2
from thermospec.engine.tally import RunTally
from thermospec.tsu.drafts import ContextDraft

__all__ = [
    "ACCEPT_OVERLAP_TOLERANCE",
    "PSI_BYTES_LIMIT",
    "software_versions",
    "summarise_run",
    "transition_chi2",
]


ACCEPT_OVERLAP_TOLERANCE = 0.03
PSI_BYTES_LIMIT = 1024


def transition_chi2(
    transitions: NDArray[np.int64], vocab_size: int, row: Callable[[int], NDArray[np.float64]]
) -> Chi2Result:
    """χ² of a tally's transition counts (``V x V``, flat), summed over the visited contexts (`context_chi2`)."""
    counts = transitions.reshape(vocab_size, vocab_size).astype(np.float64)
    return context_chi2(((x, counts[x]) for x in np.flatnonzero(counts.sum(axis=1)).tolist()), row)


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


def software_versions() -> dict[str, str]:
    """Versions of thermospec, Python, NumPy and SciPy, and the platform, for the summary."""
    from importlib.metadata import PackageNotFoundError, version  # here: `check` and imports do not pay for it

    try:
        scipy_version = version("scipy")  # metadata only: no need to import SciPy here
    except PackageNotFoundError:
        scipy_version = "not installed"
    return {
        "thermospec": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy_version,
        "platform": platform.platform(),
    }
