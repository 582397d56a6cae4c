"""Token-level corpora: byte-level BPE trained on the corpus, the sparse Laplace bigram target, its proposer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.conftest import run_cli
from thermospec.core.statistics import pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import fixed_context_draws, run_chain, run_chain_reference
from thermospec.experiments.k_sweep import k_sweep
from thermospec.runs.config import ConfigError, RunConfig
from thermospec.runs.telemetry import FIELDS
from thermospec.targets.bigram import stationary_distribution
from thermospec.targets.bpe import (
    TokenBigramTarget,
    bpe_target,
    encode_corpus,
    parse_tokenizer,
    token_bigram_target,
    train_bpe,
)
from thermospec.tsu.bounded import BoundedProposer, CompactTSU
from thermospec.tsu.drafts import Proposer

SMALL_CORPUS_CHARS = 150_000


@pytest.fixture(scope="module")
def small_corpus(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 150k characters of Tiny Shakespeare: BPE trains on it in well under a second."""
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(shakespeare.read_text(encoding="utf-8")[:SMALL_CORPUS_CHARS], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bpe512(small_corpus: Path) -> TokenBigramTarget:
    pytest.importorskip("tokenizers")
    return bpe_target(str(small_corpus), 512)


def dense_rows(tokens: NDArray[np.int64], V: int) -> NDArray[np.float64]:
    counts = np.zeros((V, V))
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1.0)
    smoothed = counts + 1.0
    rows: NDArray[np.float64] = smoothed / smoothed.sum(axis=1, keepdims=True)
    return rows


# --- the spec ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["bpe:256", "bpe:4096", "bpe:65536"])
def test_parse_tokenizer_accepts(spec: str) -> None:
    assert parse_tokenizer(spec) == int(spec.split(":")[1])


@pytest.mark.parametrize("spec", ["bpe", "bpe:", "bpe:x", "bpe:255", "bpe:65537", "wordpiece:512", "bpe:-5"])
def test_parse_tokenizer_refuses_with_the_option_name(spec: str) -> None:
    with pytest.raises(ValueError, match="--tokenizer"):
        parse_tokenizer(spec)


def test_config_refuses_a_tokenizer_without_a_corpus() -> None:
    with pytest.raises(ConfigError, match="--tokenizer: needs --corpus"):
        RunConfig(tokenizer="bpe:512")


# --- the sparse target -----------------------------------------------------------------------------


def test_sparse_rows_and_pi_equal_the_dense_laplace_chain() -> None:
    rng = np.random.default_rng(3)
    V = 40
    # A skewed token stream so that counts differ a lot between rows.
    tokens = rng.choice(V, size=5_000, p=rng.dirichlet(np.full(V, 0.3))).astype(np.int64)
    target = token_bigram_target(tokens, V)
    P = dense_rows(tokens, V)
    for x in range(V):
        assert np.allclose(target.row(x), P[x], rtol=0, atol=1e-15)
        assert target.row(x).sum() == pytest.approx(1.0, abs=1e-12)
    pi, unique = stationary_distribution(P)
    assert unique and target.stationary_unique
    assert np.allclose(target.pi, pi, rtol=0, atol=1e-12)
    assert np.abs(target.pi @ P - target.pi).sum() < 1e-12
    assert target.V == V and not target.rows_stored and target.widest_support() == V


def test_large_vocabulary_stays_sparse() -> None:
    rng = np.random.default_rng(5)
    V = 16_384
    tokens = rng.zipf(1.3, size=300_000).astype(np.int64) % V
    target = token_bigram_target(tokens, V)
    assert target.sparse_bytes() < 10_000_000 < target.dense_bytes()  # 2 GB dense
    x = int(np.argmax(target.pi))
    p = target.row(x)
    assert p.shape == (V,) and p.sum() == pytest.approx(1.0, abs=1e-12)
    # Stationarity checked through the sparse form: (pi P)[y] = sum_x w_x C[x, y] + sum_x w_x.
    w = target.pi / (target.row_totals + V)
    assert np.abs(target.counts.T @ w + w.sum() - target.pi).sum() < 1e-12


# --- BPE ----------------------------------------------------------------------------------------------


def test_bpe_is_deterministic_and_round_trips(small_corpus: Path) -> None:
    pytest.importorskip("tokenizers")
    text = small_corpus.read_text(encoding="utf-8")
    a, b = train_bpe(text, 512), train_bpe(text, 512)
    assert a.to_str() == b.to_str()
    assert a.get_vocab_size() == 512
    ids = encode_corpus(a, text)
    assert a.decode(ids.tolist()) == text
    assert ids.min() >= 0 and ids.max() < 512
    assert ids.shape[0] < len(text) / 2  # merges compress the text


def test_bpe_target_rows_match_the_encoded_counts(small_corpus: Path, bpe512: TokenBigramTarget) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(bpe512.tokenizer_json)
    tokens = encode_corpus(tokenizer, small_corpus.read_text(encoding="utf-8"))
    assert bpe512.n_tokens == tokens.shape[0]
    P = dense_rows(tokens, bpe512.V)
    for x in (0, 1, int(np.argmax(bpe512.pi)), 511):
        assert np.allclose(bpe512.row(x), P[x], rtol=0, atol=1e-15)


