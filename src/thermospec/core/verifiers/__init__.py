"""Exact verification of N i.i.d. drafts: one target call, N TSU draws, one emitted token.

The TSU draws ``x_1 … x_N`` i.i.d. from ``q = F(ψ)``; a verifier emits one token
distributed exactly as ``p`` and *accepts* when that token is one of the drafts.
Every verifier here is split in two:

- `make_plan` (``name, p, q, N``): everything that depends only on the context,
  computed once per context (cache it next to ψ), with the verifier's exact
  acceptance probability `VerifierPlan.acceptance` and its mean TSU draws;
- `VerifierPlan.step` (``drafts, u``): the per-step reference, plain scalar code.

**Uniform layout.** A step consumes exactly ``N + 1`` float64 uniforms in [0, 1)
(`uniforms_per_step`), always all of them: ``u = (u_1, …, u_N, u_res)``.
``recursive`` and ``spectr`` test draft ``i`` with ``u_i``; ``optimal`` tests its
selected draft with ``u_1`` and picks its mixture component with ``u_2``
(``u_3 … u_N`` unused); every verifier draws its residual from ``u_res`` by
`inverse_cdf`.  With ``N = 1`` all three are M1's `accept_correct_step` on
``(u_1, u_res)``, token for token.  A step returns ``(emitted token, index)``,
the index (0-based) of the accepted draft or None when the residual was drawn.

Verifiers (``VERIFIERS``, one module each; the maths in its docstring):

``recursive`` (`recursive`)
    Recursive rejection sampling (SpecInfer): draft i is tested against ``p_i``,
    the residual left by the i − 1 rejections before it.
``spectr`` (`spectr`)
    SpecTr's k-sequential selection: every draft tested against ``p/(ρ q)``.
``optimal`` (`optimal`)
    One draft selected by a class mixture whose law ``x`` maximises ``Σ min(p, x)``
    over all exact verifiers, then tested against ``p/x``.

**A new verifier** is one module here with a `VerifierPlan` subclass (`plan`: its
reference step, exact acceptance and accepted law, and its flat tables), and its
entry in ``PLANS``; the table-driven steps (compiled or not, single steps, blocks,
trees) walk its tables without knowing it.

TSU draws: ``recursive`` and ``spectr`` stop at the first acceptance, so drawn
one at a time they need ``Σ_{i≤N} Π_{j<i} (1 − α_j)`` resp. ``G`` draws on average
(`VerifierPlan.expected_draws`); ``optimal`` needs all N (its selection looks at
every draft).  None needs draws without replacement.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from thermospec.core.verifiers.optimal import OptimalPlan
from thermospec.core.verifiers.plan import (
    RowTables,
    Step,
    VerifierPlan,
    VerifierTables,
    flat_tables,
    uniforms_per_step,
)
from thermospec.core.verifiers.recursive import RecursivePlan, recursive_rows, recursive_targets
from thermospec.core.verifiers.spectr import SpecTrPlan, spectr_rho

__all__ = [
    "PLANS",
    "VERIFIERS",
    "OptimalPlan",
    "RecursivePlan",
    "RowTables",
    "SpecTrPlan",
    "Step",
    "VerifierPlan",
    "VerifierTables",
    "flat_tables",
    "make_plan",
    "plan_type",
    "recursive_rows",
    "recursive_targets",
    "spectr_rho",
    "table_layout",
    "uniforms_per_step",
    "verifier_acceptance",
    "verifier_tables",
    "verify_step",
]

PLANS: dict[str, type[VerifierPlan]] = {"recursive": RecursivePlan, "spectr": SpecTrPlan, "optimal": OptimalPlan}
"""Every verifier by name: the registry ``--verifier``, `make_plan` and the sweeps read."""

VERIFIERS = tuple(PLANS)
"""The built-in verifiers' names, in order (what the sweeps compare by default); `make_plan`, `RunConfig`
and ``--verifier`` read `PLANS` itself, so a verifier registered later is accepted too."""


def plan_type(name: str) -> type[VerifierPlan]:
    """The plan class of verifier `name`.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if name not in PLANS:
        raise ValueError(f"verifier: unknown name {name!r}; choose one of {', '.join(PLANS)}")
    return PLANS[name]


def make_plan(name: str, p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> VerifierPlan:
    """Prepare verifier `name` for a context with target `p` and drafts from `q` (float64, shape (V,)).

    Raises
    ------
    ValueError
        For an unknown name, ``n < 1``, or p, q not 1-D float arrays of one shape.
    """
    kind = plan_type(name)
    if n < 1:
        raise ValueError(f"drafts: the number of drafts must be >= 1, got {n}")
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.ndim != 1 or p.shape != q.shape:
        raise ValueError(f"p, q: must be 1-D of one shape, got {p.shape} and {q.shape}")
    return kind.build(p, q, n)


def verify_step(name: str, p: NDArray[np.float64], q: NDArray[np.float64],
                drafts: NDArray[np.int64] | list[int], u: NDArray[np.float64]) -> Step:
    """One step of verifier `name` from scratch: ``make_plan(name, p, q, len(drafts)).step(drafts, u)``."""
    return make_plan(name, p, q, len(drafts)).step(np.asarray(drafts, dtype=np.int64), u)


def verifier_acceptance(name: str, p: NDArray[np.float64], q: NDArray[np.float64], n: int) -> float:
    """Exact probability that verifier `name` emits an accepted draft, given (p, q, N): ``make_plan(…).acceptance``."""
    return make_plan(name, p, q, n).acceptance


def table_layout(name: str, n: int) -> tuple[int, bool]:
    """``(L, selection)`` of verifier `name`'s tables for N = n: the ratio levels, and whether it selects a draft.

    Raises
    ------
    ValueError
        For an unknown name or ``n < 1``.
    """
    kind = plan_type(name)
    if n < 1:
        raise ValueError(f"drafts: the number of drafts must be >= 1, got {n}")
    return kind.levels(n), kind.selection


def verifier_tables(plan: VerifierPlan) -> VerifierTables:
    """The flat tables of `plan` (its own arrays: a table-driven step emits the tokens `plan.step` emits)."""
    return plan.tables()
