"""γ-token speculative blocks: exactness, the exact expected accepted length, telemetry and the CLI."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.conftest import run_cli
from thermospec.analysis.block_checks import run_block_checks
from thermospec.core.expectation import block_expectation, expected_tokens_iid, modelled_speedup
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.blocks import (
    BLOCKS_FILE,
    block_transition_chi2,
    block_transitions,
    context_transition_counts,
    fixed_context_blocks,
    run_blocks,
    run_blocks_reference,
)
from thermospec.engine.chain import dense_matrices
from thermospec.engine.chunks import BlockChunk
from thermospec.engine.keys import BigramSource
from thermospec.engine.tally import BlockTally
from thermospec.runs.block_run import batch_means_se, block_lines, summarise_blocks
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import PreparedRun, prepare_run
from thermospec.tsu.drafts import ContextDraft
from thermospec.tsu.sim import SimTSU


def concat(chunks: list[BlockChunk]) -> BlockChunk:
    return BlockChunk(
        start=0,
        first_step=np.concatenate([c.first_step for c in chunks]),
        context=np.concatenate([c.context for c in chunks]),
        drafted=np.concatenate([c.drafted for c in chunks]),
        accepted_length=np.concatenate([c.accepted_length for c in chunks]),
        final=np.concatenate([c.final for c in chunks]),
        draft_keys=np.concatenate([c.draft_keys for c in chunks]),
    )


def blocks_of(run: PreparedRun, gamma: int, steps: int, seed: int, chunk: int = 1 << 13) -> BlockChunk:
    t = run.target
    rng = random_stream(seed, Stream.CHAIN)
    return concat(list(run_blocks(BigramSource(t), run.proposer.draft, gamma, steps, rng, chunk=chunk)))


@pytest.fixture(scope="module")
def small_run() -> PreparedRun:
    """V = 8 peaked rows and a one-id payload: overlaps differ a lot between contexts."""
    return prepare_run(RunConfig(vocab=8, c=0.5, K=1, seed=2))


# --- the fast loop is Algorithm 1 ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "gamma"),
    [
        (RunConfig(), 1),
        (RunConfig(), 4),
        (RunConfig(vocab=16, c=1.0, K=1, eps=0.0, seed=3), 3),
        (RunConfig(vocab=16, c=2.0, K=2, tau=0.3, seed=5), 8),
        (RunConfig(vocab=16, c=2.0, K=16, tau=4.0, seed=5), 2),
    ],
)
def test_fast_blocks_equal_the_reference_token_for_token(config: RunConfig, gamma: int) -> None:
    run = prepare_run(config)
    t = run.target
    for seed in (0, 1):
        fast = blocks_of(run, gamma, 2_000, seed, chunk=97)  # chunk boundaries inside the run
        ref = run_blocks_reference(BigramSource(t), run.proposer.draft, gamma, 2_000,
                                   random_stream(seed, Stream.CHAIN))
        assert np.array_equal(fast.context, ref.context)
        assert np.array_equal(fast.drafted, ref.drafted)
        assert np.array_equal(fast.accepted_length, ref.accepted_length)
        assert np.array_equal(fast.final, ref.final)
        assert np.array_equal(fast.first_step, ref.first_step)


def test_fast_blocks_equal_the_reference_on_the_corpus(shakespeare: Path) -> None:
    run = prepare_run(RunConfig(corpus=str(shakespeare), K=4))
    t = run.target
    fast = blocks_of(run, 4, 3_000, 7)
    ref = run_blocks_reference(BigramSource(t), run.proposer.draft, 4, 3_000, random_stream(7, Stream.CHAIN))
    assert np.array_equal(fast.emitted_tokens(), ref.emitted_tokens())
    assert np.array_equal(fast.drafted, ref.drafted)


def test_blocks_form_one_chain(small_run: PreparedRun) -> None:
    gamma, steps = 4, 5_000
    blocks = blocks_of(small_run, gamma, steps, 1, chunk=50)
    lengths = blocks.accepted_length
    assert np.all((lengths >= 0) & (lengths <= gamma))
    tokens = blocks.emitted_tokens()
    assert steps <= tokens.shape[0] <= steps + gamma
    assert np.array_equal(blocks.context[1:], blocks.final[:-1])  # each block starts at the last token
    assert np.array_equal(blocks.first_step, np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]))
    for i in (0, 1, len(blocks) - 1):
        s = int(blocks.first_step[i])
        assert tokens[s : s + lengths[i] + 1].tolist() == blocks.emitted(i)
    # Accepted drafts are emitted as drafted.
    for i in range(50):
        assert blocks.emitted(i)[: lengths[i]] == blocks.drafted[i, : lengths[i]].tolist()


def test_same_seed_same_blocks_and_gamma_is_checked(small_run: PreparedRun) -> None:
    a = blocks_of(small_run, 3, 1_000, 5)
    b = blocks_of(small_run, 3, 1_000, 5)
    assert np.array_equal(a.emitted_tokens(), b.emitted_tokens())
    t = small_run.target
    with pytest.raises(ValueError, match="--gamma"):
        next(run_blocks(BigramSource(t), small_run.proposer.draft, 0, 10, random_stream(0, Stream.CHAIN)))


# --- exactness: χ² of the emitted chain, and a negative control --------------------------------------


class TemperedTSU(SimTSU):
    """A faulty TSU: it samples q^1.5 (renormalised) but reports F(ψ) = q."""

    def __init__(self, wire: bytes) -> None:
        super().__init__(wire)
        tempered = self.q**1.5
        cdf = np.cumsum(tempered / tempered.sum())
        cdf.flags.writeable = False
        self.cdf = cdf


def test_emitted_chain_is_the_bigram_chain_by_chi2() -> None:
    """Every transition of the block chain (all positions) against p(. | previous), on a poor proposer."""
    run = prepare_run(RunConfig(vocab=16, c=3.0, K=2, tau=1.3, seed=3))
    t = run.target
    for gamma, seed in ((1, 11), (3, 12), (6, 13)):
        blocks = blocks_of(run, gamma, 200_000, seed)
        stat, dof, p, _ = astuple(block_transition_chi2(blocks, t.row, t.V))
        assert dof > 150
        assert p > 0.001, (gamma, stat, dof, p)


def test_negative_control_a_misreporting_tsu_is_detected() -> None:
    run = prepare_run(RunConfig(vocab=16, c=3.0, K=2, tau=1.3, seed=3))
    t = run.target

    def faulty(x: int) -> ContextDraft:
        draft = run.proposer.draft(x)
        return dataclasses.replace(draft, tsu=TemperedTSU(draft.payload_bytes))

    rng = random_stream(12, Stream.CHAIN)
    blocks = concat(list(run_blocks(BigramSource(t), faulty, 3, 200_000, rng)))
    p = block_transition_chi2(blocks, t.row, t.V).p_value
    assert p < 1e-6


def test_fixed_context_blocks_and_transition_counts(small_run: PreparedRun) -> None:
    t = small_run.target
    x = int(np.argmax(t.pi))
    blocks = fixed_context_blocks(t.row, small_run.proposer.draft, t.V, x, 4, 50_000,
                                  random_stream(3, Stream.CHECK))
    assert np.all(blocks.context == x)
    prev, emitted = block_transitions(blocks)
    assert prev.shape == emitted.shape == (int(blocks.accepted_length.sum()) + len(blocks),)
    # The first token of every block follows x and is distributed as p(. | x).
    first = blocks.emitted_tokens()[blocks.first_step]
    observed = np.bincount(first, minlength=t.V)
    expected = len(blocks) * t.row(x)
    assert np.all(np.abs(observed - expected) < 5 * np.sqrt(expected + 1))
    assert block_transition_chi2(blocks, t.row, t.V).p_value > 0.001
    # On a chain, context_transition_counts sees the same transitions as block_transitions.
    chain = blocks_of(small_run, 4, 20_000, 2)
    counts = context_transition_counts(chain, list(range(t.V)), t.V)
    prev, emitted = block_transitions(chain)
    assert np.array_equal(counts, np.stack([np.bincount(emitted[prev == c], minlength=t.V) for c in range(t.V)]))


# --- the exact expectation ---------------------------------------------------------------------------


def dense_expectation(run: PreparedRun, gamma: int) -> tuple[float, list[float]]:
    """Independent computation: the block-start kernel by matrix powers, rho by an eigenvector."""
    t = run.target
    V = t.V
    P = np.stack([t.row(x) for x in range(V)])
    M = np.minimum(P, np.stack([run.proposer.draft(x).tsu.q for x in range(V)]))
    R = P - M
    powers = [np.linalg.matrix_power(M, i) for i in range(gamma + 1)]
    B = sum(powers[i] @ R for i in range(gamma)) + powers[gamma] @ P
    values, vectors = np.linalg.eig(np.asarray(B).T)
    rho: NDArray[np.float64] = np.real(vectors[:, np.argmin(np.abs(values - 1))])
    rho = rho / rho.sum()
    reach = [float(rho @ powers[i].sum(axis=1)) for i in range(gamma + 1)]
    return sum(reach[1:]), [reach[i] / reach[i - 1] for i in range(1, gamma + 1)]


@pytest.mark.parametrize("gamma", [1, 2, 5])
def test_block_expectation_matches_an_independent_dense_computation(small_run: PreparedRun, gamma: int) -> None:
    t = small_run.target
    got = block_expectation(*dense_matrices(t.row, small_run.proposer.draft, t.V), t.pi, gamma)
    want, per_position = dense_expectation(small_run, gamma)
    assert got.accepted_length == pytest.approx(want, abs=1e-10)
    assert got.per_position_accept == pytest.approx(per_position, abs=1e-10)
    assert got.tokens_per_target_call == pytest.approx(1 + want)


def test_measured_accepted_length_matches_the_exact_expectation_not_the_iid_formula(
    small_run: PreparedRun,
) -> None:
    t = small_run.target
    gamma = 4
    expected = block_expectation(*dense_matrices(t.row, small_run.proposer.draft, t.V), t.pi, gamma)
    iid = expected.iid_tokens_per_target_call - 1
    tally = BlockTally(t.V, gamma)
    tally.update(blocks_of(small_run, gamma, 400_000, 21))
    lengths = tally.accepted_lengths()
    mean, se = float(lengths.mean()), batch_means_se(lengths)
    assert abs(mean - expected.accepted_length) < 4 * se
    # Negative control: on this target the i.i.d. formula is off by many standard errors.
    assert abs(mean - iid) > 6 * se


def test_constant_overlap_gives_the_iid_formula() -> None:
    """When q = p exactly (K = V, τ = 1, no quantisation error), every draft is accepted."""
    run = prepare_run(RunConfig(vocab=2, c=50.0, K=2, seed=1))
    t = run.target
    got = block_expectation(*dense_matrices(t.row, run.proposer.draft, t.V), t.pi, 3)
    overlaps = [run.proposer.draft(x).overlap_mass for x in range(t.V)]
    alpha = float(np.dot(t.pi, overlaps))
    assert got.iid_tokens_per_target_call == pytest.approx(expected_tokens_iid(alpha, 3))
    assert min(overlaps) > 0.99
    assert got.accepted_length == pytest.approx(3.0, abs=0.06)


def test_speedup_model_and_iid_formula() -> None:
    assert modelled_speedup(4.0, 3, 0.0) == 4.0
    assert modelled_speedup(4.0, 3, 0.1) == pytest.approx(4.0 / 1.3)
    assert expected_tokens_iid(1.0, 4) == 5.0
    assert expected_tokens_iid(0.0, 4) == 1.0
    assert expected_tokens_iid(0.5, 2) == pytest.approx(1.75)


# --- telemetry, summary and the CLI ------------------------------------------------------------------


def test_summary_is_recomputable_from_the_block_jsonl(small_run: PreparedRun) -> None:
    gamma = 3
    blocks = blocks_of(small_run, gamma, 3_000, 4)
    records = [json.loads(line) for line in block_lines(blocks).splitlines()]
    assert list(records[0]) == ["block", "first_step", "context", "drafted", "accepted_length", "emitted"]
    tally = BlockTally(small_run.target.V, gamma)
    tally.update(blocks)
    stats = summarise_blocks(tally, small_run.target.pi, 0.1, None)
    lengths = [r["accepted_length"] for r in records]
    assert stats["blocks"] == len(records)
    assert stats["tokens_emitted"] == sum(len(r["emitted"]) for r in records)
    assert stats["mean_accepted_length"] == pytest.approx(np.mean(lengths))
    assert stats["tokens_per_target_call"] == pytest.approx(stats["tokens_emitted"] / len(records))
    assert stats["speedup"] == pytest.approx(stats["tokens_per_target_call"] / (gamma * 0.1 + 1))
    for i, rate in enumerate(stats["per_position_accept_rate"]):
        reached = sum(n >= i for n in lengths)
        assert rate == pytest.approx(sum(n >= i + 1 for n in lengths) / reached)
    assert stats["expected"] is None
    assert all(r["emitted"][:-1] == r["drafted"][: r["accepted_length"]] for r in records)


def test_block_checks_pass_on_the_default_target() -> None:
    run = prepare_run(RunConfig(gamma=4, steps=20_000))
    results = run_block_checks(run, 4_000)
    assert [r.passed for r in results] == [True, True, True], [r.detail for r in results]




def test_cli_run_gamma_writes_block_telemetry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(["run", "--gamma", "4", "--cost-ratio", "0.05", "--steps", "20000",
                            "--runs-dir", str(tmp_path)], capsys)
    assert status == 0, err
    (run_dir,) = list(tmp_path.iterdir())
    assert sorted(p.name for p in run_dir.iterdir()) == [BLOCKS_FILE, "summary.json"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["gamma"] == 4 and summary["config"]["cost_ratio"] == 0.05
    assert summary["tokens_emitted"] >= 20_000
    expected = summary["expected"]
    assert abs(summary["mean_accepted_length"] - expected["accepted_length"]) < 4 * summary["mean_accepted_length_se"]
    assert summary["speedup"] == pytest.approx(summary["tokens_per_target_call"] / 1.2)
    assert f"accepted       {summary['mean_accepted_length']:.4f}" in out and BLOCKS_FILE in out
    assert f"(exact {expected['accepted_length']:.4f})" in out


def test_cli_check_gamma_passes(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(["check", "--gamma", "4", "--steps", "20000", "--check-steps", "3000",
                            "--pooled-steps", "20000"], capsys)
    assert status == 0, out + err
    assert "4/4 checks passed" in out  # the guide's three (for blocks) and the pooled TSU χ²


def test_cli_check_gamma_catches_a_faulty_tsu(capsys: pytest.CaptureFixture[str]) -> None:
    # Under --gamma the pooled TSU χ² still tests each context's drafts: a misreport is refused at the
    # first draw, and a 5 % biased sampler fails it as it does without --gamma.
    for fault in ("misreport:0.001", "bias:0.05"):
        status, out, _ = run_cli(["check", "--gamma", "4", "--steps", "5000", "--check-steps", "2000",
                              "--inject-fault", fault], capsys)
        assert status == 1, out
        assert "FAIL  pooled TSU" in out


def test_cli_check_gamma_all_accepted_is_not_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    # V = 2 with K = 2: F(ψ) equals p up to quantisation, every draft is accepted and the run shows no
    # variation at all; the SE floor from the exact expectation keeps that from reading as a failure.
    status, out, err = run_cli(["check", "--vocab", "2", "--gamma", "8", "--steps", "100"], capsys)
    assert status == 0, out + err


@pytest.mark.parametrize(
    ("args", "option"),
    [(["--gamma", "0"], "--gamma"), (["--gamma", "x"], "--gamma"), (["--cost-ratio", "-1"], "--cost-ratio"),
     (["--gamma", "2000"], "--gamma"), (["--tsu", "chip"], "--tsu")],
)
def test_cli_bad_block_options_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], option: str
) -> None:
    status, _out, err = run_cli(["run", *args, "--steps", "10", "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 2
    assert option in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_grid_sweep_over_gammas_writes_rows_and_the_speedup_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from thermospec.cli.sweep import grid_main
    from thermospec.experiments.gamma_sweep import GAMMA_CSV, SPEEDUP_PNG

    status = grid_main(["--vocab", "8", "--c", "0.5", "--gammas", "1", "4", "--Ks", "1", "--taus", "1.0",
                        "--seeds", "2", "--steps", "20000", "--cost-ratios", "0", "0.1",
                        "--runs-dir", str(tmp_path), "--quiet"])
    out, err = capsys.readouterr()
    assert status == 0, err
    (sweep_dir,) = list(tmp_path.iterdir())
    assert (sweep_dir / SPEEDUP_PNG).stat().st_size > 1000
    rows = (sweep_dir / GAMMA_CSV).read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("gamma,K,tau,seed")
    for line in rows[1:]:
        record = dict(zip(rows[0].split(","), line.split(","), strict=True))
        measured, se = float(record["mean_accepted_length"]), float(record["mean_accepted_length_se"])
        assert abs(measured - float(record["expected_accepted_length"])) < 4 * se
        gamma = int(record["gamma"])
        assert float(record["speedup_c0.1"]) == pytest.approx(
            float(record["expected_tokens_per_target_call"]) / (gamma * 0.1 + 1))
    assert "speed-up c=0.1" in out


def test_grid_sweep_refuses_bad_gammas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from thermospec.cli.sweep import grid_main

    for args in (["--gammas", "0"], ["--gammas", "2", "2"], ["--gammas", "2", "--cost-ratios", "-1"]):
        try:
            status = grid_main([*args, "--runs-dir", str(tmp_path / "sweeps"), "--quiet"])
        except SystemExit as exc:
            status = int(exc.code or 0)
        _out, err = capsys.readouterr()
        assert status == 2 and len(err.strip().splitlines()) == 1, (args, err)
        assert "--gammas" in err or "--cost-ratios" in err
    assert not (tmp_path / "sweeps").exists()


def test_block_jsonl_is_byte_identical_for_the_same_seed_and_hashed_in_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    digests = []
    for name in ("a", "b"):
        status, _out, err = run_cli(["run", "--gamma", "3", "--steps", "5000", "--runs-dir", str(tmp_path / name)],
                                capsys)
        assert status == 0, err
        (run_dir,) = list((tmp_path / name).iterdir())
        data = (run_dir / BLOCKS_FILE).read_bytes()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["metrics_sha256"] == hashlib.sha256(data).hexdigest()
        digests.append(summary["metrics_sha256"])
    assert digests[0] == digests[1]


@pytest.mark.parametrize("config", [RunConfig(vocab=5000, K=16, seed=21), RunConfig(vocab=2000, K=8, tau=0.5, seed=22),
                                    RunConfig(vocab=5000, K=4, eps=0.0, seed=23)], ids=["lazy", "dense-large", "eps0"])
def test_blocks_on_compact_tables_are_the_dense_blocks_and_the_reference(config: RunConfig) -> None:
    """Large V: γ-blocks on compact tables emit exactly the dense tables' blocks and Algorithm 1's."""
    from thermospec.runs.prepare import sparse_rows

    run = prepare_run(config)
    sparse = sparse_rows(run)
    assert sparse is not None
    t = run.target
    dense = concat(list(run_blocks(BigramSource(t), run.proposer.draft, 3, 1500, random_stream(1, Stream.CHAIN))))
    compact = concat(list(run_blocks(BigramSource(t), run.proposer.draft, 3, 1500, random_stream(1, Stream.CHAIN),
                                     sparse=sparse)))
    reference = run_blocks_reference(BigramSource(t), run.proposer.draft, 3, 300, random_stream(1, Stream.CHAIN))
    for field_name in ("context", "drafted", "accepted_length", "final"):
        np.testing.assert_array_equal(getattr(dense, field_name), getattr(compact, field_name))
        n = len(getattr(reference, field_name))
        np.testing.assert_array_equal(getattr(reference, field_name), getattr(compact, field_name)[:n])
    x = int(np.argmax(t.pi))
    fixed = [fixed_context_blocks(t.row, run.proposer.draft, t.V, x, 4, 400, np.random.default_rng(3), sparse=rows)
             for rows in (None, sparse)]
    np.testing.assert_array_equal(fixed[0].final, fixed[1].final)
    np.testing.assert_array_equal(fixed[0].accepted_length, fixed[1].accepted_length)
