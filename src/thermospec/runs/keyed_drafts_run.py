"""``run --drafts N`` on order-N contexts (``--corpus F --order N``) and on a trace (``--trace F``).

The engine is `engine.keyed_drafts`: each step drafts N tokens from ψ of its key
(an order-N context, a trace position), the key's verifier emits one token, and
the next key is the source's (the context after the token; position t + 1).

Telemetry (``m1_metrics.jsonl``): the guide's 12 fields as the source's
single-draft records have them, then its key as those records carry it
(``context``: the context's text; ``position``), then ``drafts_used`` and
``accepted_index`` as ``--drafts N`` writes them on the bigram chain;
``overlap_mass`` is the key's exact acceptance under the verifier.  With
``--telemetry parquet`` the same fields are the columns of ``m1_metrics.parquet``
(`runs.schema.RecordParquet`); ``--chains B`` lays the chains out as on the bigram chain
(chain b on ``chain_stream(seed, b)``; chain 0 is the single-chain run).  A TSU
whose draws are its own (``--tsu thrml``) runs the per-step reference, each
chain with its own TSUs (`runs.chain_tsus`).

Summary: the fields of the source's single-draft summary (order N: the
transition χ² per context; trace: `trace_statistics`' two χ²), the overlap being
the verifier's exact acceptance at each key, and the N-draft fields of the bigram
run, visit-weighted over the keys drafted in: ``single_draft_acceptance``,
``acceptance_bound``, ``acceptance_optimum``, ``gain_fraction``,
``mean_drafts_used`` (the optimum null beyond `OPTIMUM_MAX_ENTRIES`).  With B
chains, each chain's summary is beside its records.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.core.statistics import context_chi2
from thermospec.core.transport import acceptance_bound, acceptance_optimum
from thermospec.core.verifiers import VerifierPlan
from thermospec.engine.batch import chain_stream
from thermospec.engine.chain import DEFAULT_CHUNK
from thermospec.engine.drafts import plan_source
from thermospec.engine.keyed_drafts import KeyedDraftsChunk, run_keyed_drafts_chains
from thermospec.engine.keys import ContextSource
from thermospec.runs.batch_run import chain_dir
from thermospec.runs.chain_tsus import chain_drafts
from thermospec.runs.checklist import guide_checklist
from thermospec.runs.counted import CountedMode
from thermospec.runs.parquet_file import finish_parquet, parquet_write_failed
from thermospec.runs.prepare import PreparedRun, context_source, order_of, trace_of
from thermospec.runs.schema import Layout, RecordParquet, layout
from thermospec.runs.storage import SUMMARY_FILE, OutputError, write_json_atomic
from thermospec.runs.summary import ACCEPT_OVERLAP_TOLERANCE, PSI_BYTES_LIMIT
from thermospec.runs.telemetry import PARQUET_FILE, step_arrays, step_columns
from thermospec.runs.trace_run import trace_statistics
from thermospec.targets.trace import TraceShrankError
from thermospec.tsu.drafts import ContextDraft, DraftSource

__all__ = ["KEYED", "KeyedDraftsMode", "keyed_drafts_lines"]

KEYED = {"context": layout("context", drafts=True), "position": layout("position", drafts=True)}
"""The records of N-draft steps on order-N contexts and on a trace: the guide's 12 fields, the key,
``drafts_used`` and ``accepted_index``."""
OPTIMUM_MAX_ENTRIES = 1 << 24
"""The summary's ``acceptance_optimum`` (O(V log V) a key) is computed while visited keys x V stay within this;
above it (a long trace at a large V: ~50 ms a position at V = 50,257) it and ``gain_fraction`` are null."""


def keyed_drafts_lines(chunk: KeyedDraftsChunk, fields: Layout, prev_token: NDArray[np.int64],
                       tails: dict[int, str]) -> str:
    """The JSONL records of a chunk: the 12 fields, the key (in `tails`), ``drafts_used``, ``accepted_index``.

    `fields` is the source's layout (`KEYED`), `prev_token` each step's (-1: null); ``tails[key]`` is the
    key's `Layout.key_tail`, from ``"K"`` to its key field.
    """
    field = fields.field
    columns = step_columns(chunk) | {
        "prev_token": field["prev_token"].json_column(prev_token),
        "accepted": field["accepted"].json_column(chunk.accepted_index >= 0),
        "drafts_used": chunk.drafts_used.tolist(),
        "accepted_index": field["accepted_index"].json_column(chunk.accepted_index),
    }
    return fields.lines(chunk.start, columns, list(map(tails.__getitem__, chunk.prev.tolist())))


class KeyedDraftsMode(CountedMode):
    """``--drafts N`` with ``--order N`` or ``--trace``: one chain or B in lock step; JSONL, Parquet or none.

    `run_dir` None runs in memory (one chain).  The mode's own counts pool every chain.
    """

    def __init__(self, run: PreparedRun, run_dir: Path | None, telemetry: str, chains: int = 1) -> None:
        super().__init__(run, run_dir, telemetry, run.target.V, chains)
        self.source: ContextSource = context_source(run)
        self.order, self.trace = order_of(run), trace_of(run)
        self.key_name = "position" if self.trace is not None else "context"
        self.n, self.verifier = run.config.drafts, run.config.verifier
        plans = plan_source(self.source.row, run.proposer.draft, self.verifier, self.n)
        self._acceptance: dict[int, float] = {}  # kept when the engine builds a plan (plans are evicted)

        def kept(key: int) -> VerifierPlan:
            plan = plans(key)
            self._acceptance[key] = plan.acceptance
            return plan

        self.plans = kept
        self.draws = 0
        self._metrics: dict[int, tuple[float, float, int, int]] = {}  # overlap (the verifier's), CE gap, ψ bytes, K
        self._tails: dict[int, str] = {}
        self._stats: dict[str, Any] | None = None
        self._shrank = False
        tokens = None if self.trace is None else self.trace.tokens
        self._observed = None if self.trace is None else (
            np.full(self.trace.positions, -1, dtype=np.int64) if tokens is None
            else np.concatenate([[-1], np.asarray(tokens[:-1], dtype=np.int64)]))

        def view(key: int) -> ContextDraft:
            found = self._acceptance.get(key)
            return dataclasses.replace(run.proposer.draft(key),
                                       overlap_mass=self.plans(key).acceptance if found is None else found)

        self.view: DraftSource = lru_cache(maxsize=1 << 16)(view)
        self.layout = KEYED[self.key_name]
        self._parquet = (RecordParquet(run_dir / PARQUET_FILE, self.layout, self._key_text, chains > 1)
                         if telemetry == "parquet" and run_dir is not None else None)

    def _key_text(self, key: int) -> str:
        return str(key) if self.order is None else self.order.context_text(key)

    def _prev_token(self, chunk: KeyedDraftsChunk) -> NDArray[np.int64]:
        """Each step's ``prev_token`` (-1: null): the last token emitted, or on a trace the position's observed one."""
        return chunk.last_token if self._observed is None else self._observed[chunk.prev]

    def chunks(self) -> Iterator[list[KeyedDraftsChunk]]:
        config, proposer = self.run.config, self.run.proposer
        rngs = [chain_stream(config.seed, b) for b in range(self.chains)]  # chain 0: the single-chain stream
        own = chain_drafts(self.run, self.chains) if self.chains > 1 else None
        try:
            yield from run_keyed_drafts_chains(
                self.source, proposer.draft, self.n, self.verifier, config.steps, rngs, plans=self.plans,
                chunk=max(256, DEFAULT_CHUNK // self.chains),
                backend="auto" if proposer.samples_payload else "reference", chain_drafts=own)
        except TraceShrankError:  # the χ² (which reread the file) are then skipped
            self._shrank = True
            raise

    def _learn(self, keys: list[int]) -> None:
        """Each new key's metrics (its overlap: the verifier's acceptance) and its JSONL tail."""
        for key in keys:
            if key not in self._metrics:
                draft = self.view(key)
                self._metrics[key] = (draft.overlap_mass, draft.ce_gap_nats, draft.psi_bytes, draft.payload.K)
                if self.telemetry == "jsonl":
                    self._tails[key] = self.layout.key_tail(draft, key, self._key_text)

    def record(self, chunks: list[KeyedDraftsChunk]) -> int:
        """Write every chain's records of the chunk, then count it (a failed write counts none of it)."""
        for part in chunks:
            self._learn(np.unique(part.prev).tolist())
        if self._parquet is not None:
            try:
                for b, part in enumerate(chunks):
                    columns = step_arrays(part) | {"prev_token": self._prev_token(part),
                                                   "drafts_used": part.drafts_used,
                                                   "accepted_index": part.accepted_index}
                    self._parquet.write(part.start, part.prev, columns, self.view, chain=b)
            except OSError as exc:
                if isinstance(exc, OutputError):
                    raise
                raise parquet_write_failed(self._parquet.path, exc) from None
        units = self.write_and_count(
            chunks, lambda part: keyed_drafts_lines(cast(KeyedDraftsChunk, part), self.layout,
                                            self._prev_token(cast(KeyedDraftsChunk, part)), self._tails),
            lambda part: part.prev)
        self.draws += sum(int(part.drafts_used.sum()) for part in chunks)
        return units

    def close(self) -> str | None:
        try:
            if self._parquet is not None:
                finish_parquet(self._parquet)
        finally:
            digest = super().close()
        return digest

    def statistics(self, tests: bool = True) -> dict[str, Any]:
        """The pooled statistics (every chain's), each chain's beside its records; `tests` False: no χ²."""
        if not self.steps:
            self._stats = {"steps": 0, "checklist": {}}
            return {"steps": 0}
        tests = tests and not self._shrank
        if self.chains > 1 and self.telemetry != "none" and self.run_dir is not None:
            for b, mine in enumerate(self.per_chain):
                write_json_atomic(chain_dir(self.run_dir, b) / SUMMARY_FILE,
                                  {k: v for k, v in self._statistics(mine, tests).items() if k != "checklist"}
                                  | {"chain": b})
        stats = self._statistics(self, tests)
        self._stats = stats
        pooled = {k: v for k, v in stats.items() if k != "checklist"} | self._drafts_statistics(stats)
        if self.chains == 1:
            return pooled
        rates = np.array([mine.accepted / max(1, mine.steps) for mine in self.per_chain])
        return pooled | {"chains": self.chains, "steps_per_chain": self.per_chain[0].steps,
                         "chain_accept_rate_min": float(rates.min()), "chain_accept_rate_mean": float(rates.mean()),
                         "chain_accept_rate_max": float(rates.max())}

    def _statistics(self, counts: CountedMode, tests: bool) -> dict[str, Any]:
        """The source's single-draft aggregates of one set of counts, the overlap being the verifier's."""
        if self.trace is not None:
            per_chain = counts.steps // (self.chains if counts is self else 1)
            return trace_statistics(self.trace, per_chain, counts.accepted, self._metrics, counts.emitted_counts,
                                    counts.pairs if tests else None, chains=self.chains if counts is self else 1)
        context, _, count = counts.pairs.pairs()
        visits = np.bincount(context, weights=count)
        visited = np.flatnonzero(visits).tolist()
        per = [(float(visits[c]), self._metrics[c]) for c in visited]
        steps = counts.steps
        accept_rate = counts.accepted / steps
        mean_overlap = math.fsum(n * m[0] for n, m in per) / steps
        infinite = int(sum(n for n, m in per if not math.isfinite(m[1])))
        transition = context_chi2(counts.pairs.contexts(), self.source.row) if tests else None
        psi_max = max(m[2] for _, m in per)
        assert self.order is not None
        return {
            "steps": steps, "accept_rate": accept_rate, "mean_overlap": mean_overlap,
            "accept_overlap_gap": abs(accept_rate - mean_overlap),
            "mean_ce_gap": None if infinite else math.fsum(n * m[1] for n, m in per) / steps,
            "ce_gap_infinite_steps": infinite, "chi2_stat": None, "chi2_dof": None, "p_value": None,
            "transition_chi2_stat": None if transition is None else transition.stat,
            "transition_chi2_dof": None if transition is None else transition.dof,
            "transition_p_value": None if transition is None else transition.p_value,
            "psi_bytes_max": psi_max, "K_sent_min": min(m[3] for _, m in per),
            "K_sent_max": max(m[3] for _, m in per), "contexts_visited": len(visited), "order": self.order.order,
            "checklist": {"accept_overlap_within_0.03": abs(accept_rate - mean_overlap) < ACCEPT_OVERLAP_TOLERANCE,
                          "psi_bytes_le_1024": psi_max <= PSI_BYTES_LIMIT},
        }

    def _drafts_statistics(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The N-draft fields, visit-weighted over the keys drafted in (every chain's)."""
        context, _, count = self.pairs.pairs()
        visits = np.bincount(context, weights=count)
        visited = np.flatnonzero(visits).tolist()
        drafts, row, n = self.run.proposer.draft, self.source.row, self.n

        def mean(value: Callable[[int], float]) -> float:
            return math.fsum(float(visits[k]) * value(k) for k in visited) / self.steps

        single = mean(lambda k: drafts(k).overlap_mass)
        solve = len(visited) * self.source.V <= OPTIMUM_MAX_ENTRIES
        bounds, optima = [], []
        for k in visited:  # F(ψ) of a key built once for both
            p, q = row(k), drafts(k).tsu.q
            bounds.append(float(visits[k]) * acceptance_bound(p, q, n))
            optima.append(float(visits[k]) * acceptance_optimum(p, q, n) if solve else 0.0)
        bound, optimum = math.fsum(bounds) / self.steps, math.fsum(optima) / self.steps
        rate = stats["accept_rate"]
        return {
            "drafts": n,
            "verifier": self.verifier,
            "mean_drafts_used": self.draws / self.steps,
            "single_draft_acceptance": single,
            "acceptance_bound": bound,
            "acceptance_optimum": optimum if solve else None,
            "gain_fraction": (rate - single) / (optimum - single) if solve and optimum - single > 1e-12 else None,
        }

    def extras(self) -> dict[str, Any]:
        assert self._stats is not None, "extras() after statistics()"
        found: dict[str, Any] = {"checklist": guide_checklist(self.run, self._stats["checklist"])}
        backend = self.run.proposer.backend
        if backend is not None:
            found["tsu_backend"] = backend
        if self.chains > 1:
            found["streams"] = ("chain 0: random_stream(seed, CHAIN) (the single-chain run); "
                                "chain b: random_stream(seed, CHAIN, b)")
        return found
