"""The compiled γ-block kernel (`engine.block_kernel`) gives the Python loop's blocks, field for field, on every key.

Bigram chain, trace positions and order-N states (the move table: the context ids, interned in the
order the blocks reach them, are the same), chunks cut anywhere (the last one's early break), slots
cleared when full, and the fixed-context blocks of the checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.make_trace import write_trace
from tests.conftest import CORPUS_CANDIDATES, run_cli
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.block_kernel import blocks_module, compiled_fixed_blocks
from thermospec.engine.blocks import fixed_context_blocks, run_blocks, run_blocks_reference
from thermospec.engine.chunks import BlockChunk
from thermospec.engine.keys import BigramSource
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import context_source, prepare_run

FIELDS = ("first_step", "context", "drafted", "accepted_length", "final", "draft_keys")

pytestmark = pytest.mark.skipif(blocks_module() is None, reason="the compiled block kernel is not built")


def chunks_of(config: RunConfig, gamma: int, steps: int, chunk: int, table_bytes: int = 1 << 28
              ) -> list[BlockChunk]:
    run = prepare_run(config)  # a fresh target: an order-N target interns its contexts anew
    return list(run_blocks(context_source(run), run.proposer.draft, gamma, steps, random_stream(5, Stream.CHAIN),
                           chunk=chunk, table_bytes=table_bytes))


def assert_same(compiled: list[BlockChunk], python: list[BlockChunk]) -> None:
    assert [c.start for c in compiled] == [c.start for c in python]
    for a, b in zip(compiled, python, strict=True):
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def both(monkeypatch: pytest.MonkeyPatch, config: RunConfig, gamma: int, steps: int, chunk: int,
         table_bytes: int = 1 << 28) -> list[BlockChunk]:
    monkeypatch.setenv("THERMOSPEC_KERNEL", "python")
    python = chunks_of(config, gamma, steps, chunk, table_bytes)
    monkeypatch.delenv("THERMOSPEC_KERNEL")
    compiled = chunks_of(config, gamma, steps, chunk, table_bytes)
    assert_same(compiled, python)
    return compiled


@pytest.mark.parametrize(("gamma", "chunk"), [(1, 1024), (3, 7), (4, 1000), (9, 64)])
def test_bigram_blocks(monkeypatch: pytest.MonkeyPatch, gamma: int, chunk: int) -> None:
    blocks = both(monkeypatch, RunConfig(vocab=48, c=3.0, K=4, seed=2), gamma, 6000, chunk)
    assert sum(int(c.accepted_length.sum()) + len(c) for c in blocks) >= 6000


def test_bigram_blocks_with_few_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """γ + 2 slots, cleared again and again: the same blocks."""
    both(monkeypatch, RunConfig(vocab=48, c=3.0, K=4, seed=2), 4, 3000, 256, table_bytes=1)


def test_trace_blocks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.npz", 12, 40, 1.2, 5, tokens=True, progress=False)
    for table_bytes in (1 << 28, 1):
        both(monkeypatch, RunConfig(trace=str(trace), K=4), 3, 2500, 100, table_bytes)


@pytest.mark.parametrize(("order", "gamma", "chunk"), [(4, 3, 1024), (5, 2, 37)])
def test_order_blocks_on_the_move_table(monkeypatch: pytest.MonkeyPatch, order: int, gamma: int, chunk: int) -> None:
    corpus = next((p for p in CORPUS_CANDIDATES if p.is_file()), None)
    if corpus is None:
        pytest.skip("no corpus")
    config = RunConfig(corpus=str(corpus), K=8, order=order)
    assert prepare_run(config).target.moves() is not None  # type: ignore[attr-defined]
    both(monkeypatch, config, gamma, 3000, chunk)


def test_compiled_blocks_are_algorithm_1() -> None:
    run = prepare_run(RunConfig(vocab=16, c=3.0, K=2, tau=1.3, seed=3))
    source = BigramSource(run.target)
    fast = list(run_blocks(source, run.proposer.draft, 5, 2000, random_stream(7, Stream.CHAIN), chunk=50))
    slow = run_blocks_reference(source, run.proposer.draft, 5, 2000, random_stream(7, Stream.CHAIN))
    for name in FIELDS:
        np.testing.assert_array_equal(np.concatenate([getattr(c, name) for c in fast]), getattr(slow, name))


def test_fixed_context_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    run = prepare_run(RunConfig(vocab=24, c=2.0, K=3, seed=4))
    t, source = run.target, BigramSource(run.target)
    x = int(np.argmax(t.pi))
    made = []
    for kernel in ("python", ""):
        monkeypatch.setenv("THERMOSPEC_KERNEL", kernel)
        made.append(fixed_context_blocks(t.row, run.proposer.draft, t.V, x, 4, 3000, np.random.default_rng(3),
                                         source=source))
    assert_same([made[1]], [made[0]])


VOLATILE = {"elapsed_s", "tokens_per_s", "versions", "thermospec_version", "metrics_sha256", "telemetry"}


def summary_and_records(folder: Path) -> tuple[dict[str, object], dict[str, bytes]]:
    (run,) = folder.iterdir()
    summary = {k: v for k, v in json.loads((run / "summary.json").read_text()).items() if k not in VOLATILE}
    return summary, {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.glob("**/*.jsonl"))}


@pytest.mark.parametrize("extra", [[], ["--telemetry", "none"], ["--chains", "2"], ["--K", "8"]])
def test_order_run_with_every_state_crafted_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], extra: list[str]) -> None:
    """Order 3 (1,468 states, all crafted at once for 1,000 steps): the records and the summary (acceptance,
    overlaps, ψ size, the loss split) of the per-key path, byte for byte."""
    corpus = next((p for p in CORPUS_CANDIDATES if p.is_file()), None)
    if corpus is None:
        pytest.skip("no corpus")
    base = ["run", "--corpus", str(corpus), "--order", "3", "--gamma", "3", "--steps", "1000", "--quiet", *extra]
    made = []
    for kernel in ("python", ""):
        monkeypatch.setenv("THERMOSPEC_KERNEL", kernel)
        folder = tmp_path / (kernel or "compiled")
        status, _, err = run_cli([*base, "--runs-dir", str(folder)], capsys)
        assert status == 0, err
        made.append(summary_and_records(folder))
    assert made[1] == made[0]
    assert made[1][0]["loss_quantisation"] is not None


@pytest.mark.parametrize("which", ["trace", "order"])
def test_fixed_context_blocks_on_other_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, which: str) -> None:
    """The checks' fixed-key blocks on a trace's positions and on order-N contexts (crafted at once with ψ)."""
    if which == "trace":
        config = RunConfig(trace=str(write_trace(tmp_path / "t.npz", 12, 40, 1.2, 5, tokens=True, progress=False)),
                           K=4)
    else:
        corpus = next((p for p in CORPUS_CANDIDATES if p.is_file()), None)
        if corpus is None:
            pytest.skip("no corpus")
        config = RunConfig(corpus=str(corpus), K=8, order=4)
    for psi in (False, True):
        made = []
        for kernel in ("python", ""):
            monkeypatch.setenv("THERMOSPEC_KERNEL", kernel)
            run = prepare_run(config)
            source = context_source(run)
            x = source.advance(source.advance(source.start(np.random.default_rng(1)), 3), 5)
            made.append(fixed_context_blocks(source.row, run.proposer.draft, source.V, x, 3, 2000,
                                             np.random.default_rng(3), source=source,
                                             psi=run.proposer.psi_spec if psi else None))
            if kernel == "":  # it ran on the kernel, from x's own key
                probe = compiled_fixed_blocks(source.row, run.proposer.draft, source.V, x, 3, 1,
                                              np.random.default_rng(0), 1 << 28, source)
                assert probe is not None and probe.context[0] == x
        assert_same([made[1]], [made[0]])
