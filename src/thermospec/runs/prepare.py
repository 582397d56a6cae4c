"""A run, prepared: its configuration, its target, its drafts, and the tables it steps on.

Everything that can fail on the user's input (options, corpus, ε range, ψ
crafting) is done by `prepare_run` before anything is written.  How to draft
and step follows from the target's capabilities (`BigramTarget.rows_stored`,
`BigramTarget.widest_support`), never from its class:

- rows stored in a table: every context's ψ crafted up front (`Proposer`); above
  `COMPACT_ABOVE_V` tokens the chain steps on compact tables built from the rows'
  supports, since dense tables of every context would not fit in memory;
- rows built on demand and much narrower than V (a lazy synthetic target): ψ
  crafted from each row's support, drafts and compact tables in bounded caches
  (`SparseProposer`);
- rows built on demand and as wide as V (a BPE token target): drafts in a
  bounded cache (`BoundedProposer`), dense tables.

Two targets are not bigram chains and draft their own way: a trace
(``--trace``, position-indexed, teacher-forced: `PositionProposer`, ψ per
position from its top support) and an order-N corpus target (``--order N > 2``:
`ContextProposer`, ψ per context id in a bounded cache).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from thermospec.engine.compact import SparseRows
from thermospec.engine.contexts import ContextProposer
from thermospec.engine.keys import BigramSource, ContextSource, OrderSource, PositionSource
from thermospec.engine.positions import PositionProposer
from thermospec.engine.sparse import SparseProposer
from thermospec.runs.config import ConfigError, RunConfig, check_eps, load_target
from thermospec.targets.bigram import BigramTarget
from thermospec.targets.order import OrderTarget
from thermospec.targets.trace import TraceTarget
from thermospec.tsu.bounded import BoundedProposer
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

    @property
    def K_used(self) -> int:
        """The K asked for, clamped to the vocabulary size."""
        return min(self.config.K, self.target.V)


def trace_of(run: PreparedRun) -> TraceTarget | None:
    """The run's trace when it runs on one (``--trace``), else None."""
    return run.target if isinstance(run.target, TraceTarget) else None


def order_of(run: PreparedRun) -> OrderTarget | None:
    """The run's order-N target when N > 2 (``--order``), else None (N = 2 is M1's corpus target)."""
    return run.target if isinstance(run.target, OrderTarget) and run.target.order > 2 else None


def context_source(run: PreparedRun) -> ContextSource:
    """The run's context-source axis (`engine.keys`): a trace's positions, order-N contexts, or the bigram chain."""
    trace, order = trace_of(run), order_of(run)
    if trace is not None:
        return PositionSource(trace)
    if order is not None:
        return OrderSource(order)
    return BigramSource(run.target)


def prepare_run(config: RunConfig) -> PreparedRun:
    """Load the target and craft ψ for every context; raise before anything is written.

    Raises
    ------
    thermospec.targets.CorpusError, thermospec.runs.config.ConfigError, thermospec.core.payload.PayloadError
    """
    target = load_target(config)
    check_eps(config, target.V)
    proposer, sparse = _drafts(config, target)
    return PreparedRun(config=config, target=target, proposer=proposer, sparse=sparse)


COMPACT_ABOVE_V = 1024
"""Dense synthetic targets above this V step on compact tables (dense tables of every context exceed 256 MB)."""


def sparse_rows(run: PreparedRun) -> SparseRows | None:
    """The rows by their supports when the run steps on compact tables, else None (dense tables).

    Compact tables (`engine.compact`) emit the same tokens as dense ones.  Never for
    a proposer whose TSUs do not sample their payload (`Proposer.samples_payload`:
    fault-injected, THRML), since tables built from the payload would not say what
    they draw.
    """
    return run.sparse if run.proposer.samples_payload else None


def _drafts(config: RunConfig, target: BigramTarget) -> tuple[Proposer, SparseRows | None]:
    """The proposer of a target and, where the run steps on compact tables, its rows by their supports."""
    K, tau, eps, V = config.K, config.tau, config.eps, target.V
    sparse: SparseRows | None = None
    if isinstance(target, TraceTarget):  # teacher-forced: ψ per position, crafted when first visited
        positions = PositionProposer(target, K, tau, eps)
        positions.draft(0)
        return _with_tsu(config, positions, V), None
    if isinstance(target, OrderTarget) and target.order > 2:
        contexts = ContextProposer(target, K, tau, eps)
        contexts.draft(int(target.pi.argmax()))
        return _with_tsu(config, contexts, V), None
    if target.rows_stored:
        proposer = Proposer(target.row, K, tau, eps)
        proposer.all_drafts(V)
        if V > COMPACT_ABOVE_V:
            widest = target.widest_support()
            sparse = SparseRows(support=target.support, max_support=widest, max_ids=min(K, widest))
    elif target.widest_support() < V:
        drafter = SparseProposer(target.row, target.support, V, K, tau, eps)
        drafter.draft(int(target.pi.argmax()))
        s = target.widest_support()
        sparse = SparseRows(support=drafter.support_of, max_support=s, max_ids=min(K, s), tables=drafter.tables)
        proposer = drafter
    else:
        proposer = BoundedProposer(target.row, K, tau, eps, V)
        proposer.draft(int(target.pi.argmax()))
    if config.tsu == "thrml":
        return _with_tsu(config, proposer, V), None
    return proposer, sparse


def _with_tsu(config: RunConfig, proposer: Proposer, V: int) -> Proposer:
    """The proposer whose TSUs draw: SimTSU's own, or THRML's sampler on the same ψ (``--tsu thrml``)."""
    if config.tsu != "thrml":
        return proposer
    try:
        return thrml_proposer(proposer, V, config.seed)
    except ThrmlMissingError as exc:
        raise ConfigError(str(exc)) from None


def target_description(run: PreparedRun) -> dict[str, Any]:
    """Where the target came from, for the summary."""
    target = run.target
    trace = trace_of(run)
    if trace is not None:
        return {
            "source": trace.source,
            "V": trace.V,
            "trace": run.config.trace,
            "trace_sha256": trace.sha256,
            "dtype": trace.dtype,
            "positions": trace.positions,
            "tokens": trace.tokens is not None,
            "metadata": dict(trace.metadata),
            "teacher_forced": True,
        }
    order = order_of(run)
    extra = {"order": order.order} if order is not None else {}
    return {
        "source": target.source,
        "V": target.V,
        "corpus": run.config.corpus,
        "corpus_sha256": target.corpus_sha256,
        "vocabulary": None if target.vocabulary is None else "".join(target.vocabulary),
        "stationary": "unique" if target.stationary_unique
        else "not unique: long-run average from a uniform start",
        **extra,
    }


def inject_fault(run: PreparedRun, fault: Fault) -> PreparedRun:
    """The same prepared run, drafted by TSUs carrying `fault` (``stale``: ψ of the next context or position)."""
    trace = trace_of(run)
    neighbours = trace.positions if trace is not None else run.target.V
    return replace(run, proposer=FaultyProposer(run.proposer, fault, neighbours))
