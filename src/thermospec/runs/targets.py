"""The targets a run can name, one entry each: when a configuration names it, how it loads and drafts,
its context source and its description.

A new target is a module in ``targets/`` and one `TargetKind` in `TARGETS` (the first whose `chosen`
holds is the run's).  Nothing else asks which class a target is: the run steps on the kind's context
source (`engine.keys`) and its proposer; `PreparedRun.kind` names it for what is written.

=============  ============================  ============================  ==============================
kind           chosen by                     context source                ψ crafted
=============  ============================  ============================  ==============================
trace          ``--trace PATH``              positions, teacher-forced     per position, when first met
order          ``--corpus --order N > 2``    order-N back-off contexts     per context, in a bounded cache
bpe            ``--corpus --tokenizer``      bigram chain of BPE tokens    per token, bounded or from
                                                                           the rows' supports
characters     ``--corpus``                  bigram chain of characters    every context up front
synthetic      neither                       bigram chain                  up front (V ≤ 4,096) or from
                                                                           the lazy rows' supports
=============  ============================  ============================  ==============================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.core.streams import Stream, random_stream
from thermospec.engine.compact import SparseRows
from thermospec.engine.contexts import ContextProposer
from thermospec.engine.keys import BigramSource, ContextSource, OrderSource, PositionSource
from thermospec.engine.positions import PositionProposer
from thermospec.engine.sparse import SparseProposer
from thermospec.runs.config import ConfigError, RunConfig
from thermospec.targets.bigram import BigramTarget
from thermospec.targets.bpe import bpe_target, parse_tokenizer
from thermospec.targets.characters import character_target
from thermospec.targets.draft_models import OrderDraftModel
from thermospec.targets.order import OrderTarget, order_target
from thermospec.targets.synthetic import DENSE_VOCAB_MAX, lazy_synthetic_target, synthetic_target
from thermospec.targets.trace import TraceError, TraceTarget, load_trace
from thermospec.targets.trace_pair import load_draft_trace
from thermospec.tsu.bounded import BoundedProposer
from thermospec.tsu.drafts import MeasuredProposer, Proposer

__all__ = ["COMPACT_ABOVE_V", "TARGETS", "Drafts", "TargetKind", "kind_of", "load_target"]

T = TypeVar("T", bound=BigramTarget)
Drafts = tuple[Proposer, SparseRows | None]
BudgetRows = tuple[NDArray[np.int64], NDArray[np.float64] | Sequence[NDArray[np.float64]], NDArray[np.float64]]
"""Keys, the rows ψ is crafted from (one per key) and the keys' weights (summing to 1)."""
KOf = Callable[[int], int] | None
"""K per key (``--psi-budget``), or None: ``--K`` everywhere."""
"""A run's proposer and, where it steps on compact tables, its rows by their supports (else None)."""

COMPACT_ABOVE_V = 1024
"""Dense synthetic targets above this V step on compact tables (dense tables of every context exceed 256 MB)."""


@dataclass(frozen=True)
class TargetKind(Generic[T]):
    """One kind of target (see the module docstring)."""

    name: str
    chosen: Callable[[RunConfig], bool]
    load: Callable[[RunConfig], T]
    """The target, or a one-line `ConfigError` / `CorpusError` on bad input."""
    source: Callable[[T], ContextSource]
    drafts: Callable[[RunConfig, T, KOf], Drafts]
    """Its proposer (SimTSU's; `runs.prepare` puts THRML's sampler on it for ``--tsu thrml``)."""
    describe: Callable[[RunConfig, T], dict[str, Any]]
    """Where it came from, for the summary's ``target``."""
    budget_rows: Callable[[RunConfig, T], BudgetRows] | None = None
    """For ``--psi-budget``: every key ψ may be crafted for, the row it is crafted from, and the key's
    weight (None: the kind cannot list its keys before the run, and the budget is refused)."""


def _load_trace(config: RunConfig) -> TraceTarget:
    try:
        return load_trace(config.trace or "")
    except TraceError as exc:
        raise ConfigError(f"--trace {exc}") from None


def _trace_drafts(config: RunConfig, target: TraceTarget, K_of: KOf = None) -> Drafts:
    if config.draft_trace is not None:  # ψ of position t from the draft trace's row t, measured against t's row
        try:
            draft = load_draft_trace(config.draft_trace, target)
        except TraceError as exc:
            raise ConfigError(f"--draft-trace {exc}") from None
        drafted = PositionProposer(draft, config.K, config.tau, config.eps, K_of=K_of)
        measured = MeasuredProposer(drafted, target.row, drafted.capacity)
        measured.draft(0)
        return measured, None
    positions = PositionProposer(target, config.K, config.tau, config.eps, K_of=K_of)  # ψ per position, when met
    positions.draft(0)
    return positions, None


