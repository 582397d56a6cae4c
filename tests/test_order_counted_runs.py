"""``run --order N --telemetry none`` counts in the kernel (`engine.context_counts`), with no step array.

The counted path must give the summary the recorded one gives, value for value: the same steps,
acceptance, visit-weighted overlap and CE gap, transition χ², loss split and checklist.  Runs long
enough to take it (`count_order_chain` applies from ``steps >= states / 10``) are compared with the
same run recorded as JSONL; a run too short for it must still be the recorded one's.
"""

from __future__ import annotations

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
