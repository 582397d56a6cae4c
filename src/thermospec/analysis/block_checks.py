"""``check --gamma G [--drafts N]``: the guide's checklist for γ-token blocks and token trees.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.analysis.checks import pooled_tsu_check, run_checks
from thermospec.core.expectation import EXPECTATION_MAX_V, block_expectation
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.blocks import block_transition_chi2, fixed_context_blocks, run_blocks
from thermospec.engine.chain import dense_matrices
from thermospec.engine.trees import TreeExpectation, fixed_key_trees, plan_cache, run_trees
from thermospec.runs.block_run import TREE_EXPECTATION_KEYS, batch_means_se, length_se_floor
from thermospec.runs.checklist import CheckResult, likeliest_contexts, psi_size_check
from thermospec.runs.prepare import PreparedRun, context_source, sparse_rows

__all__ = ["checks_of", "run_block_checks"]


def run_block_checks(run: Any, check_steps: int) -> list[Any]:
    """The checklist for ``check --gamma G`` (γ-token blocks, or token trees with ``--drafts N``).

    1. Fixed-context χ²: for each of the run's 4 likeliest keys, `check_steps`
       independent blocks (trees) started there; χ² of every emitted token
       (accepted drafts, residual and bonus tokens) against the row of the key it
       was emitted in, pooled per SPEC §6 and summed over keys; pass if at least 3
       of 4 have p > 0.05.
    2. Mean accepted length of a run of ``--steps`` tokens within 4 standard
       errors (batch means) of its exact expectation: on a bigram chain's blocks
       the stationary one (`core.expectation`); elsewhere (trees, order-N keys, a
       trace's positions) the expectation given each block's first key, by the
       dynamic program of `engine.trees.TreeExpectation`.
    3. The guide's ψ size check, unchanged.
    """

    config, target = run.config, run.target
    gamma, n = int(config.gamma), int(config.drafts)
    source, drafts = context_source(run), run.proposer.draft
    contexts = likeliest_contexts(run, 4)
    p_values = []
    for i, x in enumerate(contexts):
        rng = random_stream(config.seed, Stream.CHECK, i, gamma)
        chunk = (fixed_key_trees(source, drafts, config.verifier, n, gamma, x, check_steps, rng) if n > 1
                 else fixed_context_blocks(source.row, drafts, source.V, x, gamma, check_steps, rng,
                                           sparse=sparse_rows(run), source=source, psi=run.proposer.psi_spec))
        p_values.append(block_transition_chi2(chunk, source.row, source.V, source.advance).p_value)
    passing = sum(p > 0.05 for p in p_values)
    shown = ", ".join(f"x={x}: p={p:.3f}" for x, p in zip(contexts, p_values, strict=True))
    what = f"γ={gamma} blocks" if n == 1 else f"γ={gamma} trees of N={n} ({config.verifier})"
    results = [CheckResult(
        name=f"fixed-context χ² of {what} (n={check_steps} per context)",
        passed=passing >= min(3, len(contexts)),
        detail=f"{passing}/{len(contexts)} with p > 0.05 [{shown}]",
    )]
    rng = random_stream(config.seed, Stream.CHAIN)
    chunks = (run_trees(source, drafts, config.verifier, n, gamma, config.steps, rng) if n > 1
              else run_blocks(source, drafts, gamma, config.steps, rng, sparse=sparse_rows(run),
                              psi=run.proposer.psi_spec))
    starts, lengths_of = [], []
    for chunk in chunks:
        starts.append(chunk.context)
        lengths_of.append(chunk.accepted_length)
    start = np.concatenate(starts)
    lengths = np.concatenate(lengths_of).astype(np.float64)
    mean, se = float(lengths.mean()), batch_means_se(lengths)
    name = f"mean accepted length = exact expectation ± 4 SE ({lengths.size} blocks)"
    if n == 1 and source.keys_are_tokens and target.V <= EXPECTATION_MAX_V:
        expected = block_expectation(*dense_matrices(target.row, drafts, target.V), target.pi, gamma)
        gap = abs(mean - expected.accepted_length)
        se = max(se, length_se_floor(expected.accepted_length, gamma, lengths.size))
        results.append(CheckResult(
            name=name, passed=gap <= 4 * se,
            detail=f"measured {mean:.4f} ± {se:.4f}, exact {expected.accepted_length:.4f}, "
            f"i.i.d. formula {expected.iid_tokens_per_target_call - 1:.4f}",
        ))
    else:
        results.append(_given_starts_check(name, source, plan_cache(source, drafts, config.verifier, n), start,
                                           lengths, gamma))
    results.append(psi_size_check(run))
    return results


def _given_starts_check(name: str, source: Any, plans: Any, start: NDArray[np.int64], lengths: NDArray[np.float64],
                        gamma: int) -> CheckResult:
    """Mean accepted length against its exact expectation given each block's first key (a martingale difference)."""
    keys = np.unique(start).tolist()
    if len(keys) > TREE_EXPECTATION_KEYS:
        return CheckResult(name=name, passed=True, skipped=True,
                           detail=f"skipped: {len(keys):,} distinct block starts (the exact expectation is computed "
                           f"for at most {TREE_EXPECTATION_KEYS:,})")
    expectation = TreeExpectation(source, plans, gamma)
    values = {k: expectation(k) for k in keys}
    if any(v is None for v in values.values()):
        return CheckResult(name=name, passed=True, skipped=True,
                           detail="skipped: the drafted paths from these keys reach too many keys to sum exactly")
    exact = np.array([values[k] for k in start.tolist()], dtype=np.float64)
    diff = lengths - exact
    se = max(batch_means_se(diff), 1e-12)
    return CheckResult(name=name, passed=abs(float(diff.mean())) <= 4 * se,
                       detail=f"measured {float(lengths.mean()):.4f}, exact given the block starts "
                       f"{float(exact.mean()):.4f}, difference {float(diff.mean()):+.4f} ± {se:.4f}")


def checks_of(prepared: PreparedRun, check_steps: int, pooled_steps: int) -> list[CheckResult]:
    """The checks of a prepared run: the guide's (for γ-blocks, their block form), then the pooled TSU χ²."""
    if prepared.config.gamma is None:
        return run_checks(prepared, check_steps, pooled_steps)
    # The pooled TSU χ² tests the drafts' law per context, whatever γ: it is what catches a faulty TSU.
    return [*run_block_checks(prepared, check_steps), pooled_tsu_check(prepared, pooled_steps)]
