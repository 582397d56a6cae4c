"""γ-token blocks on every context source (issue 16): order-N contexts and a trace's positions.

For each source: the table-driven blocks emit the per-block reference's tokens; every emitted token,
grouped by the key it was emitted in, follows that key's target row (per-key χ², with a negative control
that checks the tokens against the wrong rows and must fail); ``accept_rate`` matches the exact overlap over
verified positions; and the CLI runs the combination with JSONL and with no telemetry.
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
from thermospec.engine.blocks import block_transitions, run_blocks, run_blocks_reference
from thermospec.engine.chunks import BlockChunk
from thermospec.engine.keys import ContextSource, OrderSource, PositionSource
from thermospec.engine.pairs import PairCounts
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import PreparedRun, context_source, prepare_run

TEXT = ("the quick brown fox jumps over the lazy dog; " * 3 + "a bad cab, a dab of fad. " * 2) * 4


@pytest.fixture(scope="module")
def order_run(tmp_path_factory: pytest.TempPathFactory) -> PreparedRun:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(TEXT, encoding="utf-8")
    return prepare_run(RunConfig(corpus=str(path), order=4, K=3, steps=1))


@pytest.fixture(scope="module")
def trace_run(tmp_path_factory: pytest.TempPathFactory) -> PreparedRun:
    path = write_trace(tmp_path_factory.mktemp("trace") / "t.npz", 12, 40, 1.2, 5, tokens=True, progress=False)
    return prepare_run(RunConfig(trace=str(path), K=4, steps=1))


def emitted_pairs(chunk: BlockChunk, source: ContextSource) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(key, token) of every emitted token, walking each block from its first key."""
    keys, tokens = [], []
    for i in range(len(chunk)):
        key = int(chunk.context[i])
        for token in chunk.emitted(i):
            keys.append(key)
            tokens.append(token)
            key = source.advance(key, token)
    return np.array(keys, dtype=np.int64), np.array(tokens, dtype=np.int64)


def concat(chunks: list[BlockChunk]) -> BlockChunk:
    return BlockChunk(start=0, **{name: np.concatenate([getattr(c, name) for c in chunks])
                                  for name in ("first_step", "context", "drafted", "accepted_length", "final",
                                               "draft_keys")})


