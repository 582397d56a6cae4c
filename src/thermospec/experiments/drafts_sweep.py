"""The drafts sweep: acceptance of N i.i.d. drafts per target call, per verifier, against the limit.

For each K, N and verifier: the exact π-weighted acceptance of the verifier
(`core.verifiers`), the acceptance measured on a chain of ``steps`` steps
(`engine.drafts.run_drafts`, stream ``random_stream(seed, Stream.CHAIN)`` as
``run --drafts N`` uses), the bound ``Σ min(p, 1 − (1 − q)^N)`` that no verifier
of N i.i.d. drafts can pass, the optimum over every exact verifier
(`core.transport.acceptance_optimum`), the share of the optimum's gain over one
draft the verifier achieves, and a modelled speed-up.  The model is one γ = 1
block per target call: a step emits ``1 + accepted`` tokens per target call
and costs ``N c + 1`` target-call times, ``c`` the TSU draw / target call cost
ratio (every one of the N draws counted: the ``speedup`` column; the figure,
`drafts_plots`, also models the draws the verifier uses, ``expected_draws``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

from thermospec.core.metrics import overlap_mass
from thermospec.core.streams import Stream, random_stream
from thermospec.core.transport import acceptance_bound, acceptance_optimum
from thermospec.core.verifiers import VERIFIERS
from thermospec.engine.drafts import plan_source, run_drafts
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import prepare_run

__all__ = ["DRAFTS_CSV", "DRAFTS_PNG", "drafts_rows", "drafts_table"]

DRAFTS_CSV = "m1_drafts_sweep.csv"
DRAFTS_PNG = "m1_acceptance_vs_drafts.png"


def drafts_rows(base: RunConfig, Ks: Sequence[int], Ns: Sequence[int], verifiers: Sequence[str] = VERIFIERS,
                steps: int = 10_000, cost_ratio: float = 0.05) -> Iterator[dict[str, Any]]:
    """One row per (K, N, verifier), in that order (module docstring for the columns), each as it is done."""
    for K in Ks:
        run = prepare_run(dataclasses.replace(base, K=K, drafts=1))
        t, drafts = run.target, run.proposer.draft
        contexts = [x for x in range(t.V) if t.pi[x] > 0]
        weights = [float(t.pi[x]) for x in contexts]
        total = math.fsum(weights)
        pq = [(t.row(x), drafts(x).tsu.q) for x in contexts]

        def weighted(values: Sequence[float], weights: Sequence[float] = weights, total: float = total) -> float:
            return math.fsum(w * v for w, v in zip(weights, values, strict=True)) / total

        single = weighted([overlap_mass(p, q) for p, q in pq])
        for n in Ns:
            bound = weighted([acceptance_bound(p, q, n) for p, q in pq])
            optimum = weighted([acceptance_optimum(p, q, n) for p, q in pq])
            for verifier in verifiers:
                plans = plan_source(t.row, drafts, verifier, n)
                exact = weighted([plans(x).acceptance for x in contexts])
                draws = weighted([plans(x).expected_draws for x in contexts])
                rng = random_stream(base.seed, Stream.CHAIN)
                chunks = run_drafts(t.row, t.pi, drafts, n, verifier, steps, rng, plans=plans)
                measured = sum(int(c.accepted.sum()) for c in chunks) / steps
                gain = optimum - single
                yield {
                    "K": K, "N": n, "verifier": verifier, "steps": steps,
                    "accept_rate": measured, "accept_se": math.sqrt(exact * (1 - exact) / steps),
                    "exact_acceptance": exact, "single_draft": single, "optimum": optimum, "bound": bound,
                    "gain_fraction": (exact - single) / gain if gain > 1e-12 else None,
                    "expected_draws": draws,
                    "speedup": (1 + exact) / (n * cost_ratio + 1), "cost_ratio": cost_ratio,
                }


def drafts_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the rows."""
    head = "| K | N | verifier | measured | exact | one draft | optimum | bound | exact gain share | TSU draws |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        share = "—" if r["gain_fraction"] is None else f"{r['gain_fraction']:.2f}"
        lines.append(f"| {r['K']} | {r['N']} | {r['verifier']} | {r['accept_rate']:.4f} | "
                     f"{r['exact_acceptance']:.4f} | {r['single_draft']:.4f} | {r['optimum']:.4f} | "
                     f"{r['bound']:.4f} | {share} | {r['expected_draws']:.2f} |")
    return "\n".join(lines)
