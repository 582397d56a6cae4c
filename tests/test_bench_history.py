"""The bench's comparisons: earlier commits it cannot find are skipped in one line, outputs are compared,
and the C limit (written from the specification, not from the kernel) emits thermospec's tokens."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import history
from benchmarks.history import Checkouts, Tree, alternated, bench_check, bench_grid, bench_sinks
from benchmarks.limit import build, dump_chains, dump_model, run_limit
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import run_chain, start_token
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import prepare_run


def test_a_commit_the_history_lacks_skips_its_sections_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "0" * 40
    monkeypatch.setattr(history, "GRID_COMMIT", missing)
    monkeypatch.setattr(history, "SINK_COMMIT", missing)
    checkouts = Checkouts()
    try:
        for rows in (bench_grid(checkouts, 10, 1), bench_check(checkouts, 1), bench_sinks(checkouts, 10, 1)):
            assert len(rows) == 1
            _, value, note = rows[0]
            assert value == "skipped" and missing in note and "\n" not in note
    finally:
        checkouts.close()


def test_alternated_runs_each_side_in_turn_and_compares_outputs() -> None:
    old, new = Tree(Path("old"), "old"), Tree(Path("new"), "new")
    calls: list[str] = []

    def same(tree: Tree) -> tuple[float, str]:
        calls.append(tree.label)
        return (2.0 if tree is old else 1.0), "rows"

    olds, news, agree = alternated(old, new, same, 3)
    assert calls == ["old", "new"] * 4 and olds == [2.0] * 3 and news == [1.0] * 3 and agree

    def differs(tree: Tree) -> tuple[float, str]:  # negative control: one side prints other rows
        return 1.0, tree.label

    assert not alternated(old, new, differs, 2)[2]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) to build the C limit")
def test_the_c_limit_emits_thermospecs_tokens(tmp_path: Path) -> None:
    run = prepare_run(RunConfig(vocab=24, c=2.0, K=3, seed=4))
    target, steps = run.target, 3000
    exe = build(tmp_path)
    assert exe is not None
    dump_model(run, tmp_path / "model.bin")
    rng = random_stream(4, Stream.CHAIN)
    dump_chains(tmp_path / "chains.bin", np.array([start_token(target.pi, rng)], dtype=np.int64), [rng])
    limit = run_limit(exe, tmp_path, steps, 1, dump=True)
    chunks = list(run_chain(target.row, target.pi, run.proposer.draft, steps, random_stream(4, Stream.CHAIN)))
    emitted = np.concatenate([c.emitted for c in chunks])
    assert limit.emitted is not None
    np.testing.assert_array_equal(limit.emitted, emitted)
    assert limit.accepted == sum(int(np.count_nonzero(c.accepted)) for c in chunks)
    assert 0 < limit.accepted < steps  # both halves of the step ran
    # negative control: another stream gives other tokens
    other = random_stream(5, Stream.CHAIN)
    dump_chains(tmp_path / "chains.bin", np.array([start_token(target.pi, other)], dtype=np.int64), [other])
    shifted = run_limit(exe, tmp_path, steps, 1, dump=True).emitted
    assert shifted is not None and not np.array_equal(shifted, emitted)
