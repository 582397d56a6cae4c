"""Tests of fault injection: each faulty TSU samples what it is meant to, claims F(ψ), and is caught.

Statistical assertions use the suite's significance ALPHA = 1e-3 at fixed seeds:
a faulty TSU's draws fit its real sampling law (p > ALPHA) and not the F(ψ) it
claims (p < ALPHA), with the correct SimTSU as the negative control.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.speculative_law import ALPHA
from thermospec import SimTSU, craft_payload, encode_payload
from thermospec.cli.m1 import main
from thermospec.core.proposal import proposal_distribution
from thermospec.core.statistics import pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import ReportError, fixed_context_draws, run_chain, run_chain_reference
from thermospec.runs.config import RunConfig
from thermospec.runs.executor import execute_run
from thermospec.runs.prepare import PreparedRun, inject_fault, prepare_run
from thermospec.runs.storage import SUMMARY_FILE
from thermospec.tsu.drafts import ContextDraft
from thermospec.tsu.faults import (
    Fault,
    FaultError,
    FaultyProposer,
    FaultyTSU,
    biased_distribution,
    drifted_distribution,
    dropped_tail_distribution,
    faulty_tsu,
    stale_distribution,
)


@pytest.fixture(scope="module")
def tsu() -> SimTSU:
    p = np.random.default_rng(3).dirichlet(np.full(64, 0.5))
    return SimTSU(encode_payload(craft_payload(p, 16, 1.0, "auto")))


@pytest.fixture(scope="module")
def other() -> SimTSU:
    p = np.random.default_rng(4).dirichlet(np.full(64, 0.5))
    return SimTSU(encode_payload(craft_payload(p, 16, 1.0, "auto")))


@pytest.mark.parametrize(
    ("text", "kind", "size"),
    [("bias:0.05", "bias", 0.05), ("STALE:1", "stale", 1.0), ("tail:0.5", "tail", 0.5),
     ("tau:-0.1", "tau", -0.1), ("misreport:1e-3", "misreport", 1e-3)],
)
def test_fault_parse(text: str, kind: str, size: float) -> None:
    fault = Fault.parse(text)
    assert (fault.kind, fault.size) == (kind, size)


@pytest.mark.parametrize(
    ("text", "words"),
    [("bias", "KIND:SIZE"), ("wobble:1", "must be one of"), ("bias:x", "must be a number"),
     ("stale:1.5", "[0, 1]"), ("tail:-0.1", "[0, 1]"), ("tau:-1", "> -1"), ("misreport:0", "!= 0"),
     ("bias:nan", "finite")],
)
def test_fault_parse_refuses_with_a_reason(text: str, words: str) -> None:
    with pytest.raises(FaultError, match=words.replace("[", r"\[").replace("]", r"\]")):
        Fault.parse(text)


def test_biased_distribution_exact(tsu: SimTSU) -> None:
    q = tsu.q
    top = int(np.argmax(q))
    b = biased_distribution(q, 0.05)
    assert b[top] == pytest.approx(1.05 * q[top], rel=1e-15)
    rest = np.arange(q.size) != top
    np.testing.assert_allclose(b[rest] / q[rest], (1 - 1.05 * q[top]) / (1 - q[top]), rtol=1e-13)
    assert b.sum() == pytest.approx(1.0, abs=1e-14)
    capped = biased_distribution(q, 1e9)
    assert capped[top] == 1.0 and capped.sum() == pytest.approx(1.0)


def test_stale_tail_and_drift_distributions(tsu: SimTSU, other: SimTSU) -> None:
    q, payload = tsu.q, tsu.payload
    np.testing.assert_allclose(stale_distribution(q, other.q, 1.0), other.q)
    np.testing.assert_allclose(stale_distribution(q, other.q, 0.0), q)
    dropped = dropped_tail_distribution(payload, 1.0)
    tail = np.ones(q.size, dtype=bool)
    tail[payload.ids] = False
    assert payload.tail_mass > 0
    assert np.all(dropped[tail] == 0) and dropped.sum() == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose(dropped_tail_distribution(payload, 0.0), q, rtol=1e-14)
    half = dropped_tail_distribution(payload, 0.5)
    assert half[tail].sum() == pytest.approx(0.5 * payload.tail_mass, rel=1e-12)
    np.testing.assert_allclose(drifted_distribution(payload, 0.0), q, rtol=1e-14)
    hot = drifted_distribution(payload, 0.5)
    assert hot.sum() == pytest.approx(1.0, abs=1e-14)
    assert hot[payload.ids[0]] < q[payload.ids[0]]  # a hotter chip flattens the head


@pytest.mark.parametrize("fault", ["bias:0.05", "stale:0.2", "tail:1", "tau:0.1"])
def test_faulty_tsu_samples_its_law_while_claiming_f_psi(tsu: SimTSU, other: SimTSU, fault: str) -> None:
    bad = faulty_tsu(tsu, Fault.parse(fault), other)
    np.testing.assert_array_equal(bad.q, tsu.q)  # the claim is F(ψ)
    assert not np.allclose(bad.sampling, tsu.q)
    n = 400_000
    tokens, log_q = bad.sample(np.random.default_rng(11), n)
    np.testing.assert_array_equal(log_q, np.log(tsu.q[tokens]))  # honest reports of F(ψ)
    counts = np.bincount(tokens, minlength=tsu.q.size).astype(np.float64)
    assert pooled_chi2(counts, n * bad.sampling).p_value > ALPHA
    assert pooled_chi2(counts, n * tsu.q).p_value < ALPHA
    honest, _ = tsu.sample(np.random.default_rng(11), n)  # negative control: the correct TSU fits F(ψ)
    assert pooled_chi2(np.bincount(honest, minlength=tsu.q.size).astype(np.float64), n * tsu.q).p_value > ALPHA


def test_stale_fault_needs_a_source(tsu: SimTSU) -> None:
    with pytest.raises(FaultError, match="stale"):
        faulty_tsu(tsu, Fault.parse("stale:0.5"))


def test_misreporting_tsu_samples_correctly_but_reports_wrong_log_q(tsu: SimTSU) -> None:
    bad = FaultyTSU(tsu.payload, report_offset=0.01)
    tokens, log_q = bad.sample(np.random.default_rng(1), 100)
    good, _ = tsu.sample(np.random.default_rng(1), 100)
    np.testing.assert_array_equal(tokens, good)
    np.testing.assert_allclose(log_q - np.log(tsu.q[tokens]), 0.01)


@pytest.fixture(scope="module")
def small_run() -> PreparedRun:
    return prepare_run(RunConfig(vocab=32, K=8, steps=3000, seed=5))


@pytest.mark.parametrize("fault", ["bias:0.3", "stale:0.5", "tail:1", "tau:0.5"])
def test_fast_and_reference_paths_agree_under_a_sampling_fault(small_run: PreparedRun, fault: str) -> None:
    run = inject_fault(small_run, Fault.parse(fault))
    target = run.target
    fast = list(run_chain(target.row, target.pi, run.proposer.draft, 3000, random_stream(5, Stream.CHAIN)))
    ref = run_chain_reference(target.row, target.pi, run.proposer.draft, 3000, random_stream(5, Stream.CHAIN))
    np.testing.assert_array_equal(np.concatenate([c.emitted for c in fast]), ref.emitted)
    np.testing.assert_array_equal(np.concatenate([c.proposed for c in fast]), ref.proposed)
    correct = list(run_chain(target.row, target.pi, small_run.proposer.draft,
                             3000, random_stream(5, Stream.CHAIN)))
    assert not np.array_equal(np.concatenate([c.proposed for c in correct]), ref.proposed)


def test_faulty_proposer_keeps_the_host_metrics_and_bytes(small_run: PreparedRun) -> None:
    run = inject_fault(small_run, Fault.parse("bias:0.1"))
    assert isinstance(run.proposer, FaultyProposer)
    good = small_run.proposer.draft(3)
    bad = run.proposer.draft(3)
    assert bad is run.proposer.draft(3)  # cached
    assert bad.payload_bytes == good.payload_bytes and bad.overlap_mass == good.overlap_mass
    np.testing.assert_array_equal(bad.tsu.q, proposal_distribution(good.payload))


def test_misreport_is_refused_at_the_first_draw_on_every_path(small_run: PreparedRun) -> None:
    run = inject_fault(small_run, Fault.parse("misreport:1e-9"))
    target = run.target
    with pytest.raises(ReportError, match=r"step 0: token \d+ \(context \d+\)") as fast:
        next(iter(run_chain(target.row, target.pi, run.proposer.draft, 10, random_stream(1, Stream.CHAIN))))
    with pytest.raises(ReportError, match="step 0") as ref:
        run_chain_reference(target.row, target.pi, run.proposer.draft, 10, random_stream(1, Stream.CHAIN))
    assert (fast.value.step, fast.value.token, fast.value.context) == (ref.value.step, ref.value.token,
                                                                      ref.value.context)
    assert fast.value.reported == pytest.approx(fast.value.expected + 1e-9, abs=1e-12)
    with pytest.raises(ReportError, match="step 0"):
        fixed_context_draws(target.row(0), run.proposer.draft(0), 5, np.random.default_rng(0))


def test_misreport_of_one_token_is_refused_at_its_first_draw(small_run: PreparedRun) -> None:
    """A TSU that lies about one token only: refused exactly at the first step that drafts it."""
    run = small_run
    target = run.target
    ref = run_chain_reference(target.row, target.pi, run.proposer.draft, 3000,
                              random_stream(5, Stream.CHAIN))
    liar_token = int(ref.proposed[100])
    first = int(np.flatnonzero(ref.proposed == liar_token)[0])

    class OneLie(FaultyTSU):
        def report_log_q(self, tokens: NDArray[np.int64]) -> NDArray[np.float64]:
            out: NDArray[np.float64] = np.log(self.q[tokens])
            out[tokens == liar_token] += 0.5
            return out

    class Liar(FaultyProposer):
        def draft(self, context: int) -> ContextDraft:
            good = self.base.draft(context)
            return replace(good, tsu=OneLie(good.tsu.payload))

    liar = Liar(run.proposer, Fault.parse("misreport:1"), target.V)
    with pytest.raises(ReportError) as caught:
        list(run_chain(target.row, target.pi, liar.draft, 3000, random_stream(5, Stream.CHAIN), chunk=512))
    assert (caught.value.step, caught.value.token) == (first, liar_token)


def test_run_with_a_misreporting_tsu_keeps_an_interrupted_summary(tmp_path: Path, small_run: PreparedRun) -> None:
    run = inject_fault(small_run, Fault.parse("misreport:0.01"))
    with pytest.raises(ReportError):
        execute_run(run, tmp_path)
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["interrupted"] is True and summary["steps"] == 0
    assert "refused at step 0" in summary["interrupted_by"]
    assert (tmp_path / "m1_metrics.jsonl").read_bytes() == b""


def test_check_inject_fault_cli(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["check", "--vocab", "64", "--steps", "5000", "--check-steps", "5000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "stronger test" in out and "PASS  pooled TSU χ²" in out
    assert main([*args, "--inject-fault", "bias:0.2"]) == 1
    out = capsys.readouterr().out
    assert "injected fault: bias:0.2" in out and "FAIL  pooled TSU χ²" in out
    assert main([*args, "--inject-fault", "misreport:0.001"]) == 1
    assert "TSU report refused at step 0: token" in capsys.readouterr().out


def test_check_inject_fault_bad_spec_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--inject-fault", "wobble:1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--inject-fault" in err and "wobble" in err
