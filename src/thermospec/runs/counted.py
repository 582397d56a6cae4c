"""What the modes that write their own records and count their own steps share (``--order N``, ``--trace``, and
``--drafts N`` on either): records, counts, per-key metrics, and pooled and per-chain summaries.

A mode (`OrderMode`, `TraceMode`, `KeyedDraftsMode`) says only what is its own: its engine's chunks, its
records' `Layout` and each chunk's keys and step columns, and the single-draft aggregates of one set of counts
(`CountedMode.counted_statistics`, mostly `visit_aggregates` with the source's χ²).  `CountedMode` writes the
JSONL or Parquet records of every chain (`runs.telemetry.ChainRecords`, as the bigram chain's ``--chains B`` and
``--drafts N`` do), counts each chain and all of them, keeps each key's draft metrics once, and, with B chains,
writes each chain's ``chain_<b>/summary.json`` and pools the chains in ``summary.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from thermospec.core.statistics import Chi2Result
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.pairs import PairCounts
from thermospec.runs.batch_run import chain_spread
from thermospec.runs.checklist import guide_checklist
from thermospec.runs.losses import Visits, visits_of
from thermospec.runs.prepare import PreparedRun
from thermospec.runs.schema import Layout
from thermospec.runs.storage import SUMMARY_FILE, chain_dir, write_json_atomic
from thermospec.runs.summary import ACCEPT_OVERLAP_TOLERANCE, PSI_BYTES_LIMIT
from thermospec.runs.telemetry import ChainRecords
from thermospec.tsu.drafts import DraftRecord, RecordSource

__all__ = ["CountedMode", "KeyMetrics", "chi2_fields", "visit_aggregates"]

MetricArrays = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]
"""Overlap, CE gap, ψ bytes and K sent of some keys."""
ChunkArrays = Callable[[ChainChunk], NDArray[np.int64]]
"""A chunk's array of one value per step (its keys)."""


class KeyMetrics:
    """What the summary needs of each key's draft, by key id: overlap, CE gap, ψ bytes and K sent."""

    def __init__(self) -> None:
        self.met = np.zeros(0, dtype=np.bool_)
        self.overlap = np.zeros(0, dtype=np.float64)
        self.gap = np.zeros(0, dtype=np.float64)
        self.psi = np.zeros(0, dtype=np.int64)
        self.K = np.zeros(0, dtype=np.int64)

    def known(self, keys: int) -> NDArray[np.bool_]:
        """Whether each key id below `keys` (at least) was kept; the arrays grow to hold them."""
        if self.met.shape[0] < keys:
            size = max(keys, 2 * self.met.shape[0])
            for name in ("met", "overlap", "gap", "psi", "K"):
                old = getattr(self, name)
                grown = np.zeros(size, dtype=old.dtype)
                grown[:old.shape[0]] = old
                setattr(self, name, grown)
        return self.met

    def keep(self, keys: NDArray[np.int64], overlap: NDArray[np.float64], gap: NDArray[np.float64],
             psi_bytes: int | NDArray[np.int64], K: int | NDArray[np.int64]) -> None:
        """Keep the metrics of `keys` (ids below `known`'s bound)."""
        self.met[keys] = True
        self.overlap[keys], self.gap[keys] = overlap, gap
        self.psi[keys], self.K[keys] = psi_bytes, K

    def keep_drafts(self, keys: NDArray[np.int64], drafts: Sequence[DraftRecord]) -> None:
        """Keep the metrics of each key's draft."""
        self.keep(keys, np.array([d.overlap_mass for d in drafts], dtype=np.float64),
                  np.array([d.ce_gap_nats for d in drafts], dtype=np.float64),
                  np.array([d.psi_bytes for d in drafts], dtype=np.int64),
                  np.array([d.K for d in drafts], dtype=np.int64))

    def of(self, keys: NDArray[np.int64]) -> MetricArrays:
        """Overlap, CE gap, ψ bytes and K sent of `keys`."""
        return self.overlap[keys], self.gap[keys], self.psi[keys], self.K[keys]


def chi2_fields(result: Chi2Result | None, prefix: str = "") -> dict[str, Any]:
    """A χ² test's three summary fields (``<prefix>chi2_stat``, ``_dof``, ``<prefix>p_value``), null if not run."""
    return {f"{prefix}chi2_stat": None if result is None else result.stat,
            f"{prefix}chi2_dof": None if result is None else result.dof,
            f"{prefix}p_value": None if result is None else result.p_value}