@pytest.mark.parametrize("which", ["order", "trace"])
@pytest.mark.parametrize("gamma", [1, 3])
def test_blocks_emit_the_references_tokens(which: str, gamma: int, request: pytest.FixtureRequest) -> None:
    run: PreparedRun = request.getfixturevalue(f"{which}_run")
    source = context_source(run)
    fast = concat(list(run_blocks(source, run.proposer.draft, gamma, 3000, random_stream(3, Stream.CHAIN),
                                  chunk=97)))
    slow = run_blocks_reference(source, run.proposer.draft, gamma, 3000, random_stream(3, Stream.CHAIN))
    for name in ("context", "drafted", "accepted_length", "final", "draft_keys", "first_step"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name


def test_sources_are_the_ones_asked_for(order_run: PreparedRun, trace_run: PreparedRun) -> None:
    assert isinstance(context_source(order_run), OrderSource)
    assert isinstance(context_source(trace_run), PositionSource)
    trace = context_source(trace_run)
    assert [trace.advance(t, 7) for t in (0, 5, 11)] == [1, 6, 0]  # teacher-forced: the token does not matter


@pytest.mark.parametrize("which", ["order", "trace"])
def test_emitted_tokens_follow_each_keys_row_and_a_wrong_row_fails(which: str, request: pytest.FixtureRequest
                                                                   ) -> None:
    run: PreparedRun = request.getfixturevalue(f"{which}_run")
    source = context_source(run)
    chunk = concat(list(run_blocks(source, run.proposer.draft, 3, 60_000, random_stream(11, Stream.CHAIN))))
    keys, tokens = emitted_pairs(chunk, source)
    pairs = PairCounts(source.V)
    pairs.add(keys, tokens)
    right = context_chi2(pairs.contexts(), source.row)
    assert right.p_value > 1e-3, right

    # Negative control: the same tokens against the row of another key (a verifier that used the wrong p).
    seen = sorted({int(k) for k in np.unique(keys)})
    other = {k: seen[(i + 1) % len(seen)] for i, k in enumerate(seen)}
    wrong = context_chi2(pairs.contexts(), lambda k: source.row(other[k]))
    assert wrong.p_value < 1e-6, wrong


@pytest.mark.parametrize("which", ["order", "trace"])
def test_cli_runs_blocks_on_the_source_and_acceptance_matches_overlap(
    which: str, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run: PreparedRun = request.getfixturevalue(f"{which}_run")
    given = ["--corpus", str(run.config.corpus), "--order", "4"] if which == "order" else ["--trace",
                                                                                         str(run.config.trace)]
    for telemetry in ("jsonl", "none"):
        runs = tmp_path / telemetry
        status, _, err = run_cli(["run", *given, "--K", "3", "--gamma", "3", "--steps", "30000", "--telemetry",
                                  telemetry, "--quiet", "--runs-dir", str(runs)], capsys)
        assert status == 0, err
        (folder,) = runs.iterdir()
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["chi2_stat"] is None and summary["expected"] is None  # N·π is not these keys' law
        assert abs(summary["accept_rate"] - summary["mean_overlap"]) < 0.02
        assert summary["tokens_emitted"] >= 30_000
        assert (folder / "m1_blocks.jsonl").exists() == (telemetry == "jsonl")


@pytest.mark.parametrize("which", ["order", "trace"])
def test_check_gamma_runs_on_the_source_with_its_keys(which: str, request: pytest.FixtureRequest,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run: PreparedRun = request.getfixturevalue(f"{which}_run")
    given = ["--corpus", str(run.config.corpus), "--order", "4"] if which == "order" else ["--trace",
                                                                                         str(run.config.trace)]
    status, out, err = run_cli(["check", *given, "--K", "3", "--gamma", "2", "--steps", "3000"], capsys)
    assert status == 0, out + err
    assert "PASS  fixed-context χ² of γ=2 blocks" in out and "PASS  mean accepted length" in out


def test_block_transitions_put_each_token_in_its_key(trace_run: PreparedRun) -> None:
    source = context_source(trace_run)
    chunk = concat(list(run_blocks(source, trace_run.proposer.draft, 3, 2000, random_stream(5, Stream.CHAIN))))
    keys, tokens = block_transitions(chunk, source.advance)
    walked_keys, walked_tokens = emitted_pairs(chunk, source)
    assert np.array_equal(keys, walked_keys) and np.array_equal(tokens, walked_tokens)


@pytest.mark.parametrize("which", ["bigram", "trace"])
def test_blocks_and_trees_with_chains_chain_0_is_the_single_run(
    which: str, trace_run: PreparedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    given = ["--vocab", "24"] if which == "bigram" else ["--trace", str(trace_run.config.trace)]
    for extra in (["--gamma", "3"], ["--gamma", "2", "--drafts", "2"]):
        single, many = tmp_path / f"{which}{len(extra)}-1", tmp_path / f"{which}{len(extra)}-3"
        base = ["run", *given, "--K", "4", *extra, "--steps", "3000", "--quiet"]
        assert run_cli([*base, "--runs-dir", str(single)], capsys)[0] == 0
        assert run_cli([*base, "--chains", "3", "--runs-dir", str(many)], capsys)[0] == 0
        (one,), (three,) = single.iterdir(), many.iterdir()
        assert (one / "m1_blocks.jsonl").read_bytes() == (three / "chain_0000" / "m1_blocks.jsonl").read_bytes()
        assert (three / "chain_0001" / "m1_blocks.jsonl").read_bytes() != (one / "m1_blocks.jsonl").read_bytes()
        pooled = json.loads((three / "summary.json").read_text())
        chains = [json.loads((three / f"chain_{b:04d}" / "summary.json").read_text()) for b in range(3)]
        assert pooled["chains"] == 3 and pooled["tokens_emitted"] == sum(c["tokens_emitted"] for c in chains)
        assert pooled["accept_rate_min"] <= pooled["accept_rate"] <= pooled["accept_rate_max"]


@pytest.mark.parametrize("extra", [["--gamma", "3"], ["--gamma", "2", "--drafts", "2", "--chains", "2"]])
def test_block_parquet_holds_the_jsonl_records(
    extra: list[str], order_run: PreparedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    base = ["run", "--corpus", str(order_run.config.corpus), "--order", "4", "--K", "3", *extra, "--steps", "2000",
            "--quiet"]
    assert run_cli([*base, "--runs-dir", str(tmp_path / "j")], capsys)[0] == 0
    assert run_cli([*base, "--telemetry", "parquet", "--runs-dir", str(tmp_path / "p")], capsys)[0] == 0
    (j,), (p,) = (tmp_path / "j").iterdir(), (tmp_path / "p").iterdir()
    rows = pq.read_table(p / "m1_blocks.parquet").to_pylist()
    files = sorted(j.glob("**/m1_blocks.jsonl"))
    records = [{"chain": b, **json.loads(line)} if len(files) > 1 else json.loads(line)
               for b, path in enumerate(files) for line in path.read_text().splitlines()]
    key = (lambda r: (r["chain"], r["block"])) if len(files) > 1 else (lambda r: r["block"])
    assert sorted(rows, key=key) == sorted(records, key=key)
    assert json.loads((p / "summary.json").read_text())["telemetry"] == "m1_blocks.parquet"


def test_thrml_with_parquet_and_none_and_blocks_of_chains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("thrml")
    pq = pytest.importorskip("pyarrow.parquet")
    base = ["run", "--tsu", "thrml", "--vocab", "12", "--K", "4", "--steps", "150", "--quiet"]
    for name, extra in (("jsonl", []), ("parquet", ["--telemetry", "parquet"]), ("none", ["--telemetry", "none"]),
                        ("blocks", ["--gamma", "2", "--chains", "2"])):
        assert run_cli([*base, *extra, "--runs-dir", str(tmp_path / name)], capsys)[0] == 0
    (j,), (p,), (n,) = ((tmp_path / name).iterdir() for name in ("jsonl", "parquet", "none"))
    records = [json.loads(line) for line in (j / "m1_metrics.jsonl").read_text().splitlines()]
    rows = pq.read_table(p / "m1_metrics.parquet").to_pylist()
    assert [r["emitted_token"] for r in rows] == [r["emitted_token"] for r in records]
    assert json.loads((n / "summary.json").read_text())["accept_rate"] == json.loads(
        (j / "summary.json").read_text())["accept_rate"]
    (b,) = (tmp_path / "blocks").iterdir()
    assert json.loads((b / "summary.json").read_text())["chains"] == 2


@pytest.mark.parametrize("which", ["order", "trace"])
def test_thrml_on_order_and_trace_keys(which: str, request: pytest.FixtureRequest, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("thrml")
    run: PreparedRun = request.getfixturevalue(f"{which}_run")
    given = ["--corpus", str(run.config.corpus), "--order", "4"] if which == "order" else ["--trace",
                                                                                         str(run.config.trace)]
    thrml = prepare_run(RunConfig(**{**run.config.__dict__, "tsu": "thrml"}))
    assert not thrml.proposer.samples_payload  # the THRML proposer, not SimTSU's tables
    for extra in ([], ["--gamma", "2", "--drafts", "2"]):
        runs = tmp_path / str(len(extra))
        status, _, err = run_cli(["run", *given, "--tsu", "thrml", "--K", "3", *extra, "--steps", "120", "--quiet",
                                  "--runs-dir", str(runs)], capsys)
        assert status == 0, err
        (folder,) = runs.iterdir()
        assert json.loads((folder / "summary.json").read_text())["config"]["tsu"] == "thrml"


def test_trace_with_chains_each_from_position_0(trace_run: PreparedRun, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--trace", str(trace_run.config.trace), "--K", "4", "--steps", "6000", "--quiet"]
    assert run_cli([*base, "--runs-dir", str(tmp_path / "one")], capsys)[0] == 0
    assert run_cli([*base, "--chains", "3", "--runs-dir", str(tmp_path / "three")], capsys)[0] == 0
    (one,), (three,) = (tmp_path / "one").iterdir(), (tmp_path / "three").iterdir()
    assert (one / "m1_metrics.jsonl").read_bytes() == (three / "chain_0000" / "m1_metrics.jsonl").read_bytes()
    first = [json.loads(line)["position"] for line in
             (three / "chain_0002" / "m1_metrics.jsonl").read_text().splitlines()[:3]]
    assert first == [0, 1, 2]
    pooled = json.loads((three / "summary.json").read_text())
    chains = [json.loads((three / f"chain_{b:04d}" / "summary.json").read_text()) for b in range(3)]
    assert pooled["steps"] == 18_000 and pooled["chains"] == 3
    assert pooled["accept_rate"] == pytest.approx(sum(c["accept_rate"] for c in chains) / 3)
    assert pooled["position_p_value"] > 1e-3 and pooled["p_value"] > 1e-3
    assert abs(pooled["accept_rate"] - pooled["mean_overlap"]) < 0.02


def test_pooled_tree_summary_of_chains_carries_what_one_chain_does(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--vocab", "24", "--K", "4", "--gamma", "2", "--drafts", "2", "--steps", "2000", "--quiet"]
    assert run_cli([*base, "--chains", "2", "--runs-dir", str(tmp_path)], capsys)[0] == 0
    (folder,) = tmp_path.iterdir()
    pooled = json.loads((folder / "summary.json").read_text())
    chains = [json.loads((folder / f"chain_{b:04d}" / "summary.json").read_text()) for b in range(2)]
    for key in ("tree_nodes_per_block", "tsu_draws_per_token", "expected_accepted_length_given_starts",
                "psi_bytes_max", "mean_ce_gap"):
        assert pooled[key] is not None and all(c[key] is not None for c in chains), key
    weights = [c["blocks"] for c in chains]
    assert pooled["expected_accepted_length_given_starts"] == pytest.approx(
        sum(w * c["expected_accepted_length_given_starts"] for w, c in zip(weights, chains, strict=True))
        / sum(weights))
