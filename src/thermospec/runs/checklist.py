"""The guide's checklist items a run's summary carries, evaluated as ``check`` evaluates them (SPEC §7).

1. Fixed-context χ²: the 4 most probable contexts under pi, each with n
   independent draft-and-correct steps; χ² of the emitted counts against
   ``n p(. | c)`` (pooled per SPEC §6); pass if at least 3 of 4 have p > 0.05.
   On a trace (``--trace``) the contexts are the first 4 positions (every run
   visits them first, and choosing them needs no pass over the file); at order
   N > 2 (``--order``) the 4 most frequent (N - 1)-character contexts of the corpus.
3. ``psi_bytes <= 1024`` for every K <= 128 at this V.

Every draw also goes through the host's consistency check of the reported
``log q`` (`ReportVerifier`): a TSU that misreports fails the check it was caught
in, with the step and token named.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thermospec.core.payload import craft_payload, craft_payload_from_support, encode_payload, payload_size
from thermospec.core.statistics import Chi2Result, pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import ReportError, fixed_context_draws
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.drafts import fixed_context_drafts, plan_source
from thermospec.runs.interrupts import stop_requested
from thermospec.runs.prepare import PreparedRun, order_of, trace_of
from thermospec.runs.summary import PSI_BYTES_LIMIT

__all__ = ["CheckResult", "fixed_context_check", "fixed_context_p_values", "psi_size_check"]


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
    guide: bool = True
    skipped: bool = False  # nothing could be tested: neither a pass nor a failure

    @property
    def verdict(self) -> str:
        """PASS, FAIL or SKIP, as printed."""
        return "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"


def likeliest_contexts(run: PreparedRun, m: int) -> list[int]:
    """The `m` fixed contexts of the checks: most probable under pi, first positions, or most frequent contexts."""
    trace, order = trace_of(run), order_of(run)
    if trace is not None:
        return list(range(min(m, trace.positions)))
    if order is not None:
        return order.frequent_contexts(m)
    contexts: list[int] = np.argsort(-run.target.pi, kind="stable")[:m].tolist()
    return contexts


def fixed_contexts_named(run: PreparedRun) -> tuple[str, str]:
    """What the fixed contexts are, for a check's name (``context``/``position``) and its detail."""
    if trace_of(run) is not None:
        return "position", "positions 0-3: the first 4, which every run visits first"
    order = order_of(run)
    if order is not None:
        return "context", f"the 4 most frequent {order.order - 1}-character contexts of the corpus"
    return "context", ""


def context_label(run: PreparedRun, x: int) -> str:
    """How a check names a fixed context: ``x=3``, ``t=3`` (a position), or the context's text (order N)."""
    order = order_of(run)
    if order is not None:
        return repr(order.context_text(x))
    return f"t={x}" if trace_of(run) is not None else f"x={x}"


def fixed_context_results(run: PreparedRun, n: int) -> tuple[list[int], list[Chi2Result]]:
    """The guide's fixed-context χ² tests: emitted counts of n steps vs ``n p(. | c)``, 4 contexts.

    Returns
    -------
    contexts : list of int
        The 4 most probable contexts under pi (ties to the lower id).
    results : list of Chi2Result
        One per context; a context whose bins all pool into one has nothing to test
        (0 dof, p = 1 by SPEC §6's rule).
    """
    target = run.target
    contexts = likeliest_contexts(run, FIXED_CONTEXTS)
    results = []
    for i, x in enumerate(contexts):
        rng = random_stream(run.config.seed, Stream.CHECK, i)
        if run.config.drafts > 1:  # N drafts per step, the run's verifier
            plans = plan_source(target.row, run.proposer.draft, run.config.verifier, run.config.drafts)
            draws: ChainChunk = fixed_context_drafts(x, run.proposer.draft, plans, n, rng)
        else:
            draws = fixed_context_draws(target.row(x), run.proposer.draft(x), n, rng)
        observed = np.bincount(draws.emitted, minlength=target.V).astype(np.float64)
        results.append(pooled_chi2(observed, n * target.row(x)))
    return contexts, results