def visit_aggregates(steps: int, accepted: int, visits: NDArray[np.float64], metrics: MetricArrays,
                     tests: Mapping[str, Any], visited: Mapping[str, Any]) -> dict[str, Any]:
    """The single-draft aggregates of `steps` steps, each visited key weighted by its `visits`.

    Fields: ``steps``, the acceptance and the visit-weighted overlap and CE gap, the source's χ² fields
    (`tests`), the ψ bytes and K sent, the source's count of keys visited (`visited`), then the
    ``checklist`` items the run measures.
    """
    overlap, gap, psi, K = metrics
    accept_rate = accepted / steps
    mean_overlap = math.fsum((visits * overlap).tolist()) / steps
    infinite_steps = int(visits[~np.isfinite(gap)].sum())
    psi_max = int(psi.max())
    return {
        "steps": steps,
        "accept_rate": accept_rate,
        "mean_overlap": mean_overlap,
        "accept_overlap_gap": abs(accept_rate - mean_overlap),
        "mean_ce_gap": None if infinite_steps else math.fsum((visits * gap).tolist()) / steps,
        "ce_gap_infinite_steps": infinite_steps,
        **tests,
        "psi_bytes_max": psi_max,
        "K_sent_min": int(K.min()),
        "K_sent_max": int(K.max()),
        **visited,
        "checklist": {
            "accept_overlap_within_0.03": abs(accept_rate - mean_overlap) < ACCEPT_OVERLAP_TOLERANCE,
            "psi_bytes_le_1024": psi_max <= PSI_BYTES_LIMIT,
        },
    }


def _shown(stats: Mapping[str, Any]) -> dict[str, Any]:
    """A summary's fields but its ``checklist`` items (those go through `guide_checklist`)."""
    return {k: v for k, v in stats.items() if k != "checklist"}


