"""Token trees (``--gamma G --drafts N``): exact output, the γ-block run at N = 1, the expected length.

Exactness: every emitted token, grouped by the key it was emitted in, follows that key's row (per-key χ²);
the negative controls — the same tokens against another key's rows, and a tree whose verifier is handed
the wrong row — must fail.  The accepted-token law of each verifier sums to its exact acceptance, and the
mean accepted length of a run matches the dynamic program's expectation given the run's block starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from scripts.make_trace import write_trace
from tests.conftest import run_cli
from thermospec.core.statistics import context_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.core.trees import MAX_TREE_NODES, tree_nodes
from thermospec.core.verifiers import VERIFIERS, make_plan
from thermospec.engine.blocks import block_transitions, run_blocks
from thermospec.engine.chunks import BlockChunk
from thermospec.engine.keys import BigramSource, ContextSource
from thermospec.engine.pairs import PairCounts
from thermospec.engine.trees import TreeChunk, TreeExpectation, plan_cache, run_trees
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import PreparedRun, context_source, prepare_run


@pytest.fixture(scope="module")
def small() -> PreparedRun:
    return prepare_run(RunConfig(vocab=12, c=3.0, K=3, steps=1, seed=5))


def joined(chunks: list[TreeChunk]) -> TreeChunk:
    names = ("first_step", "context", "drafted", "accepted_length", "final", "draft_keys", "children",
             "accepted_index")
    return TreeChunk(start=0, **{n: np.concatenate([getattr(c, n) for c in chunks]) for n in names})


def pairs_of(chunk: BlockChunk, source: ContextSource) -> PairCounts:
    keys, tokens = block_transitions(chunk, source.advance)
    pairs = PairCounts(source.V)
    pairs.add(keys, tokens)
    return pairs


def test_tree_sizes_and_the_node_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tree_nodes(3, 2) == 14 and tree_nodes(1, 5) == 5 and tree_nodes(4, 1) == 4
    status, _, err = run_cli(["run", "--gamma", "8", "--drafts", "4", "--runs-dir", str(tmp_path)], capsys)
    assert status == 2 and f"at most {MAX_TREE_NODES:,}" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_one_draft_per_node_is_the_block_run(small: PreparedRun, verifier: str) -> None:
    source = BigramSource(small.target)
    blocks = list(run_blocks(source, small.proposer.draft, 3, 4000, random_stream(2, Stream.CHAIN)))
    trees = list(run_trees(source, small.proposer.draft, verifier, 1, 3, 4000, random_stream(2, Stream.CHAIN)))
    names = ("first_step", "context", "drafted", "accepted_length", "final", "draft_keys")
    b = BlockChunk(start=0, **{n: np.concatenate([getattr(c, n) for c in blocks]) for n in names})
    t = joined(trees)
    assert np.array_equal(b.accepted_length, t.accepted_length) and np.array_equal(b.final, t.final)
    assert np.array_equal(b.emitted_tokens(), t.emitted_tokens()) and np.array_equal(b.context, t.context)


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_accepted_law_sums_to_the_verifiers_acceptance(verifier: str) -> None:
    rng = np.random.default_rng(4)
    for n in (1, 2, 5):
        p, q = rng.dirichlet(np.full(9, 0.4)), rng.dirichlet(np.full(9, 0.8))
        plan = make_plan(verifier, p, q, n)
        law = plan.accepted_law()
        assert np.all(law >= 0) and np.all(law <= p + 1e-12)  # never more of a token than p has
        assert law.sum() == pytest.approx(plan.acceptance, abs=1e-12)


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_tree_tokens_follow_each_keys_row_and_wrong_rows_fail(small: PreparedRun, verifier: str) -> None:
    source = BigramSource(small.target)
    chunk = joined(list(run_trees(source, small.proposer.draft, verifier, 3, 2, 20_000,
                                  random_stream(9, Stream.CHAIN))))
    pairs = pairs_of(chunk, source)
    assert context_chi2(pairs.contexts(), source.row).p_value > 1e-3
    shifted = context_chi2(pairs.contexts(), lambda k: source.row((k + 1) % source.V))
    assert shifted.p_value < 1e-6


class WrongRowSource(BigramSource):
    """A verifier handed the row of the next token instead of the context's (a wrong verifier)."""

    def row(self, key: int) -> NDArray[np.float64]:
        return self.target.row((key + 1) % self.target.V)


def test_a_tree_verified_against_the_wrong_rows_fails_the_test(small: PreparedRun) -> None:
    right, wrong = BigramSource(small.target), WrongRowSource(small.target)
    chunk = joined(list(run_trees(wrong, small.proposer.draft, "recursive", 2, 2, 10_000,
                                  random_stream(9, Stream.CHAIN))))
    assert context_chi2(pairs_of(chunk, right).contexts(), right.row).p_value < 1e-6


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_mean_accepted_length_matches_the_dynamic_program(small: PreparedRun, verifier: str) -> None:
    source = BigramSource(small.target)
    plans = plan_cache(source, small.proposer.draft, verifier, 2)
    chunk = joined(list(run_trees(source, small.proposer.draft, verifier, 2, 3, 30_000,
                                  random_stream(13, Stream.CHAIN))))
    expectation = TreeExpectation(source, plans, 3)
    expected = {k: expectation(k) for k in np.unique(chunk.context).tolist()}
    exact = np.array([expected[k] for k in chunk.context.tolist()], dtype=np.float64)
    diff = chunk.accepted_length - exact  # a martingale difference per block: mean 0 given the starts
    se = diff.std(ddof=1) / np.sqrt(diff.size)
    assert abs(diff.mean()) < 4 * se, (diff.mean(), se)


def test_trees_on_a_trace_run_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_trace(tmp_path / "t.npz", 16, 48, 1.1, 2, tokens=True, progress=False)
    runs = tmp_path / "runs"
    status, _, err = run_cli(["run", "--trace", str(trace), "--K", "4", "--gamma", "3", "--drafts", "2",
                              "--verifier", "optimal", "--steps", "20000", "--quiet", "--runs-dir", str(runs)], capsys)
    assert status == 0, err
    (folder,) = runs.iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["tree_nodes_per_block"] == 14 and summary["drafts"] == 2 and summary["verifier"] == "optimal"
    assert abs(summary["accept_rate"] - summary["mean_overlap"]) < 0.02
    assert summary["mean_accepted_length"] == pytest.approx(summary["expected_accepted_length_given_starts"],
                                                            abs=4 * summary["mean_accepted_length_se"] + 1e-9)
    first = json.loads((folder / "m1_blocks.jsonl").read_text().splitlines()[0])
    assert len(first["children"]) == min(first["accepted_length"] + 1, 3)
    assert all(len(level) == 2 for level in first["children"])
    run = prepare_run(RunConfig(trace=str(trace), K=4, steps=1))
    assert context_source(run).advance(15, 3) == 0