def _describe_trace(config: RunConfig, trace: TraceTarget) -> dict[str, Any]:
    return {"source": trace.source, "V": trace.V, "trace": config.trace, "trace_sha256": trace.sha256,
            "dtype": trace.dtype, "positions": trace.positions, "tokens": trace.tokens is not None,
            "metadata": dict(trace.metadata), "teacher_forced": True}


def _draft_model(config: RunConfig, target: BigramTarget) -> OrderDraftModel | None:
    """The order-M draft model of ``--draft-order M`` below the target's order (M = N: ψ from the target's rows)."""
    if config.draft_order is None or config.draft_order >= config.order:
        return None
    try:
        return OrderDraftModel(str(config.corpus), config.draft_order, target.vocabulary or ())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _order_drafts(config: RunConfig, target: OrderTarget, K_of: KOf = None) -> Drafts:
    model = _draft_model(config, target)
    if model is None and K_of is None:
        contexts: Proposer = ContextProposer(target, config.K, config.tau, config.eps)
    else:  # ψ of a context from the draft model's row after its characters, or with its K; one bounded cache
        capacity = ContextProposer(target, config.K, config.tau, config.eps).capacity
        contexts = Proposer(target.row, config.K, config.tau, config.eps, K_of=K_of, max_cached=capacity,
                            draft_row=None if model is None else lambda c: model.row_after(target.context_tokens(c)))
    contexts.draft(int(target.pi.argmax()))
    return contexts, None


def _describe_corpus(config: RunConfig, target: BigramTarget) -> dict[str, Any]:
    return {"source": target.source, "V": target.V, "corpus": config.corpus, "corpus_sha256": target.corpus_sha256,
            "vocabulary": "".join(target.vocabulary) if target.vocabulary else None,
            "stationary": "unique" if target.stationary_unique
            else "not unique: long-run average from a uniform start"}


def _describe_order(config: RunConfig, target: OrderTarget) -> dict[str, Any]:
    return _describe_corpus(config, target) | {"order": target.order}


def _bigram_budget_rows(config: RunConfig, target: BigramTarget) -> BudgetRows:
    """Every token's row (the draft model's with ``--draft-order 1``), weighted by π (the chain's law)."""
    if not target.rows_stored:
        raise ConfigError(f"--psi-budget: the allocation needs every context's row up front, and this target's "
                          f"{target.V:,} rows are built on demand (a synthetic V above 4,096 or a BPE target)")
    model = _draft_model(config, target)
    rows = np.stack([target.row(x) if model is None else model.row_after((x,)) for x in range(target.V)])
    return np.arange(target.V, dtype=np.int64), rows, np.asarray(target.pi, dtype=np.float64)


class _Rows:
    """Rows of many keys, one at a time as they are read (a trace's T rows would not fit at once)."""

    def __init__(self, keys: NDArray[np.int64], row: Callable[[int], NDArray[np.float64]]) -> None:
        self.keys, self.row = keys, row

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def __getitem__(self, i: int) -> NDArray[np.float64]:
        return self.row(int(self.keys[i]))  # IndexError past the end ends an iteration

    def sequence(self) -> Sequence[NDArray[np.float64]]:
        """This, as `tsu.budget.overlap_curves` reads its rows (a length, then each row by its index)."""
        return cast(Sequence[NDArray[np.float64]], self)


def _trace_budget_rows(config: RunConfig, target: TraceTarget) -> BudgetRows:
    """Every position, weighted alike (a run visits them in turn), with the row ψ is crafted from."""
    rows: Callable[[int], NDArray[np.float64]] = target.row
    if config.draft_trace is not None:
        try:
            rows = load_draft_trace(config.draft_trace, target).row
        except TraceError as exc:
            raise ConfigError(f"--draft-trace {exc}") from None
    keys = np.arange(target.positions, dtype=np.int64)
    return keys, _Rows(keys, rows).sequence(), np.full(target.positions, 1.0 / target.positions)


def _order_budget_rows(config: RunConfig, target: OrderTarget) -> BudgetRows:
    """Every context of the corpus (the move table's states), weighted by how often the corpus has it."""
    moves = target.moves()
    if moves is None:
        raise ConfigError("--psi-budget: this order-N target's contexts do not fit the move table's memory bound, "
                          "and the allocation needs every context's row first")
    states = np.arange(moves.states, dtype=np.int64)
    moves.intern(states)
    keys = moves.contexts(states)
    weights = np.array([target.context_occurrences(int(c)) for c in keys.tolist()], dtype=np.float64)
    model = _draft_model(config, target)
    if model is None:
        return keys, moves.rows(states), weights / weights.sum()
    return keys, _Rows(keys, lambda c: model.row_after(target.context_tokens(c))).sequence(), weights / weights.sum()


