"""``run --corpus PATH --order N`` (N > 2): the order-N corpus chain (the engine is `engine.contexts`).

The context of a step is the last N - 1 emitted characters, backed off to the
longest suffix the corpus has seen followed by a character; the chain starts
from ``x0 ~ pi`` of the bigram chain (SPEC §8).  N = 2 is M1's corpus run and
goes through `ChainMode`, byte for byte.

Telemetry (``m1_metrics.jsonl``, or none): the guide's 12 fields, ``prev_token``
being the last emitted token, then ``context``: the text of the context the step
drafted in (its effective suffix, oldest character first).

Summary: M1's aggregates, each context weighted by its visits, and the
transition χ² over the visited contexts (each context's emitted counts against
``n_c p(. | c)``, summed: calibrated whatever the chain's correlations).  M1's
stationary χ² against ``N pi`` is left null: pi is the bigram chain's law, not
the order-N chain's.

``--chains B``: B chains in lock step (`run_order_chains`: chain b on its own
stream, chain 0 the single-chain run step for step), laid out as ``--chains``
lays out M1's: with JSONL, ``chain_<b>/m1_metrics.jsonl`` and
``chain_<b>/summary.json`` per chain; ``summary.json`` pools every chain's counts
(the transition χ² over all of them) and gives the spread of their acceptance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.core.statistics import pairs_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.contexts import ContextChunk, run_order_chain, run_order_chains, run_order_reference
from thermospec.runs.batch_run import chain_dir
from thermospec.runs.checklist import guide_checklist
from thermospec.runs.counted import CountedMode
from thermospec.runs.losses import Visits
from thermospec.runs.parquet_file import finish_parquet, parquet_write_failed
from thermospec.runs.prepare import PreparedRun, order_of
from thermospec.runs.schema import RecordParquet, layout
from thermospec.runs.storage import SUMMARY_FILE, OutputError, write_json_atomic
from thermospec.runs.summary import ACCEPT_OVERLAP_TOLERANCE, PSI_BYTES_LIMIT
from thermospec.runs.telemetry import PARQUET_FILE, step_arrays, step_columns

__all__ = ["ORDER", "OrderMode", "order_lines"]

ORDER = layout("context")
"""The records of order-N single-draft steps: the guide's 12 fields, then ``context``."""

_EMPTY = ("accept_rate", "mean_overlap", "mean_ce_gap", "chi2_stat", "chi2_dof", "p_value",
          "transition_chi2_stat", "transition_chi2_dof", "transition_p_value")


def order_lines(chunk: ContextChunk, tails: dict[int, str]) -> str:
    """The JSONL records of a chunk: the 12 fields, then ``context`` (`tails`: each context's `ORDER.key_tail`)."""
    return ORDER.lines(chunk.start, step_columns(chunk), list(map(tails.__getitem__, chunk.context.tolist())))


def _contexts(chunk: ChainChunk) -> NDArray[np.int64]:
    """The context id each step of an order-N chunk drafted in."""
    return cast(ContextChunk, chunk).context


class _ContextMetrics:
    """What the summary needs of each context's draft, by context id: overlap, CE gap, ψ bytes and K sent."""

    def __init__(self) -> None:
        self.met = np.zeros(0, dtype=np.bool_)
        self.overlap = np.zeros(0, dtype=np.float64)
        self.gap = np.zeros(0, dtype=np.float64)
        self.psi = np.zeros(0, dtype=np.int64)
        self.K = np.zeros(0, dtype=np.int64)

    def known(self, contexts: int) -> NDArray[np.bool_]:
        """Whether each context id below `contexts` (at least) was kept; the arrays grow to hold them."""
        if self.met.shape[0] < contexts:
            size = max(contexts, 2 * self.met.shape[0])
            for name in ("met", "overlap", "gap", "psi", "K"):
                old = getattr(self, name)
                grown = np.zeros(size, dtype=old.dtype)
                grown[:old.shape[0]] = old
                setattr(self, name, grown)
        return self.met

    def keep(self, contexts: NDArray[np.int64], overlap: NDArray[np.float64], gap: NDArray[np.float64],
             psi_bytes: int | NDArray[np.int64], K: int | NDArray[np.int64]) -> None:
        """Keep the metrics of `contexts` (ids below `known`'s bound)."""
        self.met[contexts] = True
        self.overlap[contexts], self.gap[contexts] = overlap, gap
        self.psi[contexts], self.K[contexts] = psi_bytes, K

    def of(self, contexts: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.float64],
                                                        NDArray[np.int64], NDArray[np.int64]]:
        """Overlap, CE gap, ψ bytes and K sent of `contexts`."""
        return self.overlap[contexts], self.gap[contexts], self.psi[contexts], self.K[contexts]


