"""``run --order N --telemetry none`` counts in the kernel (`engine.context_counts`), with no step array.

The counted path must give the summary the recorded one gives, value for value: the same steps,
acceptance, visit-weighted overlap and CE gap, transition χ², loss split and checklist.  Runs long
enough to take it (`count_order_chain` applies from ``steps >= states / 10``) are compared with the
same run recorded as JSONL; a run too short for it must still be the recorded one's.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

import thermospec
from thermospec.engine import context_counts

DIFFERENT_BY_SINK = {"telemetry", "metrics_sha256", "elapsed_s", "tokens_per_s"}


def _summary(tmp_path: Path, telemetry: str, corpus: Path, **options: Any) -> dict[str, Any]:
    result = thermospec.run(corpus=str(corpus), K=8, telemetry=telemetry, runs_dir=str(tmp_path / telemetry),
                            **options)
    return {k: v for k, v in result.summary.record.items() if k not in DIFFERENT_BY_SINK}


@pytest.mark.parametrize(("order", "steps", "seed"), [(5, 20_000, 3), (4, 30_000, 11)])
def test_the_counted_order_run_summarises_as_the_recorded_one(order: int, steps: int, seed: int, tmp_path: Path,
                                                              shakespeare: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    used = {"counted": 0}
    real = context_counts.count_order_chain

    def watched(*args: Any, **kwargs: Any) -> Any:
        tallies = real(*args, **kwargs)
        used["counted"] += tallies is not None
        return tallies

    monkeypatch.setattr("thermospec.runs.order_run.count_order_chain", watched)
    counted = _summary(tmp_path, "none", shakespeare, order=order, steps=steps, seed=seed)
    assert used["counted"] == 1, "the run did not take the counted path"
    recorded = _summary(tmp_path, "jsonl", shakespeare, order=order, steps=steps, seed=seed)
    assert counted == recorded


def test_a_run_too_short_to_count_is_recorded_and_summarised_alike(tmp_path: Path, shakespeare: Path) -> None:
    none = _summary(tmp_path, "none", shakespeare, order=5, steps=500, seed=2)
    assert none == _summary(tmp_path, "jsonl", shakespeare, order=5, steps=500, seed=2)


def test_a_signal_while_the_kernel_counts_leaves_a_summary_of_exactly_the_steps_counted(
    tmp_path: Path, shakespeare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT arrives just after the kernel has counted a chunk into its tally (the worst moment): that chunk
    must be finished and summarised, not dropped with its counts left in the tally (overlap came out > 1)."""
    real = context_counts.count_order_chain

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        tallies = real(*args, **{**kwargs, "chunk": 4096})
        assert tallies is not None

        def signalled() -> Any:
            for i, tally in enumerate(tallies):
                if i == 3:
                    os.kill(os.getpid(), signal.SIGINT)  # handled at once: inside the chunk's computation
                yield tally

        return signalled()

    monkeypatch.setattr("thermospec.runs.order_run.count_order_chain", interrupted)
    result = thermospec.run(corpus=str(shakespeare), K=8, order=5, steps=40_000, seed=5, telemetry="none",
                            runs_dir=str(tmp_path))
    record = result.summary.record
    assert record["interrupted"] is True and record["interrupted_by"] == "SIGINT"
    assert record["steps"] == 4 * 4096, record["steps"]  # the chunk being computed was finished
    assert record["mean_overlap"] <= 1 and record["accept_overlap_gap"] < 0.03, record
