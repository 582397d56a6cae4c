"""The guide's success checklist as executable checks (SPEC §7).

1. Fixed-context χ²: the 4 most probable contexts under pi, each with n
   independent draft-and-correct steps; χ² of the emitted counts against
   ``n p(. | c)`` (pooled per SPEC §6); pass if at least 3 of 4 have p > 0.05.
2. ``|accept_rate - mean_overlap| < 0.03`` on a run of the configured length.
3. ``psi_bytes <= 1024`` for every K <= 128 at this V.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thermospec.config import Stream, random_stream
from thermospec.engine import fixed_context_draws, run_chain
from thermospec.payload import craft_payload, encode_payload
from thermospec.runs import PreparedRun
from thermospec.statistics import pooled_chi2
from thermospec.summary import (
    ACCEPT_OVERLAP_TOLERANCE,
    PSI_BYTES_LIMIT,
    RunTally,
    summarise_run,
)

__all__ = [
    "CheckResult",
    "accept_overlap_check",
    "fixed_context_check",
    "psi_size_check",
    "run_checks",
]

FIXED_CONTEXTS = 4
FIXED_CONTEXTS_TO_PASS = 3
SIGNIFICANCE = 0.05
MAX_CHECKED_K = 128
DEFAULT_CHECK_STEPS = 20_000


@dataclass(frozen=True)
class CheckResult:
    """One line of the checklist: its name, verdict and the numbers behind it."""

    name: str
    passed: bool
    detail: str


def fixed_context_check(run: PreparedRun, n: int) -> CheckResult:
    """Check 1: χ² of n fixed-context emissions against the target row, for 4 contexts."""
    target = run.target
    contexts = np.argsort(-target.pi, kind="stable")[:FIXED_CONTEXTS].tolist()
    p_values = []
    for i, x in enumerate(contexts):
        rng = random_stream(run.config.seed, Stream.CHECK, i)
        draws = fixed_context_draws(target.row(x), run.proposer.draft(x), n, rng)
        observed = np.bincount(draws.emitted, minlength=target.V).astype(np.float64)
        p_values.append(pooled_chi2(observed, n * target.row(x)).p_value)
    passing = sum(p > SIGNIFICANCE for p in p_values)
    shown = ", ".join(f"x={x}: p={p:.3f}" for x, p in zip(contexts, p_values, strict=True))
    return CheckResult(
        name=f"fixed-context χ² (n={n} per context)",
        passed=passing >= min(FIXED_CONTEXTS_TO_PASS, len(contexts)),
        detail=f"{passing}/{len(contexts)} with p > {SIGNIFICANCE} [{shown}]",
    )


def accept_overlap_check(run: PreparedRun) -> CheckResult:
    """Check 2: acceptance rate of a run against its mean overlap mass."""
    target, config = run.target, run.config
    tally = RunTally(target.V)
    rng = random_stream(config.seed, Stream.CHAIN)
    for chunk in run_chain(target.row, target.pi, run.proposer.draft, config.steps, rng):
        tally.update(chunk)
    stats = summarise_run(tally, run.proposer.draft, target.pi)
    gap = abs(stats["accept_rate"] - stats["mean_overlap"])
    return CheckResult(
        name=f"|accept - overlap| < {ACCEPT_OVERLAP_TOLERANCE} ({config.steps} steps)",
        passed=gap < ACCEPT_OVERLAP_TOLERANCE,
        detail=f"accept {stats['accept_rate']:.4f}, overlap {stats['mean_overlap']:.4f}, gap {gap:.4f}",
    )


def psi_size_check(run: PreparedRun) -> CheckResult:
    """Check 3: encoded ψ size for every K from 1 to 128 (clamped to V), on the likeliest context.

    The size depends on K and V only, so the payloads are crafted with auto-ε
    (a numeric ε valid at the run's K may be out of range at K = 1).
    """
    target, config = run.target, run.config
    x = int(np.argmax(target.pi))
    sizes = [
        len(encode_payload(craft_payload(target.row(x), k, config.tau, "auto")))
        for k in range(1, min(MAX_CHECKED_K, target.V) + 1)
    ]
    largest = max(sizes)
    return CheckResult(
        name=f"ψ payload ≤ {PSI_BYTES_LIMIT} bytes for K ≤ {MAX_CHECKED_K}",
        passed=largest <= PSI_BYTES_LIMIT,
        detail=f"largest {largest} bytes (K = {min(MAX_CHECKED_K, target.V)}, V = {target.V})",
    )


def run_checks(run: PreparedRun, check_steps: int = DEFAULT_CHECK_STEPS) -> list[CheckResult]:
    """All three checks of the guide's checklist, in its order."""
    return [fixed_context_check(run, check_steps), accept_overlap_check(run), psi_size_check(run)]