class OrderMode(CountedMode):
    """``--order N`` (N > 2): one order-N chain or `chains` in lock step, JSONL telemetry (or none).

    `run_dir` None runs in memory (one chain).  The mode's own counts pool every chain.
    """

    def __init__(self, run: PreparedRun, run_dir: Path | None, telemetry: str, chains: int = 1) -> None:
        target = order_of(run)
        if target is None:
            raise ValueError("OrderMode: the run's target is not an order-N target with N > 2")
        super().__init__(run, run_dir, telemetry, target.V, chains)
        self.target = target
        self._tails: dict[int, str] = {}
        self._metrics = _ContextMetrics()  # by context id: its draft's metrics (and text) once met
        self._crafted = False  # whether the engine crafted every context at once (rows at once too, then)
        self._stats: dict[str, Any] | None = None
        self._parquet = (RecordParquet(run_dir / PARQUET_FILE, ORDER, target.context_text, chains > 1)
                         if telemetry == "parquet" and run_dir is not None else None)

    def chunks(self) -> Iterator[ContextChunk] | Iterator[list[ContextChunk]]:
        config, proposer = self.run.config, self.run.proposer
        drafts, psi = proposer.draft, proposer.psi_spec  # None: ψ not from the target's rows, crafted one by one
        if self.chains > 1:
            return run_order_chains(self.target, drafts, config.steps, config.seed, self.chains, psi=psi)
        rng = random_stream(config.seed, Stream.CHAIN)
        if not proposer.samples_payload:  # a faulty TSU draws itself, step by step
            return iter([run_order_reference(self.target, drafts, config.steps, rng)])
        return run_order_chain(self.target, drafts, config.steps, rng, psi=psi)

    def record(self, chunk: ContextChunk | list[ContextChunk]) -> int:
        chunks = chunk if isinstance(chunk, list) else [chunk]
        for part in chunks:
            known = self._metrics.known(int(part.context.max()) + 1)
            fresh = np.flatnonzero(~known[part.context])  # steps in contexts not seen before
            met, first = np.unique(part.context[fresh], return_index=True)
            if not met.shape[0]:
                continue
            self._crafted |= part.metrics is not None
            if part.metrics is not None and part.state is not None and self.telemetry != "jsonl":
                metrics = part.metrics  # crafted at once: no draft objects
                states = part.state[fresh[first]]
                self._metrics.keep(met, metrics.overlap_mass[states], metrics.ce_gap_nats[states],
                                   metrics.psi_bytes, metrics.K)
                continue
            drafts = [self.run.proposer.draft(c) for c in met.tolist()]
            self._metrics.keep(met, np.array([d.overlap_mass for d in drafts], dtype=np.float64),
                               np.array([d.ce_gap_nats for d in drafts], dtype=np.float64),
                               np.array([d.psi_bytes for d in drafts]), np.array([d.payload.K for d in drafts]))
            if self.telemetry == "jsonl":
                for c, draft in zip(met.tolist(), drafts, strict=True):
                    self._tails[c] = ORDER.key_tail(draft, c, self.target.context_text)
        if self._parquet is not None:
            self._write_parquet(chunks)
        return self.write_and_count(chunks, lambda part: order_lines(cast(ContextChunk, part), self._tails),
                                    _contexts)

    def _write_parquet(self, chunks: list[ContextChunk]) -> None:
        """Every chain's rows of the chunk (a failed write: one line naming the file)."""
        assert self._parquet is not None
        try:
            for b, part in enumerate(chunks):
                self._parquet.write(part.start, part.context, step_arrays(part), self.run.proposer.draft, b)
        except OSError as exc:
            if isinstance(exc, OutputError):
                raise
            raise parquet_write_failed(self._parquet.path, exc) from None

    def close(self) -> str | None:
        """Finish the Parquet file (removed, saying so, if it cannot be read back), then the JSONL files."""
        try:
            if self._parquet is not None:
                finish_parquet(self._parquet)
        finally:
            digest = super().close()
        return digest

    def statistics(self, tests: bool = True) -> dict[str, Any]:
        """The run's aggregates (every chain's pooled); `tests` False leaves out the transition χ²."""
        pooled = self._statistics(self, tests)
        if self.chains == 1 or not self.steps:
            return pooled | ({"chains": self.chains} if self.chains > 1 else {})
        rates = np.array([mine.accepted / max(1, mine.steps) for mine in self.per_chain])
        if self.telemetry != "none" and self.run_dir is not None:
            kept = self._stats
            for b, mine in enumerate(self.per_chain):
                write_json_atomic(chain_dir(self.run_dir, b) / SUMMARY_FILE,
                                  self._statistics(mine, tests) | {"chain": b})
            self._stats = kept
        return pooled | {"chains": self.chains, "steps_per_chain": self.per_chain[0].steps,
                         "chain_accept_rate_min": float(rates.min()),
                         "chain_accept_rate_mean": float(rates.mean()),
                         "chain_accept_rate_max": float(rates.max())}

    def key_visits(self) -> Visits:
        """The contexts the steps were in (every chain's), with their rows from the move table."""
        return replace(super().key_visits(), rows=self._rows())

    def _rows(self) -> Callable[[NDArray[np.int64]], NDArray[np.float64]]:
        """The target's rows of an array of contexts: from the move table after a crafted run, else one by one."""
        moves = self.target.moves() if self._crafted else None

        def rows(contexts: NDArray[np.int64]) -> NDArray[np.float64]:
            if moves is None:
                return np.stack([self.target.row(c) for c in contexts.tolist()])
            states = moves.states_of(contexts)
            known = states >= 0
            out = np.empty((contexts.shape[0], self.target.V), dtype=np.float64)
            out[known] = moves.rows(states[known])
            for i in np.flatnonzero(~known).tolist():
                out[i] = self.target.row(int(contexts[i]))
            return out

        return rows

    def _statistics(self, counts: CountedMode, tests: bool) -> dict[str, Any]:
        """The aggregates of one set of counts (one chain's, or the pooled ones)."""
        if not counts.steps:
            self._stats = {"steps": 0, "checklist": {}}
            return {**dict.fromkeys(_EMPTY), "steps": 0}
        context, token, count = counts.pairs.pairs()
        visits = np.bincount(context, weights=count)
        visited = np.flatnonzero(visits)
        n = visits[visited]
        overlap, gap, psi, K = self._metrics.of(visited)
        steps = counts.steps
        accept_rate = counts.accepted / steps
        mean_overlap = math.fsum((n * overlap).tolist()) / steps
        infinite = ~np.isfinite(gap)
        infinite_steps = int(n[infinite].sum())
        mean_gap = None if infinite_steps else math.fsum((n * gap).tolist()) / steps
        transition = pairs_chi2(context, token, count, self.target.V, self._rows()) if tests else None
        psi_max = int(psi.max())
        self._stats = {
            "steps": steps,
            "accept_rate": accept_rate,
            "mean_overlap": mean_overlap,
            "accept_overlap_gap": abs(accept_rate - mean_overlap),
            "mean_ce_gap": mean_gap,
            "ce_gap_infinite_steps": infinite_steps,
            "chi2_stat": None,
            "chi2_dof": None,
            "p_value": None,
            "transition_chi2_stat": None if transition is None else transition.stat,
            "transition_chi2_dof": None if transition is None else transition.dof,
            "transition_p_value": None if transition is None else transition.p_value,
            "psi_bytes_max": psi_max,
            "K_sent_min": int(K.min()),
            "K_sent_max": int(K.max()),
            "contexts_visited": int(visited.shape[0]),
            "order": self.target.order,
            "checklist": {
                "accept_overlap_within_0.03": abs(accept_rate - mean_overlap) < ACCEPT_OVERLAP_TOLERANCE,
                "psi_bytes_le_1024": psi_max <= PSI_BYTES_LIMIT,
            },
        }
        return {k: v for k, v in self._stats.items() if k != "checklist"}

    def extras(self) -> dict[str, Any]:
        assert self._stats is not None, "extras() after statistics()"
        return {"checklist": guide_checklist(self.run, self._stats["checklist"])}
