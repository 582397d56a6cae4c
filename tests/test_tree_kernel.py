"""Token trees on the compiled kernel (`engine.tree_kernel`): the Python loop's chunks, field for field.

Every verifier, N = 1 .. 4, the bigram chain, trace positions and order-N states, and a table cache of γ + 2
slots (evicting at nearly every block) with a one-slot bonus cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scripts.make_trace import write_trace
from tests.conftest import CORPUS_CANDIDATES
from thermospec.core.streams import Stream, random_stream
from thermospec.engine import tree_kernel
from thermospec.engine.block_kernel import blocks_module
from thermospec.engine.chunks import TreeChunk
from thermospec.engine.trees import run_trees
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import context_source, prepare_run

FIELDS = ("first_step", "context", "drafted", "accepted_length", "final", "draft_keys", "children", "accepted_index")

pytestmark = pytest.mark.skipif(blocks_module() is None, reason="the compiled block kernel is not built")


def trees_of(config: RunConfig, verifier: str, n: int, gamma: int, steps: int) -> list[TreeChunk]:
    run = prepare_run(config)  # a fresh target: an order-N target interns its contexts anew
    return list(run_trees(context_source(run), run.proposer.draft, verifier, n, gamma, steps,
                          random_stream(2, Stream.CHAIN), chunk=100))


def assert_both(monkeypatch: pytest.MonkeyPatch, config: RunConfig, verifier: str, n: int, gamma: int,
                steps: int = 2000) -> None:
    monkeypatch.setenv("THERMOSPEC_KERNEL", "python")
    python = trees_of(config, verifier, n, gamma, steps)
    monkeypatch.delenv("THERMOSPEC_KERNEL")
    compiled = trees_of(config, verifier, n, gamma, steps)
    assert [c.start for c in compiled] == [c.start for c in python]
    for a, b in zip(compiled, python, strict=True):
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("verifier", ["recursive", "spectr", "optimal"])
@pytest.mark.parametrize(("n", "gamma"), [(1, 3), (2, 3), (3, 2), (4, 4)])
def test_bigram_trees(monkeypatch: pytest.MonkeyPatch, verifier: str, n: int, gamma: int) -> None:
    assert_both(monkeypatch, RunConfig(vocab=16, c=1.0, K=3, seed=1), verifier, n, gamma)


@pytest.mark.parametrize("verifier", ["recursive", "optimal"])
def test_trees_with_few_slots(monkeypatch: pytest.MonkeyPatch, verifier: str) -> None:
    monkeypatch.setattr(tree_kernel, "TREE_TABLE_BYTES", 1)
    assert_both(monkeypatch, RunConfig(vocab=16, c=1.0, K=3, seed=1), verifier, 3, 3)


@pytest.mark.parametrize("verifier", ["recursive", "spectr", "optimal"])
def test_trace_and_order_trees(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, verifier: str) -> None:
    trace = write_trace(tmp_path / "t.npz", 12, 40, 1.2, 5, tokens=True, progress=False)
    assert_both(monkeypatch, RunConfig(trace=str(trace), K=4), verifier, 2, 3)
    corpus = next((p for p in CORPUS_CANDIDATES if p.is_file()), None)
    if corpus is None:
        pytest.skip("no corpus")
    assert_both(monkeypatch, RunConfig(corpus=str(corpus), K=8, order=4), verifier, 2, 3)
