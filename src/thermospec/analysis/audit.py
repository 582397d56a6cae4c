"""Recomputing a run's aggregates from its JSONL alone, to audit a ``summary.json``.

Every aggregate of the summary is a function of the JSONL records (SPEC §6):
`audit_jsonl` streams the records once, in constant memory, and returns the
step count, acceptance rate, mean overlap, mean CE gap, the emitted-token counts
and the standard error of ``accept_rate - mean_overlap`` (given the contexts,
each step is accepted independently with probability its overlap, so
``SE = sqrt(sum_t a_t (1 - a_t)) / N``).  The signal tests and the long-run
stability measurement compare these with the summary.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = ["AuditResult", "audit_jsonl", "audit_parquet"]


@dataclass(frozen=True)
class AuditResult:
    """Aggregates recomputed from the records of a JSONL file.

    Attributes
    ----------
    steps : int
    accept_rate, mean_overlap : float
    mean_ce_gap : float or None
        None when some step's gap is null (infinite).
    emitted_counts : ndarray of int64, shape (V,)
    accept_overlap_se : float
        Standard error of ``accept_rate - mean_overlap``.
    whole_lines : bool
        Whether the file ends with a newline (no torn last record).
    """

    steps: int
    accept_rate: float
    mean_overlap: float
    mean_ce_gap: float | None
    emitted_counts: NDArray[np.int64]
    accept_overlap_se: float
    whole_lines: bool

    @property
    def accept_overlap_z(self) -> float:
        """``(accept_rate - mean_overlap) / SE``."""
        return (self.accept_rate - self.mean_overlap) / self.accept_overlap_se if self.accept_overlap_se else 0.0


def audit_jsonl(path: Path, vocab_size: int) -> AuditResult:
    """Stream the records of `path` and recompute the run's aggregates.

    Raises
    ------
    ValueError
        A line that is not a JSON record, or steps out of order.
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    accepted = 0
    steps = 0
    # Per-context sums: each context's metrics are constant, so count steps per distinct value.
    overlap: dict[float, int] = {}
    ce_gap: dict[float, int] = {}
    infinite = False
    whole = True
    emitted_chunk: list[int] = []
    with path.open("rb") as lines:
        for raw in lines:
            if not raw.endswith(b"\n"):
                whole = False
            record = json.loads(raw)
            if record["step"] != steps:
                raise ValueError(f"{path}: step {record['step']} at line {steps + 1}")
            steps += 1
            accepted += record["accepted"] is True
            emitted_chunk.append(record["emitted_token"])
            if len(emitted_chunk) >= 1 << 16:
                counts += np.bincount(emitted_chunk, minlength=vocab_size)
                emitted_chunk.clear()
            a = record["overlap_mass"]
            overlap[a] = overlap.get(a, 0) + 1
            gap = record["ce_gap_nats"]
            if gap is None:
                infinite = True
            else:
                ce_gap[gap] = ce_gap.get(gap, 0) + 1
    if emitted_chunk:
        counts += np.bincount(emitted_chunk, minlength=vocab_size)
    return _result(steps, accepted, overlap, None if infinite else ce_gap, counts, whole)


def audit_parquet(path: Path, vocab_size: int) -> AuditResult:
    """`audit_jsonl` for ``m1_metrics.parquet`` (``--telemetry parquet``), read a row group at a time.

    Raises
    ------
    ValueError
        Steps out of order, or a file with a ``chain`` column (a ``--chains`` run: audit one chain).
    """
    import pyarrow.parquet as pq  # optional extra: only Parquet audits pay for it

    columns = ["step", "accepted", "emitted_token", "overlap_mass", "ce_gap_nats"]
    reader = pq.ParquetFile(path)
    if "chain" in reader.schema_arrow.names:
        raise ValueError(f"{path}: holds several chains (a --chains run); audit_run audits single runs")
    counts = np.zeros(vocab_size, dtype=np.int64)
    accepted = steps = 0
    overlap: dict[float, int] = {}
    ce_gap: dict[float, int] = {}
    infinite = False
    for batch in reader.iter_batches(columns=columns):
        step = batch.column("step").to_numpy()
        if step.shape[0] and not np.array_equal(step, np.arange(steps, steps + step.shape[0])):
            raise ValueError(f"{path}: steps out of order after step {steps}")
        steps += int(step.shape[0])
        accepted += int(np.count_nonzero(batch.column("accepted").to_numpy(zero_copy_only=False)))
        counts += np.bincount(batch.column("emitted_token").to_numpy(), minlength=vocab_size)
        values, times = np.unique(batch.column("overlap_mass").to_numpy(), return_counts=True)
        for a, n in zip(values.tolist(), times.tolist(), strict=True):
            overlap[a] = overlap.get(a, 0) + n
        gaps = batch.column("ce_gap_nats")
        infinite = infinite or gaps.null_count > 0
        values, times = np.unique(gaps.drop_null().to_numpy(), return_counts=True)
        for g, n in zip(values.tolist(), times.tolist(), strict=True):
            ce_gap[g] = ce_gap.get(g, 0) + n
    return _result(steps, accepted, overlap, None if infinite else ce_gap, counts, True)


def _result(steps: int, accepted: int, overlap: dict[float, int], ce_gap: dict[float, int] | None,
            counts: NDArray[np.int64], whole: bool) -> AuditResult:
    """The aggregates of the counted records; `ce_gap` None when some step's gap was infinite."""
    if steps == 0:
        return AuditResult(0, math.nan, math.nan, None, counts, math.nan, whole)
    variance = math.fsum(n * a * (1.0 - a) for a, n in overlap.items())
    return AuditResult(
        steps=steps,
        accept_rate=accepted / steps,
        mean_overlap=math.fsum(n * a for a, n in overlap.items()) / steps,
        mean_ce_gap=None if ce_gap is None else math.fsum(n * g for g, n in ce_gap.items()) / steps,
        emitted_counts=counts,
        accept_overlap_se=math.sqrt(variance) / steps,
        whole_lines=whole,
    )