def fixed_context_p_values(run: PreparedRun, n: int) -> tuple[list[int], list[float]]:
    """The p-values of `fixed_context_results`."""
    contexts, results = fixed_context_results(run, n)
    return contexts, [r.p_value for r in results]


def refused_result(name: str, error: ReportError, guide: bool = True) -> CheckResult:
    return CheckResult(name=name, passed=False, detail=str(error), guide=guide)


def fixed_context_check(run: PreparedRun, n: int) -> CheckResult:
    """Check 1: χ² of n fixed-context emissions against the target row, for 4 contexts (or positions)."""
    kind, which = fixed_contexts_named(run)
    name = f"fixed-{kind} χ² (n={n} per {kind})"
    try:
        contexts, results = fixed_context_results(run, n)
    except ReportError as exc:
        return refused_result(name, exc)
    passing = sum(r.p_value > SIGNIFICANCE for r in results)
    shown = ", ".join(
        f"{context_label(run, x)}: p={r.p_value:.3f}" + (" (one bin: nothing to test)" if r.dof == 0 else "")
        for x, r in zip(contexts, results, strict=True)
    )
    return CheckResult(
        name=name,
        passed=passing >= min(FIXED_CONTEXTS_TO_PASS, len(contexts)),
        detail=f"{passing}/{len(contexts)} with p > {SIGNIFICANCE} [{shown}]" + (f" ({which})" if which else ""),
    )


def psi_size_check(run: PreparedRun) -> CheckResult:
    """Check 3: encoded ψ size for every K from 1 to 128 (clamped to V), on the likeliest context (position 0).

    The size depends on K and V only, so the payloads are crafted with auto-ε
    (a numeric ε valid at the run's K may be out of range at K = 1).
    """
    target, config = run.target, run.config
    top = min(MAX_CHECKED_K, target.V)
    trace = trace_of(run)
    if trace is not None:  # position 0, from its top support: craft_payload's bytes without sorting V entries
        tokens, probs = trace.top_support(0, top)
        sizes = [len(encode_payload(craft_payload_from_support(tokens, probs, trace.V, k, config.tau, "auto")))
                 for k in range(1, top + 1)]
    else:
        x = int(np.argmax(target.pi))
        sizes = [len(encode_payload(craft_payload(target.row(x), k, config.tau, "auto"))) for k in range(1, top + 1)]
    largest = max(sizes)
    return CheckResult(
        name=f"ψ payload ≤ {PSI_BYTES_LIMIT} bytes for K ≤ {MAX_CHECKED_K}",
        passed=largest <= PSI_BYTES_LIMIT,
        detail=f"largest {largest} bytes (K = {min(MAX_CHECKED_K, target.V)}, V = {target.V})",
    )


def guide_checklist(run: PreparedRun, run_items: dict[str, bool]) -> dict[str, bool | None]:
    """The guide's success checklist as booleans, as `check` evaluates it.

    `run_items` are the items the run itself measures (|accept - overlap|, this
    run's ψ sizes); the fixed-context χ² (4 contexts, `check`'s default n and
    streams, so it agrees with `check`) and the ψ bound for every K <= 128 are
    added here.  A few milliseconds at the default settings, but 4 x 20,000 steps
    of a slow stepper (``--drafts 64``) take a minute: after a stop signal
    (`stop_requested`) the fixed-context χ² is not drawn and its item is None.
    """

    V = run.target.V
    return {
        "fixed_context_chi2_3_of_4": None if stop_requested() else fixed_context_check(run, DEFAULT_CHECK_STEPS).passed,
        **run_items,
        "psi_bytes_le_1024_every_K_le_128": payload_size(min(MAX_CHECKED_K, V), V) <= PSI_BYTES_LIMIT,
    }
