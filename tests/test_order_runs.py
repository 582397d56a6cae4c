"""``run/check --corpus PATH --order N``: the order-N character chain (SPEC §8).

``--order 2`` is M1 byte for byte; above, the fast chain emits the per-step
reference's tokens, a run corrected against wrong rows fails the transition χ²
a correct run passes, the telemetry names each step's context, and unsupported
combinations are refused in one line before anything is written.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.conftest import run_cli
from thermospec.core.payload import EpsSpec
from thermospec.core.statistics import context_chi2
from thermospec.engine.chain import run_chain
from thermospec.engine.contexts import ContextProposer, run_order_chain, run_order_reference
from thermospec.engine.pairs import PairCounts
from thermospec.runs.telemetry import FIELDS
from thermospec.targets.corpus import corpus_target
from thermospec.targets.order import OrderTarget, order_target
from thermospec.tsu.drafts import Proposer


def only_run_dir(runs: Path) -> Path:
    (run_dir,) = list(runs.iterdir())
    return run_dir


def test_order_2_writes_m1s_bytes(shakespeare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--corpus", str(shakespeare), "--K", "8", "--steps", "4000"]
    for name, extra in (("m1", []), ("order2", ["--order", "2"])):
        status, _, err = run_cli([*base, *extra, "--runs-dir", str(tmp_path / name)], capsys)
        assert status == 0, err
    m1, order2 = only_run_dir(tmp_path / "m1"), only_run_dir(tmp_path / "order2")
    assert (order2 / "m1_metrics.jsonl").read_bytes() == (m1 / "m1_metrics.jsonl").read_bytes()
    first, second = (json.loads((d / "summary.json").read_text()) for d in (m1, order2))
    assert first["config"] == second["config"] and "order" not in second["config"]
    assert first["target"] == second["target"] and first["p_value"] == second["p_value"]


def test_the_order_chain_at_2_is_m1s_chain_step_for_step(shakespeare: Path) -> None:
    bigram = corpus_target(shakespeare)
    m1 = list(run_chain(bigram.row, bigram.pi, Proposer(bigram.row, 8, 1.0, "auto").draft, 3000,
                        np.random.default_rng(9)))
    target = order_target(shakespeare, 2)
    chain = list(run_order_chain(target, ContextProposer(target, 8, 1.0, "auto").draft, 3000,
                                 np.random.default_rng(9), chunk=1000))
    for name in ("prev", "proposed", "emitted", "accepted"):
        np.testing.assert_array_equal(np.concatenate([getattr(c, name) for c in chain]),
                                      np.concatenate([getattr(c, name) for c in m1]))
    np.testing.assert_array_equal(np.concatenate([c.context for c in chain]), np.concatenate([c.prev for c in m1]))


@pytest.mark.parametrize(("order", "K", "tau", "eps"), [(3, 8, 1.0, "auto"), (5, 4, 0.6, 0.0), (8, 16, 1.2, 1e-3)])
def test_fast_chain_emits_the_reference_tokens(shakespeare: Path, order: int, K: int, tau: float,
                                              eps: EpsSpec) -> None:
    target = order_target(shakespeare, order)
    drafts = ContextProposer(target, K, tau, eps).draft
    reference = run_order_reference(target, drafts, 2000, np.random.default_rng(5))
    chunks = list(run_order_chain(target, drafts, 2000, np.random.default_rng(5), chunk=600))
    for name in ("prev", "context", "proposed", "emitted", "accepted"):
        np.testing.assert_array_equal(np.concatenate([getattr(c, name) for c in chunks]), getattr(reference, name))
    np.testing.assert_array_equal(reference.prev[1:], reference.emitted[:-1])


class Tempered(OrderTarget):
    """The same contexts with every row raised to a power and renormalised: a wrong target."""

    def __init__(self, base: OrderTarget, power: float) -> None:  # shares base's index and row cache
        self.__dict__.update(base.__dict__)
        self.power = power

    def row(self, context: int) -> NDArray[np.float64]:
        p = super().row(context) ** self.power
        wrong: NDArray[np.float64] = p / p.sum()
        return wrong


def test_a_run_against_wrong_rows_fails_the_transition_chi2(shakespeare: Path) -> None:
    right = order_target(shakespeare, 4)
    for target, fails in ((right, False), (Tempered(right, 1.3), True)):
        pairs = PairCounts(right.V)
        drafts = ContextProposer(target, 8, 1.0, "auto").draft
        for chunk in run_order_chain(target, drafts, 20_000, np.random.default_rng(2)):
            pairs.add(chunk.context, chunk.emitted)
        result = context_chi2(pairs.contexts(), right.row)
        assert (result.p_value < 1e-6) if fails else (result.p_value > 1e-3), result


def test_run_writes_contexts_and_the_transition_chi2(shakespeare: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    status, out, err = run_cli(["run", "--corpus", str(shakespeare), "--order", "4", "--K", "8", "--steps", "6000",
                                "--runs-dir", str(runs)], capsys)
    assert status == 0, err
    run_dir = only_run_dir(runs)
    records = [json.loads(line) for line in (run_dir / "m1_metrics.jsonl").read_text().splitlines()]
    vocabulary = corpus_target(shakespeare).vocabulary
    assert vocabulary is not None and len(records) == 6000
    for before, record in itertools.pairwise(records):
        assert tuple(record) == (*FIELDS, "context") and record["prev_token"] == before["emitted_token"]
        assert 1 <= len(record["context"]) <= 3 and record["context"][-1] == vocabulary[record["prev_token"]]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["order"] == 4 and summary["target"]["order"] == 4
    assert summary["target"]["source"] == "corpus (order 4)"
    assert summary["chi2_stat"] is None and summary["p_value"] is None and summary["transition_p_value"] > 1e-3
    assert summary["accept_rate"] == sum(r["accepted"] for r in records) / 6000
    assert summary["mean_overlap"] == pytest.approx(np.mean([r["overlap_mass"] for r in records]), abs=1e-12)
    assert summary["contexts_visited"] == len({r["context"] for r in records})
    assert all(summary["checklist"].values())
    assert "order 4" in out and "transition χ²" in out and "χ² vs N·π" not in out
    status, out, err = run_cli(["run", "--replay", str(run_dir), "--runs-dir", str(tmp_path / "replay")], capsys)
    assert status == 0 and "identical to the original" in out, err


def test_check_uses_the_most_frequent_contexts(shakespeare: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(["check", "--corpus", str(shakespeare), "--order", "3", "--K", "8", "--steps",
                                "10000", "--check-steps", "10000", "--pooled-steps", "10000"], capsys)
    assert status == 0, out + err
    target = order_target(shakespeare, 3)
    frequent = [target.context_text(c) for c in target.frequent_contexts()]
    assert "fixed-context χ²" in out and all(repr(text) in out for text in frequent), out
    assert "the 4 most frequent 2-character contexts" in out and "4/4 checks passed" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--order", "3"], "--order: needs --corpus"),
    (["--corpus", "{corpus}", "--order", "3", "--draft-order", "4"], "--draft-order: must be an integer in [1, 3]"),
    (["--corpus", "{corpus}", "--order", "1"], "--order: must be an integer in [2, 16], got '1'"),
    (["--corpus", "{corpus}", "--order", "17"], "--order: must be an integer in [2, 16], got '17'"),
])
def test_unsupported_combinations_are_refused_in_one_line(
    shakespeare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    runs = tmp_path / "runs"
    argv = [a.replace("{corpus}", str(shakespeare)) for a in args]
    status, out, err = run_cli(["run", *argv, "--runs-dir", str(runs)], capsys)
    assert status == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert not runs.exists()
