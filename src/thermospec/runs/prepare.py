"""A run on disk: its folder, its telemetry stream and its summary.

Everything that can fail on the user's input (options, corpus, ε range, ψ
crafting) is done by `prepare_run` before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.compact import SparseRows
from thermospec.engine.sparse import SparseProposer
from thermospec.runs.config import ConfigError, RunConfig, check_eps, load_target
from thermospec.targets.bigram import BigramTarget, SupportSource
from thermospec.targets.bpe import TokenBigramTarget
from thermospec.targets.synthetic import LazySyntheticTarget
from thermospec.tsu.bounded import BoundedProposer
from thermospec.tsu.drafts import Proposer
from thermospec.tsu.faults import Fault, FaultyProposer
from thermospec.tsu.thrml import ThrmlMissingError, thrml_proposer

__all__ = ["PreparedRun", "inject_fault", "prepare_run"]


@dataclass(frozen=True, eq=False)
class PreparedRun:
    """A validated configuration with its target and proposer, ready to run."""

    config: RunConfig
    target: BigramTarget
    proposer: Proposer

    @property
    def K_used(self) -> int:
        """The K asked for, clamped to the vocabulary size."""
        return min(self.config.K, self.target.V)


def prepare_run(config: RunConfig) -> PreparedRun:
    """Load the target and craft ψ for every context; raise before anything is written.

    Raises
    ------
    thermospec.targets.CorpusError, thermospec.config.ConfigError, thermospec.payload.PayloadError
    """
    target = load_target(config)
    check_eps(config, target.V)
    proposer = _proposer(config, target)
    return PreparedRun(config=config, target=target, proposer=proposer)


COMPACT_ABOVE_V = 1024
"""Dense synthetic targets above this V step on compact tables (dense tables of every context exceed 256 MB)."""


def sparse_rows(run: PreparedRun) -> SparseRows | None:
    """The target's rows by their supports when the run steps on compact tables, else None (dense tables).

    Compact tables (`thermospec.compact`) emit the same tokens as dense ones; they are
    used where dense tables of every context would not fit `DEFAULT_TABLE_BYTES`: a
    `LazySyntheticTarget` (drafted by its `SparseProposer`) and a dense synthetic
    target of V > `COMPACT_ABOVE_V`.  Never for a fault-injected or THRML proposer,
    which samples something the payload alone does not say.
    """
    target = run.target
    if isinstance(target, LazySyntheticTarget) and type(run.proposer) is SparseProposer:
        s = min(target.support, target.V)
        return SparseRows(support=run.proposer.support_of, max_support=s, max_ids=min(run.config.K, s),
                          tables=run.proposer.tables)
    if type(target) is BigramTarget and type(run.proposer) is Proposer and target.V > COMPACT_ABOVE_V:
        widest = int(np.count_nonzero(target.P, axis=1).max())
        return SparseRows(support=dense_support(target.row), max_support=widest, max_ids=min(run.config.K, widest))
    return None


def dense_support(row: Callable[[int], NDArray[np.float64]]) -> SupportSource:
    """``support(x)`` of a dense row source: its increasing tokens of p > 0 and their probabilities."""

    def support(x: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        p = row(x)
        tokens = np.flatnonzero(p).astype(np.int64)
        return tokens, p[tokens]

    return support


def _proposer(config: RunConfig, target: BigramTarget) -> Proposer:
    """Craft ψ for every context; for a token (BPE) target, a memory-bounded cache and the likeliest context."""

    if isinstance(target, LazySyntheticTarget):  # large V, sparse rows: O(s log s) per context, bounded cache
        proposer: Proposer = SparseProposer(target.row, target.support_row, target.V, config.K, config.tau, config.eps)
        proposer.draft(int(target.pi.argmax()))
    elif isinstance(target, TokenBigramTarget):  # large V: bounded caches
        proposer = BoundedProposer(target.row, config.K, config.tau, config.eps, target.V)
        proposer.draft(int(target.pi.argmax()))
    else:
        proposer = Proposer(target.row, config.K, config.tau, config.eps)
        proposer.all_drafts(target.V)
    if config.tsu == "thrml":
        try:
            proposer = thrml_proposer(proposer, target.V, config.seed)
        except ThrmlMissingError as exc:
            raise ConfigError(str(exc)) from None
    return proposer


def target_description(run: PreparedRun) -> dict[str, Any]:
    """Where the target came from, for the summary."""
    target = run.target
    return {
        "source": target.source,
        "V": target.V,
        "corpus": run.config.corpus,
        "corpus_sha256": target.corpus_sha256,
        "vocabulary": None if target.vocabulary is None else "".join(target.vocabulary),
        "stationary": "unique" if target.stationary_unique
        else "not unique: long-run average from a uniform start",
    }


def inject_fault(run: PreparedRun, fault: Fault) -> PreparedRun:
    """The same prepared run, drafted by TSUs carrying `fault`."""
    return replace(run, proposer=FaultyProposer(run.proposer, fault, run.target.V))