def _bigram_drafts(config: RunConfig, target: BigramTarget, K_of: KOf = None) -> Drafts:
    """Drafts of a bigram chain, chosen by the target's capabilities (`BigramTarget.rows_stored`,
    `BigramTarget.widest_support`), never by its class:

    - rows stored in a table: every context's ψ crafted up front (`Proposer`); above
      `COMPACT_ABOVE_V` tokens the chain steps on compact tables built from the rows' supports,
      since dense tables of every context would not fit in memory;
    - rows built on demand and much narrower than V (a lazy synthetic target): ψ crafted from
      each row's support, drafts and compact tables in bounded caches (`SparseProposer`);
    - rows built on demand and as wide as V (a BPE token target): drafts in a bounded cache
      (`BoundedProposer`), dense tables.
    """
    K, tau, eps, V = config.K, config.tau, config.eps, target.V
    model = _draft_model(config, target)
    if model is not None or K_of is not None:  # ψ of x from the draft model's row after x, or K per x
        drafted = Proposer(target.row, K, tau, eps, K_of=K_of,
                           draft_row=None if model is None else lambda x: model.row_after((x,)))
        drafted.draft(int(target.pi.argmax()))
        return drafted, None
    if target.rows_stored:
        proposer = Proposer(target.row, K, tau, eps)
        proposer.all_drafts(V)
        if V <= COMPACT_ABOVE_V:
            return proposer, None
        widest = target.widest_support()
        return proposer, SparseRows(support=target.support, max_support=widest, max_ids=min(K, widest))
    if target.widest_support() < V:
        drafter = SparseProposer(target.row, target.support, V, K, tau, eps)
        drafter.draft(int(target.pi.argmax()))
        s = target.widest_support()
        return drafter, SparseRows(support=drafter.support_of, max_support=s, max_ids=min(K, s),
                                   tables=drafter.tables)
    bounded = BoundedProposer(target.row, K, tau, eps, V)
    bounded.draft(int(target.pi.argmax()))
    return bounded, None


def _synthetic(config: RunConfig) -> BigramTarget:
    rng = random_stream(config.seed, Stream.TARGET)
    if config.vocab > DENSE_VOCAB_MAX:  # no dense V x V table: rows on demand (see LazySyntheticTarget)
        return lazy_synthetic_target(config.vocab, config.c, rng)
    try:
        return synthetic_target(config.vocab, config.c, rng)
    except ValueError as exc:  # rows too peaked for float64 (a tiny --c): one line, not a traceback
        raise ConfigError(f"--c {config.c:g} --vocab {config.vocab}: {exc}; "
                          "choose a larger --c") from None


TARGETS: tuple[TargetKind[Any], ...] = (
    TargetKind("trace", lambda c: c.trace is not None, _load_trace, PositionSource, _trace_drafts, _describe_trace,
               _trace_budget_rows),
    TargetKind("order", lambda c: c.corpus is not None and c.order > 2,
               lambda c: order_target(str(c.corpus), c.order, tokenizer=c.tokenizer),
               OrderSource, _order_drafts, _describe_order, _order_budget_rows),
    TargetKind("bpe", lambda c: c.corpus is not None and c.tokenizer is not None,
               lambda c: bpe_target(str(c.corpus), parse_tokenizer(str(c.tokenizer))), BigramSource, _bigram_drafts,
               _describe_corpus),
    TargetKind("characters", lambda c: c.corpus is not None, lambda c: character_target(str(c.corpus)), BigramSource,
               _bigram_drafts, _describe_corpus, _bigram_budget_rows),
    TargetKind("synthetic", lambda c: True, _synthetic, BigramSource, _bigram_drafts, _describe_corpus,
               _bigram_budget_rows),
)
"""Every kind of target, the first whose `chosen` holds being the run's."""


def kind_of(config: RunConfig) -> TargetKind[Any]:
    """The kind of target a configuration names."""
    return next(kind for kind in TARGETS if kind.chosen(config))


def load_target(config: RunConfig) -> BigramTarget:
    """The target a configuration names.

    A trace is position-indexed (`targets.trace.TraceTarget`, no pi): its runs are
    teacher-forced and its summaries say so; it passes here as a `BigramTarget`
    for what every run shares (V, rows, supports, where it came from).

    Raises
    ------
    ConfigError
        A trace that cannot be used (``--trace PATH: reason``, one line).
    CorpusError
        A corpus that cannot be used.
    """
    target: BigramTarget = kind_of(config).load(config)
    return target
