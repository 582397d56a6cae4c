"""A run, prepared: its configuration, its target, its drafts, and the tables it steps on.

Everything that can fail on the user's input (options, corpus, ε range, ψ
crafting) is done by `prepare_run` before anything is written.  Which target a
configuration names, how it loads, drafts and walks its contexts is its entry in
`runs.targets.TARGETS`; this module never asks for a target's class.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.core.payload import payload_size
from thermospec.engine.compact import SparseRows
from thermospec.engine.keys import ContextSource
from thermospec.runs.config import ConfigError, RunConfig, check_eps
from thermospec.runs.targets import TargetKind, kind_of
from thermospec.targets.bigram import BigramTarget
from thermospec.targets.order import OrderTarget
from thermospec.targets.trace import TraceTarget
from thermospec.tsu.budget import BudgetAllocation, BudgetPlan, overlap_curves
from thermospec.tsu.drafts import Proposer
from thermospec.tsu.faults import Fault, FaultyProposer
from thermospec.tsu.thrml import ThrmlMissingError, thrml_proposer

__all__ = ["PreparedRun", "context_source", "inject_fault", "order_of", "prepare_run", "trace_of"]


@dataclass(frozen=True, eq=False)
class PreparedRun:
    """A validated configuration with its target and proposer, ready to run."""

    config: RunConfig
    target: BigramTarget
    proposer: Proposer
    sparse: SparseRows | None = None
    """The rows by their supports when the run steps on compact tables, else None (dense tables)."""
    budget: KeyedAllocation | None = None
    """The ``--psi-budget`` allocation (K per key, its design means), or None: ``--K`` everywhere."""

    @property
    def K_used(self) -> int:
        """The K asked for, clamped to the vocabulary size."""
        return min(self.config.K, self.target.V)

    @property
    def kind(self) -> TargetKind[Any]:
        """The kind of target the configuration names (`runs.targets`)."""
        return kind_of(self.config)


@dataclass(frozen=True)
class KeyedAllocation(BudgetAllocation):
    """A `BudgetAllocation` with the keys its ``K`` are of."""

    keys: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def trace_of(run: PreparedRun) -> TraceTarget | None:
    """The run's trace when it runs on one (``--trace``), else None."""
    return cast(TraceTarget, run.target) if run.kind.name == "trace" else None


def order_of(run: PreparedRun) -> OrderTarget | None:
    """The run's order-N target when N > 2 (``--order``), else None (N = 2 is M1's corpus target)."""
    return cast(OrderTarget, run.target) if run.kind.name == "order" else None


def context_source(run: PreparedRun) -> ContextSource:
    """The run's context-source axis (`engine.keys`): a trace's positions, order-N contexts, or the bigram chain."""
    return run.kind.source(run.target)


def prepare_run(config: RunConfig) -> PreparedRun:
    """Load the target and craft ψ for every context; raise before anything is written.

    Raises
    ------
    thermospec.targets.CorpusError, thermospec.runs.config.ConfigError, thermospec.core.payload.PayloadError
    """
    kind = kind_of(config)
    target = kind.load(config)
    check_eps(config, target.V)
    budget = None if config.psi_budget is None else _allocate(config, kind, target)
    K_of = None if budget is None else dict(zip(budget.keys.tolist(), budget.K.tolist(), strict=True)).__getitem__
    proposer, sparse = kind.drafts(config, target, K_of)
    if config.tsu == "thrml":
        return PreparedRun(config=config, target=target, proposer=_with_tsu(config, proposer, target.V),
                           budget=budget)
    return PreparedRun(config=config, target=target, proposer=proposer, sparse=sparse, budget=budget)


BUDGET_WEIGHTS = {"characters": "pi", "synthetic": "pi", "order": "corpus context frequencies",
                  "trace": "uniform over positions"}
"""What weights the ``--psi-budget`` allocation's keys (the summary's ``design_weights``), by target kind."""
BUDGET_REFUSED = {
    "bpe": "a BPE target's rows are built on demand, and the allocation needs every context's row first",
}


def _allocate(config: RunConfig, kind: TargetKind[Any], target: BigramTarget) -> KeyedAllocation:
    """``--psi-budget``: K per key by the convex-hull allocation over the kind's keys (`tsu.budget`)."""
    if kind.budget_rows is None:
        raise ConfigError(f"--psi-budget: not with this target ({BUDGET_REFUSED.get(kind.name, kind.name)})")
    budget = float(config.psi_budget or 0)
    if budget < payload_size(1, target.V):  # before every context's curve is computed (seconds on order N)
        raise ConfigError(f"--psi-budget {budget:g}: {budget:g} bytes is below the smallest mean ψ size, "
                          f"{payload_size(1, target.V)} bytes (K = 1)")
    keys, rows, weights = kind.budget_rows(config, target)
    K_max = min(config.K, target.V)
    plan = BudgetPlan(overlap_curves(rows, target.V, K_max, config.tau, config.eps), weights)
    try:
        allocation = plan.allocate(budget)
    except ValueError as exc:
        raise ConfigError(f"--psi-budget {budget:g}: {str(exc).split(': ', 1)[-1]}") from None
    return KeyedAllocation(keys=keys, K=allocation.K, mean_bytes=allocation.mean_bytes,
                           mean_overlap=allocation.mean_overlap, multiplier=allocation.multiplier)


def sparse_rows(run: PreparedRun) -> SparseRows | None:
    """The rows by their supports when the run steps on compact tables, else None (dense tables).

    Compact tables (`engine.compact`) emit the same tokens as dense ones.  Never for
    a proposer whose TSUs do not sample their payload (`Proposer.samples_payload`:
    fault-injected, THRML), since tables built from the payload would not say what
    they draw.
    """
    return run.sparse if run.proposer.samples_payload else None


def _with_tsu(config: RunConfig, proposer: Proposer, V: int) -> Proposer:
    """The proposer whose TSUs draw: SimTSU's own, or THRML's sampler on the same ψ (``--tsu thrml``)."""
    try:
        return thrml_proposer(proposer, V, config.seed)
    except ThrmlMissingError as exc:
        raise ConfigError(str(exc)) from None


def target_description(run: PreparedRun) -> dict[str, Any]:
    """Where the target came from, for the summary."""
    return run.kind.describe(run.config, run.target)


def inject_fault(run: PreparedRun, fault: Fault) -> PreparedRun:
    """The same prepared run, drafted by TSUs carrying `fault` (``stale``: ψ of the next context or position)."""
    trace = trace_of(run)
    neighbours = trace.positions if trace is not None else run.target.V
    return replace(run, proposer=FaultyProposer(run.proposer, fault, neighbours))