class CountedMode:
    """A mode's records and counts over V tokens, for one chain or `chains` in lock step.

    One chain: ``m1_metrics.jsonl`` in `run_dir` with ``jsonl`` telemetry (else none; `run_dir` None runs
    in memory).  B chains: ``chain_<b>/m1_metrics.jsonl`` (``jsonl``), each chain's own counts
    (`per_chain`, for its ``chain_<b>/summary.json``), and this mode's counts pooling every chain.  With
    ``parquet`` telemetry and a `records` layout, every chain's records in ``m1_metrics.parquet``.
    `key_text` is a key's text, for a ``context`` field.
    """

    @property
    def counted_by_engine(self) -> bool:
        """Whether the engine counts a chunk as it computes it (`Mode.counted_by_engine`); here each chunk is
        counted as it is recorded."""
        return False

    SPREAD_MEAN: ClassVar[bool] = True
    """Whether the pooled summary of B chains gives their mean acceptance beside its min and max."""

    def __init__(self, run: PreparedRun, run_dir: Path | None, telemetry: str, V: int, chains: int = 1,
                 records: Layout | None = None, key_text: Callable[[int], str] | None = None) -> None:
        if chains < 1 or (chains > 1 and run_dir is None):
            raise ValueError(f"chains must be >= 1 (B > 1 writes into a run folder), got {chains}")
        self.run, self.telemetry, self.chains, self.run_dir = run, telemetry, chains, run_dir
        self.layout, self.key_text = records, key_text
        self.records: ChainRecords[ChainChunk] = ChainRecords(run_dir, telemetry, chains, records, key_text)
        self.steps = self.accepted = 0
        self.emitted_counts: NDArray[np.int64] = np.zeros(V, dtype=np.int64)
        self.pairs = PairCounts(V)
        self.metrics = KeyMetrics()  # by key: its draft's metrics once met
        self.tails: dict[int, str] = {}  # by key: its records' key fields as JSON (`Layout.key_tail`), with JSONL
        self._stats: dict[str, Any] | None = None
        self._shrank = False  # whether the source's file shrank under the run (its χ² are then skipped)
        self.per_chain: list[CountedMode] = []
        if chains > 1 and run_dir is not None:
            self.per_chain = [CountedMode(run, None, telemetry, V) for _ in range(chains)]

    def learn(self, keys: NDArray[np.int64], drafts: RecordSource) -> None:
        """Keep the metrics (and, with JSONL, the key fields' text) of the keys in `keys` not met before."""
        if not keys.shape[0]:
            return
        known = self.metrics.known(int(keys.max()) + 1)
        met = np.unique(keys[~known[keys]])
        if not met.shape[0]:
            return
        self.keep_records(met, [drafts(k) for k in met.tolist()])

    def keep_records(self, keys: NDArray[np.int64], records: Sequence[DraftRecord]) -> None:
        """Keep the metrics (and, with JSONL, the key fields' text) of `keys` from their drafts' `records`."""
        self.metrics.keep_drafts(keys, records)
        if self.telemetry == "jsonl" and self.layout is not None:
            for key, record in zip(keys.tolist(), records, strict=True):
                self.tails[key] = self.layout.key_tail(record, key, self.key_text)

    def write_and_count(self, chunks: Sequence[ChainChunk], lines: Callable[[ChainChunk], str], keys: ChunkArrays,
                        columns: Callable[[ChainChunk], Mapping[str, NDArray[Any]]] | None = None,
                        drafts: RecordSource | None = None) -> int:
        """Write each chain's chunk (`lines` formats its JSONL; `columns` are its Parquet step columns, `drafts`
        its keys' drafts) and count it by its `keys`; the steps added.  A failed write counts none of it."""
        self.records.write(chunks, lines, columns, keys, drafts)
        for part, mine in zip(chunks, self.per_chain, strict=False):
            mine.count(part, keys(part))
        return sum(self.count(part, keys(part)) for part in chunks)

    def count(self, chunk: ChainChunk, contexts: NDArray[np.int64]) -> int:
        """Add a chunk's steps, acceptances, emitted tokens and (context, token) pairs; its length."""
        self.steps += len(chunk)
        self.accepted += int(np.count_nonzero(chunk.accepted))
        self.emitted_counts += np.bincount(chunk.emitted, minlength=self.emitted_counts.shape[0])
        self.pairs.add(contexts, chunk.emitted)
        return len(chunk)

    def close(self) -> str | None:
        """Finish the Parquet file (removed, saying so, if it cannot be read back), then close the JSONL files;
        the single chain's SHA-256 (None without JSONL or with B chains)."""
        return self.records.close()

    def tokens(self) -> int:
        """Steps recorded so far."""
        return self.steps

    def key_visits(self) -> Visits:
        """The keys the steps were counted by (every chain's) and how often."""
        context, _, count = self.pairs.pairs()
        visits = np.bincount(context, weights=count) if context.size else np.zeros(0)
        return visits_of(visits)

    def complete(self) -> bool:
        """Whether every asked-for step was run, in every chain."""
        return self.steps >= self.run.config.steps * self.chains

    def statistics(self, tests: bool = True) -> dict[str, Any]:
        """The run's aggregates, every chain's counts pooled (`counted_statistics`, then `mode_statistics`),
        with B chains their acceptance spread, each chain's own summary beside its records; `tests` False
        (or a source file that shrank under the run) leaves out the χ²."""
        if not self.steps:
            self._stats = {"steps": 0, "checklist": {}}
            return self.nothing_counted()
        tests = tests and not self._shrank
        if self.chains > 1 and self.telemetry != "none" and self.run_dir is not None:
            for b, mine in enumerate(self.per_chain):
                write_json_atomic(chain_dir(self.run_dir, b) / SUMMARY_FILE,
                                  _shown(self.counted_statistics(mine, tests)) | {"chain": b})
        self._stats = self.counted_statistics(self, tests)
        pooled = _shown(self._stats) | self.mode_statistics()
        if self.chains == 1:
            return pooled
        rates = np.array([mine.accepted / max(1, mine.steps) for mine in self.per_chain])
        return pooled | chain_spread(self.per_chain[0].steps, rates, self.SPREAD_MEAN)

    def nothing_counted(self) -> dict[str, Any]:
        """The statistics of a run stopped before its first chunk."""
        return {"steps": 0}

    def counted_statistics(self, counts: CountedMode, tests: bool) -> dict[str, Any]:
        """The single-draft aggregates of one set of counts (one chain's, or `self`: every chain's), with the
        ``checklist`` items the run measures; `tests`: with the source's χ²."""
        raise NotImplementedError

    def mode_statistics(self) -> dict[str, Any]:
        """Fields of the pooled summary after the aggregates (none here)."""
        return {}

    def extras(self) -> dict[str, Any]:
        """The guide's checklist of the run."""
        assert self._stats is not None, "extras() after statistics()"
        return {"checklist": guide_checklist(self.run, self._stats["checklist"])}
