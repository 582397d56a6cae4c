"""``--order N`` on the move table: the compiled stepper and its fallback agree, and ``--chains B`` composes.

Chain 0 of B order-N chains is the single-chain run step for step (and byte for
byte through the CLI); the emitted tokens of all chains pass the transition χ²
against the order-N rows, and a run corrected against wrong rows fails it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.conftest import run_cli
from thermospec.core.statistics import context_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.batch import run_batch
from thermospec.engine.chain import table_source
from thermospec.engine.contexts import ContextProposer, run_order_chain, run_order_chains, run_order_reference
from thermospec.engine.kernels import ChainStepper, compiled_module
from thermospec.engine.pairs import PairCounts
from thermospec.targets.order import OrderTarget, order_target

FIELDS = ("prev", "context", "proposed", "emitted", "accepted")


def joined(chunks: list, name: str) -> NDArray[np.int64]:  # type: ignore[type-arg]
    return np.concatenate([getattr(c, name) for c in chunks])


@pytest.mark.parametrize("backend", ["compiled", "python"])
def test_the_move_table_chain_is_the_reference(shakespeare: Path, backend: str) -> None:
    if backend == "compiled" and compiled_module() is None:
        pytest.skip("the compiled kernel is not built")
    target = order_target(shakespeare, 5)
    assert target.moves() is not None  # the move-table path
    drafts = ContextProposer(target, 8, 1.0, "auto").draft
    reference = run_order_reference(target, drafts, 800, np.random.default_rng(11))
    chunks = list(run_order_chain(target, drafts, 800, np.random.default_rng(11), chunk=300,
                                  backend=backend))  # type: ignore[arg-type]
    for name in FIELDS:
        np.testing.assert_array_equal(joined(chunks, name), getattr(reference, name))


def test_evicting_tables_keeps_the_tokens(shakespeare: Path) -> None:
    target = order_target(shakespeare, 3)
    drafts = ContextProposer(target, 8, 1.0, "auto").draft
    roomy = list(run_order_chain(target, drafts, 2000, np.random.default_rng(4)))
    tight = list(run_order_chain(target, drafts, 2000, np.random.default_rng(4), max_table_bytes=40_000))
    for name in FIELDS:
        np.testing.assert_array_equal(joined(tight, name), joined(roomy, name))


def test_a_move_out_of_range_is_refused(shakespeare: Path) -> None:
    if compiled_module() is None:
        pytest.skip("the compiled kernel is not built")
    target = order_target(shakespeare, 3)
    moves = target.moves()
    assert moves is not None
    broken = moves.next.copy()
    broken[:] = moves.states  # every move leads past the last state
    drafts = ContextProposer(target, 8, 1.0, "auto").draft
    stepper = ChainStepper(target.V, table_source(target.row, drafts), "compiled", moves=broken)
    with pytest.raises(ValueError, match="move"):
        stepper.steps(np.full((10, 3), 0.5), 0)
    with pytest.raises(ValueError, match="int32"):
        ChainStepper(target.V, table_source(target.row, drafts), moves=broken.astype(np.int64))


def test_chain_0_of_b_chains_is_the_single_chain_run(shakespeare: Path) -> None:
    target = order_target(shakespeare, 3)
    drafts = ContextProposer(target, 8, 1.0, "auto").draft
    single = list(run_order_chain(target, drafts, 2000, random_stream(7, Stream.CHAIN), chunk=700))
    batches = list(run_order_chains(target, drafts, 2000, 7, 3, chunk=700))
    assert [len(b) for b in batches] == [3, 3, 3]
    for name in FIELDS:
        np.testing.assert_array_equal(joined([b[0] for b in batches], name), joined(single, name))
    other = joined([b[1] for b in batches], "emitted")
    assert not np.array_equal(other, joined(single, "emitted"))  # chain 1 has a stream of its own


class Tempered(OrderTarget):
    """The same contexts with every row raised to a power and renormalised: a wrong target."""

    def __init__(self, base: OrderTarget, power: float) -> None:  # shares base's index, rows and moves
        self.__dict__.update(base.__dict__)
        self.power = power

    def row(self, context: int) -> NDArray[np.float64]:
        p = super().row(context) ** self.power
        wrong: NDArray[np.float64] = p / p.sum()
        return wrong


def test_chains_pass_the_transition_chi2_and_wrong_rows_fail_it(shakespeare: Path) -> None:
    right = order_target(shakespeare, 3)
    for target, fails in ((right, False), (Tempered(right, 1.3), True)):
        pairs = PairCounts(right.V)
        drafts = ContextProposer(target, 8, 1.0, "auto").draft
        for batch in run_order_chains(target, drafts, 4000, 3, 4):
            for chunk in batch:
                pairs.add(chunk.context, chunk.emitted)
        result = context_chi2(pairs.contexts(), right.row)
        assert (result.p_value < 1e-6) if fails else (result.p_value > 1e-3), result


def only_run_dir(runs: Path) -> Path:
    (run_dir,) = list(runs.iterdir())
    return run_dir


def test_run_order_chains_writes_chain_0_as_the_single_run(shakespeare: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--corpus", str(shakespeare), "--order", "3", "--K", "8", "--steps", "1000"]
    for name, extra in (("one", []), ("three", ["--chains", "3"]), ("none", ["--chains", "3", "--telemetry", "none"])):
        status, _, err = run_cli([*base, *extra, "--runs-dir", str(tmp_path / name)], capsys)
        assert status == 0, err
    one, three, none = (only_run_dir(tmp_path / n) for n in ("one", "three", "none"))
    assert (three / "chain_0000" / "m1_metrics.jsonl").read_bytes() == (one / "m1_metrics.jsonl").read_bytes()
    assert sorted(p.name for p in three.iterdir()) == ["chain_0000", "chain_0001", "chain_0002", "summary.json"]
    assert sorted(p.name for p in none.iterdir()) == ["summary.json"]
    single = json.loads((one / "summary.json").read_text())
    chain0 = json.loads((three / "chain_0000" / "summary.json").read_text())
    pooled = json.loads((three / "summary.json").read_text())
    assert chain0["accept_rate"] == single["accept_rate"] and chain0["chain"] == 0
    assert chain0["transition_chi2_stat"] == single["transition_chi2_stat"]
    assert pooled["chains"] == 3 and pooled["steps_per_chain"] == 1000
    assert pooled["chain_accept_rate_min"] <= single["accept_rate"] <= pooled["chain_accept_rate_max"]
    assert json.loads((none / "summary.json").read_text())["accept_rate"] == pooled["accept_rate"]


def test_crafting_every_state_at_once_keeps_tokens_contexts_and_metrics(shakespeare: Path) -> None:
    target = order_target(shakespeare, 3)
    proposer = ContextProposer(target, 8, 1.0, "auto")
    reference = run_order_reference(target, proposer.draft, 2000, np.random.default_rng(5))
    chunks = list(run_order_chain(target, proposer.draft, 2000, np.random.default_rng(5), chunk=700,
                                  psi=(8, 1.0, "auto")))
    if compiled_module() is not None:
        assert all(c.metrics is not None and c.state is not None for c in chunks)  # every state crafted at once
    for name in FIELDS:
        np.testing.assert_array_equal(joined(chunks, name), getattr(reference, name))
    for chunk in chunks:
        if chunk.metrics is not None and chunk.state is not None:
            for c, s in list(zip(chunk.context.tolist(), chunk.state.tolist(), strict=True))[:200]:
                draft = proposer.draft(c)
                assert chunk.metrics.of(s) == (draft.overlap_mass, draft.ce_gap_nats, draft.psi_bytes, draft.payload.K)


def test_a_run_without_telemetry_summarises_as_one_with(shakespeare: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--corpus", str(shakespeare), "--order", "3", "--K", "8", "--steps", "1500"]
    for name, extra in (("jsonl", []), ("none", ["--telemetry", "none"])):
        status, _, err = run_cli([*base, *extra, "--runs-dir", str(tmp_path / name)], capsys)
        assert status == 0, err
    with_, without = (json.loads((only_run_dir(tmp_path / n) / "summary.json").read_text()) for n in ("jsonl", "none"))
    for key in ("accept_rate", "mean_overlap", "mean_ce_gap", "transition_chi2_stat", "contexts_visited",
                "psi_bytes_max"):
        assert with_[key] == without[key], key


@pytest.mark.parametrize("backend", ["compiled", "python"])
def test_the_batch_kernel_on_a_move_table_steps_as_the_chains_in_turn(tmp_path: Path, backend: str) -> None:
    if backend == "compiled" and compiled_module() is None:
        pytest.skip("the compiled kernel is not built")
    rng = np.random.default_rng(1)
    (tmp_path / "corpus.txt").write_text("".join(rng.choice(list("abcde "), size=400)), encoding="utf-8")
    target = order_target(tmp_path / "corpus.txt", 4)
    moves = target.moves()
    assert moves is not None
    proposer = ContextProposer(target, 8, 1.0, "auto")
    in_turn = list(run_order_chains(target, proposer.draft, 600, 5, 4, chunk=250))
    batch = list(run_batch(lambda s: target.row(moves.context(s)), target.pi,
                           lambda s: proposer.draft(moves.context(s)), 600, 5, 4, chunk_tokens=1000,
                           backend=backend, moves=moves.next))  # type: ignore[arg-type]
    for b in range(4):
        for name in ("proposed", "emitted", "accepted"):
            np.testing.assert_array_equal(np.concatenate([getattr(c, name)[b] for c in batch]),
                                          joined([chunks[b] for chunks in in_turn], name))
        np.testing.assert_array_equal(moves.contexts(np.concatenate([c.prev[b] for c in batch])),
                                      joined([chunks[b] for chunks in in_turn], "context"))


def test_chains_in_lock_step_on_crafted_tables_are_the_chains_in_turn(shakespeare: Path) -> None:
    if compiled_module() is None:
        pytest.skip("the compiled kernel is not built")
    target = order_target(shakespeare, 3)
    proposer = ContextProposer(target, 8, 1.0, "auto")
    in_turn = list(run_order_chains(target, proposer.draft, 900, 2, 5, chunk=400))
    locked = list(run_order_chains(target, proposer.draft, 900, 2, 5, chunk=400, psi=(8, 1.0, "auto")))
    assert locked[0][0].metrics is not None and in_turn[0][0].metrics is None  # crafted at once: lock step
    for b in range(5):
        for name in FIELDS:
            np.testing.assert_array_equal(joined([c[b] for c in locked], name), joined([c[b] for c in in_turn], name))


def test_psi_that_is_not_the_proposers_crafts_nothing_at_once(shakespeare: Path) -> None:
    target = order_target(shakespeare, 3)
    proposer = ContextProposer(target, 8, 1.0, "auto")
    reference = run_order_reference(target, proposer.draft, 500, np.random.default_rng(3))
    chunks = list(run_order_chain(target, proposer.draft, 500, np.random.default_rng(3), psi=(16, 1.0, "auto")))
    assert all(c.metrics is None for c in chunks)  # the check on state 0 refused the crafted tables
    for name in FIELDS:
        np.testing.assert_array_equal(joined(chunks, name), getattr(reference, name))