# --- the proposer and the chain -------------------------------------------------------------------------


def test_compact_drafts_equal_full_drafts_and_survive_eviction(bpe512: TokenBigramTarget) -> None:
    full = Proposer(bpe512.row, 32, 1.0, "auto")
    bounded = BoundedProposer(bpe512.row, 32, 1.0, "auto", bpe512.V, max_bytes=1)
    assert bounded.capacity == 16
    for x in range(40):
        a, b = full.draft(x), bounded.draft(x)
        assert isinstance(b.tsu, CompactTSU)
        assert a.payload_bytes == b.payload_bytes
        assert np.array_equal(a.tsu.q, b.tsu.q) and np.array_equal(a.tsu.cdf, b.tsu.cdf)
        assert (a.overlap_mass, a.topk_mass, a.ce_gap_nats) == (b.overlap_mass, b.topk_mass, b.ce_gap_nats)
    again = bounded.draft(0)  # evicted, crafted again to the same bytes
    assert again.payload_bytes == full.draft(0).payload_bytes
    tokens_a, log_a = full.draft(3).tsu.sample(np.random.default_rng(1), 100)
    tokens_b, log_b = bounded.draft(3).tsu.sample(np.random.default_rng(1), 100)
    assert np.array_equal(tokens_a, tokens_b) and np.array_equal(log_a, log_b)
    with pytest.raises(AttributeError):
        bounded.draft(3).tsu.q = np.zeros(3)


def test_chain_on_a_bpe_target_equals_the_reference_and_fits_p(bpe512: TokenBigramTarget) -> None:
    proposer = BoundedProposer(bpe512.row, 16, 1.0, "auto", bpe512.V)
    chunks = list(run_chain(bpe512.row, bpe512.pi, proposer.draft, 3_000, random_stream(2, Stream.CHAIN)))
    ref = run_chain_reference(bpe512.row, bpe512.pi, proposer.draft, 3_000, random_stream(2, Stream.CHAIN))
    assert np.array_equal(np.concatenate([c.emitted for c in chunks]), ref.emitted)
    assert np.array_equal(np.concatenate([c.accepted for c in chunks]), ref.accepted)
    x = int(np.argmax(bpe512.pi))
    draws = fixed_context_draws(bpe512.row(x), proposer.draft(x), 20_000, random_stream(2, Stream.CHECK))
    observed = np.bincount(draws.emitted, minlength=bpe512.V).astype(np.float64)
    assert pooled_chi2(observed, 20_000 * bpe512.row(x)).p_value > 0.001


def test_k_sweep_is_monotone_and_acceptance_tracks_overlap(bpe512: TokenBigramTarget) -> None:
    rows = k_sweep(bpe512, [8, 64], 4_000, 7)
    assert [r.K for r in rows] == [8, 64]
    assert rows[0].psi_bytes < rows[1].psi_bytes
    assert rows[0].topk_mass < rows[1].topk_mass and rows[0].overlap_mass < rows[1].overlap_mass
    for r in rows:
        assert abs(r.accept_rate - r.overlap_mass) < 4 * np.sqrt(0.25 / r.steps) + 0.02


# --- the command line ---------------------------------------------------------------------------------




def test_cli_run_with_bpe_writes_the_m1_jsonl(
    small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tokenizers")
    status, _out, err = run_cli(["run", "--corpus", str(small_corpus), "--tokenizer", "bpe:512", "--K", "32",
                             "--steps", "2000", "--runs-dir", str(tmp_path)], capsys)
    assert status == 0, err
    (run_dir,) = list(tmp_path.iterdir())
    lines = (run_dir / "m1_metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2000 and tuple(json.loads(lines[0])) == FIELDS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["tokenizer"] == "bpe:512"
    assert summary["target"]["V"] == 512
    assert summary["checklist"]["accept_overlap_within_0.03"] is True


def test_cli_check_with_bpe_passes(small_corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tokenizers")
    status, out, err = run_cli(["check", "--corpus", str(small_corpus), "--tokenizer", "bpe:512", "--K", "32",
                            "--steps", "5000", "--check-steps", "5000"], capsys)
    assert status == 0, out + err


@pytest.mark.parametrize(
    "args",
    [["--tokenizer", "bpe:10"], ["--tokenizer", "char"], ["--tokenizer", "bpe:512"]],
)
def test_cli_bad_tokenizer_is_one_line(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _out, err = run_cli(["run", *args, "--steps", "10", "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 2
    assert "--tokenizer" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_cli_block_run_on_a_bpe_target(
    small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tokenizers")
    status, _out, err = run_cli(["run", "--corpus", str(small_corpus), "--tokenizer", "bpe:512", "--K", "16",
                             "--gamma", "4", "--steps", "10000", "--runs-dir", str(tmp_path)], capsys)
    assert status == 0, err
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    gap = abs(summary["mean_accepted_length"] - summary["expected"]["accepted_length"])
    assert gap < 4 * summary["mean_accepted_length_se"]
    assert summary["target"]["V"] == 512
