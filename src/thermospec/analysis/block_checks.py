"""``check --gamma G``: the guide's checklist for γ-token blocks.
"""

from __future__ import annotations

from typing import Any

from thermospec.core.expectation import EXPECTATION_MAX_V, block_expectation
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.blocks import block_transition_chi2, fixed_context_blocks, run_blocks
from thermospec.engine.chain import dense_matrices
from thermospec.engine.tally import BlockTally
from thermospec.runs.block_run import batch_means_se, length_se_floor
from thermospec.runs.checklist import CheckResult, likeliest_contexts, psi_size_check
from thermospec.runs.prepare import context_source, sparse_rows

__all__ = ["run_block_checks"]


def run_block_checks(run: Any, check_steps: int) -> list[Any]:
    """The checklist for ``check --gamma G``.

    1. Fixed-context χ²: for each of the 4 most probable contexts, `check_steps`
       independent blocks started there; χ² of every transition they emit (all
       block positions: accepted drafts, residual and bonus tokens) against
       ``p(. | previous token)``, pooled per SPEC §6 and summed over previous
       tokens; pass if at least 3 of 4 have p > 0.05.
    2. Mean accepted length of a run of ``--steps`` tokens within 4 standard
       errors (batch means) of its exact expectation.
    3. The guide's ψ size check, unchanged.
    """

    config, target = run.config, run.target
    gamma = int(config.gamma)
    source = context_source(run)
    contexts = likeliest_contexts(run, 4)
    p_values = []
    for i, x in enumerate(contexts):
        rng = random_stream(config.seed, Stream.CHECK, i, gamma)
        chunk = fixed_context_blocks(source.row, run.proposer.draft, source.V, x, gamma, check_steps, rng,
                                     sparse=sparse_rows(run), advance=source.advance)
        p_values.append(block_transition_chi2(chunk, source.row, source.V, source.advance).p_value)
    passing = sum(p > 0.05 for p in p_values)
    shown = ", ".join(f"x={x}: p={p:.3f}" for x, p in zip(contexts, p_values, strict=True))
    results = [CheckResult(
        name=f"fixed-context χ² of γ={gamma} blocks (n={check_steps} blocks per context)",
        passed=passing >= min(3, len(contexts)),
        detail=f"{passing}/{len(contexts)} with p > 0.05 [{shown}]",
    )]
    tally = BlockTally(target.V, gamma)
    for chunk in run_blocks(source, run.proposer.draft, gamma, config.steps,
                            random_stream(config.seed, Stream.CHAIN), sparse=sparse_rows(run)):
        tally.update(chunk)
    lengths = tally.accepted_lengths()
    mean, se = float(lengths.mean()), batch_means_se(lengths)
    name = f"mean accepted length = exact expectation ± 4 SE ({tally.blocks} blocks)"
    if not source.keys_are_tokens:
        results.append(CheckResult(name=name, passed=True, skipped=True,
                                   detail="skipped: the exact expectation is the bigram chain's (stationary law of "
                                   "block starts); not derived for order-N contexts or trace positions"))
    elif target.V > EXPECTATION_MAX_V:
        results.append(CheckResult(name=name, passed=True, skipped=True,
                                   detail=f"skipped: V = {target.V} above the dense limit {EXPECTATION_MAX_V}"))
    else:
        expected = block_expectation(*dense_matrices(target.row, run.proposer.draft, target.V), target.pi, gamma)
        gap = abs(mean - expected.accepted_length)
        se = max(se, length_se_floor(expected.accepted_length, gamma, tally.blocks))
        results.append(CheckResult(
            name=name, passed=gap <= 4 * se,
            detail=f"measured {mean:.4f} ± {se:.4f}, exact {expected.accepted_length:.4f}, "
            f"i.i.d. formula {expected.iid_tokens_per_target_call - 1:.4f}",
        ))
    results.append(psi_size_check(run))
    return results
