"""The guide's success checklist as executable checks (SPEC §7).

1. Fixed-context χ²: the 4 most probable contexts under pi, each with n
   independent draft-and-correct steps; χ² of the emitted counts against
   ``n p(. | c)`` (pooled per SPEC §6); pass if at least 3 of 4 have p > 0.05.
2. ``|accept_rate - mean_overlap| < 0.03`` on a run of the configured length.
3. ``psi_bytes <= 1024`` for every K <= 128 at this V.

Beside the guide's checklist (which stays as written), a stronger test with a
stated significance level, reported separately:

4. Pooled TSU χ²: the `POOLED_CONTEXTS` most probable contexts under pi (on a
   trace the first positions, at order N > 2 the most frequent contexts), each
   with n drafts of its TSU; per context the drafts are binned into the
   `HEAD_BINS` most probable tokens of F(ψ) one by one, the other sent ids, and
   the tail (pooled per SPEC §6), and compared with ``n F(ψ)``, the distribution
   the TSU claims.  The statistics and degrees of freedom are summed over the
   contexts into one χ²; the TSU fails if its p-value is below
   `POOLED_SIGNIFICANCE` (0.001).  Coarse bins keep the degrees of freedom low,
   so a fault in the head or the tail of F(ψ) (a biased sampler, a stale ψ, a
   dropped tail, a drifting τ) is caught with far fewer draws than a
   full-resolution χ² needs; the guide's rule keeps the full resolution.  The
   detection power and false-alarm rate of both are measured by
   ``python -m scripts.detection_power`` (README, "Trust and fault detection").

Every draw of every check also goes through the host's consistency check of
the reported ``log q`` (`thermospec.engine.ReportVerifier`): a TSU that
misreports fails the check it was caught in, with the step and token named.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.core.statistics import Chi2Result, chi2_sf, pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import ReportError, fixed_context_draws, run_chain
from thermospec.engine.drafts import run_drafts
from thermospec.engine.tally import RunTally
from thermospec.runs.checklist import (
    DEFAULT_CHECK_STEPS,
    CheckResult,
    fixed_context_check,
    fixed_contexts_named,
    likeliest_contexts,
    psi_size_check,
    refused_result,
)
from thermospec.runs.drafts_run import verifier_drafts
from thermospec.runs.executor import keyed_mode
from thermospec.runs.prepare import PreparedRun, sparse_rows, trace_of
from thermospec.runs.summary import ACCEPT_OVERLAP_TOLERANCE, summarise_run

__all__ = [
    "accept_overlap_check",
    "draft_bin_labels",
    "pooled_draft_chi2",
    "pooled_tsu_check",
    "run_checks",
    "run_statistics",
    "sum_chi2",
]


POOLED_CONTEXTS = 16
POOLED_STEPS = 50_000
POOLED_SIGNIFICANCE = 0.001
HEAD_BINS = 4
POOLED_STREAM_BASE = 1000  # CHECK streams 0..3 are the guide's contexts; the pooled test uses 1000 + i


def run_statistics(run: PreparedRun) -> dict[str, Any]:
    """Run the chain of the configured length in memory; return its summary statistics."""
    target, config = run.target, run.config
    keyed = keyed_mode(run)  # a trace's positions or order-N contexts, one draft or N (overlap: the exact acceptance)
    if keyed is not None:
        for keyed_chunk in keyed.chunks():
            keyed.record(keyed_chunk)
        return keyed.statistics(tests=False)
    tally = RunTally(target.V)
    rng = random_stream(config.seed, Stream.CHAIN)
    if config.drafts > 1:  # overlap = the verifier's exact acceptance
        view, plans = verifier_drafts(run)
        for step_chunk in run_drafts(target.row, target.pi, run.proposer.draft, config.drafts, config.verifier,
                                     config.steps, rng, plans=plans):
            tally.update(step_chunk)
        return summarise_run(tally, view, target.pi)
    for chunk in run_chain(target.row, target.pi, run.proposer.draft, config.steps, rng, sparse=sparse_rows(run)):
        tally.update(chunk)
    return summarise_run(tally, run.proposer.draft, target.pi)


def accept_overlap_check(run: PreparedRun) -> CheckResult:
    """Check 2: acceptance rate of a run against its mean overlap mass."""
    config = run.config
    name = f"|accept - overlap| < {ACCEPT_OVERLAP_TOLERANCE} ({config.steps} steps)"
    try:
        stats = run_statistics(run)
    except ReportError as exc:
        return refused_result(name, exc)
    gap = abs(stats["accept_rate"] - stats["mean_overlap"])
    return CheckResult(
        name=name,
        passed=gap < ACCEPT_OVERLAP_TOLERANCE,
        detail=f"accept {stats['accept_rate']:.4f}, overlap {stats['mean_overlap']:.4f}, gap {gap:.4f}",
    )


def draft_bin_labels(q: NDArray[np.float64], ids: NDArray[np.int64], head: int = HEAD_BINS) -> NDArray[np.int64]:
    """Bin of every token for the pooled TSU χ²: the `head` likeliest tokens of q one by one, other ids, tail.

    Parameters
    ----------
    q : ndarray of float64, shape (V,)
        F(ψ), the distribution the TSU claims.
    ids : ndarray of int64
        The ids the payload sends.
    head : int
        Number of single-token bins (ties to the lower id).

    Returns
    -------
    ndarray of int64, shape (V,)
        ``0 .. head-1`` for the head tokens, ``head`` for the other sent ids,
        ``head + 1`` for the tail tokens.
    """
    labels = np.full(q.shape[0], head + 1, dtype=np.int64)
    labels[ids] = head
    order = np.argsort(-q, kind="stable")[:head]
    labels[order] = np.arange(order.size, dtype=np.int64)
    return labels


def sum_chi2(parts: list[Chi2Result]) -> Chi2Result:
    """Independent χ² tests as one: statistics and degrees of freedom summed."""
    stat = float(np.sum([r.stat for r in parts]))
    dof = int(sum(r.dof for r in parts))
    bins = int(sum(r.bins for r in parts))
    return Chi2Result(stat=stat, dof=dof, p_value=chi2_sf(stat, dof) if dof else 1.0, bins=bins)


def pooled_draft_chi2(
    run: PreparedRun, n: int = POOLED_STEPS, m: int = POOLED_CONTEXTS,
    draws: Callable[[int, int, int], NDArray[np.int64]] | None = None,
) -> Chi2Result:
    """The pooled TSU χ²: drafts of the `m` likeliest contexts vs F(ψ), coarse-binned, summed.

    Parameters
    ----------
    run : PreparedRun
    n : int
        Drafts per context.
    m : int
        Number of contexts (clamped to V).
    draws : callable, optional
        ``draws(i, x, n)`` gives the n draft tokens of the i-th context x; by
        default the TSU's draws of `fixed_context_draws` on stream ``CHECK, 1000 + i``.

    Raises
    ------
    ReportError
        If the TSU misreports a draw's ``log q``.
    """
    target = run.target
    parts = []
    for i, x in enumerate(likeliest_contexts(run, m)):
        draft = run.proposer.draft(x)
        if draws is None:
            rng = random_stream(run.config.seed, Stream.CHECK, POOLED_STREAM_BASE + i)
            tokens = fixed_context_draws(target.row(x), draft, n, rng).proposed
        else:
            tokens = draws(i, x, n)
        q = draft.tsu.q
        labels = draft_bin_labels(q, draft.payload.ids)
        bins = HEAD_BINS + 2
        observed = np.bincount(labels[tokens], minlength=bins).astype(np.float64)
        expected = n * np.bincount(labels, weights=q, minlength=bins).astype(np.float64)
        parts.append(pooled_chi2(observed, expected))
    return sum_chi2(parts)


def pooled_tsu_check(
    run: PreparedRun, n: int = POOLED_STEPS, m: int = POOLED_CONTEXTS, alpha: float = POOLED_SIGNIFICANCE
) -> CheckResult:
    """Check 4 (stronger, beside the guide's checklist): the pooled TSU χ² at significance `alpha`."""
    kind, _ = fixed_contexts_named(run)
    trace = trace_of(run)
    m_used = min(m, run.target.V if trace is None else trace.positions)
    name = f"pooled TSU χ² ({m_used} {kind}s x {n} drafts, alpha = {alpha:g})"
    try:
        result = pooled_draft_chi2(run, n, m)
    except ReportError as exc:
        return refused_result(name, exc, guide=False)
    return CheckResult(
        name=name,
        passed=result.p_value >= alpha,
        skipped=result.dof == 0,
        detail=f"chi2 = {result.stat:.1f} on {result.dof} dof, p = {result.p_value:.3g}"
        + (" (every bin pooled: nothing to test; raise --pooled-steps)" if result.dof == 0 else ""),
        guide=False,
    )


def run_checks(
    run: PreparedRun, check_steps: int = DEFAULT_CHECK_STEPS, pooled_steps: int = POOLED_STEPS
) -> list[CheckResult]:
    """The three checks of the guide's checklist, in its order, then the stronger pooled TSU χ²."""
    return [
        fixed_context_check(run, check_steps),
        accept_overlap_check(run),
        psi_size_check(run),
        pooled_tsu_check(run, pooled_steps),
    ]
