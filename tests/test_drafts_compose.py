"""``--drafts N`` composes: with ``--chains B`` (chain 0 is the single run), ``--telemetry parquet`` and TSUs
whose draws are their own (``--tsu thrml``: the per-step reference)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.conftest import run_cli
from thermospec.core.sampling import inverse_cdf
from thermospec.core.statistics import context_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.batch import chain_stream
from thermospec.engine.chunks import DraftsChunk
from thermospec.engine.drafts import run_drafts_chains
from thermospec.engine.keys import BigramSource
from thermospec.engine.tally import RunTally
from thermospec.runs.config import RunConfig
from thermospec.runs.drafts_run import DraftsMode
from thermospec.runs.prepare import PreparedRun, prepare_run
from thermospec.runs.telemetry import parquet_available
from thermospec.tsu.drafts import ContextDraft, Proposer
from thermospec.tsu.sim import SimTSU
from thermospec.tsu.thrml import thrml_available


@pytest.fixture(scope="module")
def small() -> PreparedRun:
    return prepare_run(RunConfig(vocab=12, c=2.0, K=3, tau=1.3, seed=4))


def pooled_p(run: PreparedRun, chunks: list[list[DraftsChunk]]) -> float:
    """χ² of the pooled (context, emitted) counts against p per context."""
    V = run.target.V
    tally = RunTally(V, track_transitions=True)
    for group in chunks:
        for chunk in group:
            tally.update(chunk)
    assert tally.transitions is not None
    counts = tally.transitions.reshape(V, V).astype(np.float64)
    visited = np.flatnonzero(counts.sum(axis=1)).tolist()
    return context_chi2(((x, counts[x]) for x in visited), run.target.row).p_value


class FirstDraft:
    """Negative control: emits the first draft (output law q, not p)."""

    n, name, acceptance = 2, "recursive", 1.0

    def step(self, drafts: list[int], u: NDArray[np.float64]) -> tuple[int, int | None]:
        return int(drafts[0]), 0

    def draws_used(self, index: int | None) -> int:
        return 1


@pytest.mark.parametrize("verifier", ["recursive", "spectr", "optimal"])
def test_chains_are_exact(small: PreparedRun, verifier: str) -> None:
    t = small.target
    rngs = [chain_stream(5, b) for b in range(3)]
    chunks = list(run_drafts_chains(BigramSource(t), small.proposer.draft, 2, verifier, 8000, rngs, chunk=3000))
    assert len(chunks) == 3 and all(len(group) == 3 for group in chunks)
    assert pooled_p(small, chunks) > 0.001


def test_a_wrong_verifier_fails_the_chains_test(small: PreparedRun) -> None:
    t = small.target
    wrong = list(run_drafts_chains(BigramSource(t), small.proposer.draft, 2, "recursive", 3000,
                                   [chain_stream(5, b) for b in range(3)], plans=lambda x: FirstDraft(),  # type: ignore[arg-type, return-value]
                                   backend="reference"))
    assert pooled_p(small, wrong) < 1e-6


def test_chain_b_is_its_own_stream_and_chain_0_the_single_run(small: PreparedRun) -> None:
    t = small.target
    rngs = [chain_stream(5, b) for b in range(3)]
    both = list(run_drafts_chains(BigramSource(t), small.proposer.draft, 3, "optimal", 2000, rngs, chunk=700))
    for b in range(3):
        alone = list(run_drafts_chains(BigramSource(t), small.proposer.draft, 3, "optimal", 2000, [chain_stream(5, b)],
                                       chunk=700))
        assert all(np.array_equal(g[b].emitted, a[0].emitted) for g, a in zip(both, alone, strict=True))
    assert not np.array_equal(both[0][0].emitted, both[0][1].emitted)


def test_cli_chain_0_is_the_single_run_byte_for_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["run", "--drafts", "3", "--verifier", "spectr", "--vocab", "32", "--K", "4", "--steps", "2000",
              "--quiet"]
    assert run_cli([*common, "--chains", "3", "--runs-dir", str(tmp_path / "b")], capsys)[0] == 0
    assert run_cli([*common, "--runs-dir", str(tmp_path / "one")], capsys)[0] == 0
    (batch,), (one,) = (tmp_path / "b").iterdir(), (tmp_path / "one").iterdir()
    assert (batch / "chain_0000" / "m1_metrics.jsonl").read_bytes() == (one / "m1_metrics.jsonl").read_bytes()
    assert (batch / "chain_0002" / "m1_metrics.jsonl").read_bytes() != (one / "m1_metrics.jsonl").read_bytes()
    summary = json.loads((batch / "summary.json").read_text())
    assert summary["chains"] == 3 and summary["steps"] == 6000 and summary["verifier"] == "spectr"
    assert abs(summary["accept_rate"] - summary["mean_overlap"]) < 0.03
    chain_summary = json.loads((batch / "chain_0001" / "summary.json").read_text())
    assert chain_summary["chain"] == 1 and chain_summary["steps"] == 2000


def rows_of(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return list(pq.read_table(path).to_pylist())


@pytest.mark.skipif(not parquet_available(), reason="the optional 'parquet' extra (pyarrow) is not installed")
@pytest.mark.parametrize("chains", [1, 2])
def test_parquet_columns_are_the_jsonl_fields(chains: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    common = ["run", "--drafts", "2", "--verifier", "recursive", "--vocab", "16", "--K", "2", "--steps", "1500",
              "--chains", str(chains), "--quiet"]
    assert run_cli([*common, "--runs-dir", str(tmp_path / "j")], capsys)[0] == 0
    assert run_cli([*common, "--telemetry", "parquet", "--runs-dir", str(tmp_path / "p")], capsys)[0] == 0
    (j,), (p,) = (tmp_path / "j").iterdir(), (tmp_path / "p").iterdir()
    rows = rows_of(p / "m1_metrics.parquet")
    for b in range(chains):
        jsonl = j / "m1_metrics.jsonl" if chains == 1 else j / f"chain_{b:04d}" / "m1_metrics.jsonl"
        records = [json.loads(line) for line in jsonl.read_text().splitlines()]
        mine = [r for r in rows if r.get("chain", 0) == b]
        if chains > 1:
            assert all(r.pop("chain") == b for r in mine)
        assert mine == records  # same fields, same order, same values (null accepted_index included)
        assert any(r["accepted_index"] is None for r in records) and any(r["accepted_index"] == 1 for r in records)


class ReversedTSU(SimTSU):
    """Draws F(ψ) exactly, but by inverting the CDF from the last token down: its draws are its own."""

    samples_payload = False

    def sample(self, rng: np.random.Generator, n: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        V = self.q.shape[0]
        tokens = (V - 1 - inverse_cdf(np.cumsum(self.q[::-1]), rng.random(n))).astype(np.int64)
        return tokens, self.report_log_q(tokens)


class ReversedProposer(Proposer):
    samples_payload = False

    def craft(self, context: int) -> ContextDraft:
        draft = super().craft(context)
        return dataclasses.replace(draft, tsu=ReversedTSU(draft.payload_bytes))


def test_a_tsu_with_its_own_draws_runs_the_reference(small: PreparedRun, tmp_path: Path) -> None:
    config = dataclasses.replace(small.config, drafts=2, verifier="optimal", steps=2500)
    own = dataclasses.replace(small, config=config,
                              proposer=ReversedProposer(small.target.row, config.K, config.tau, config.eps))
    mode = DraftsMode(own, tmp_path, "none", chains=2)
    chunks = list(mode.chunks())
    assert pooled_p(own, chunks) > 0.001
    table_driven = list(DraftsMode(dataclasses.replace(small, config=config), tmp_path, "none", chains=2).chunks())
    assert not np.array_equal(chunks[0][0].proposed, table_driven[0][0].proposed)  # the TSU's own draws


@pytest.mark.skipif(not thrml_available(), reason="the optional 'thrml' extra (THRML + JAX) is not installed")
def test_cli_drafts_with_thrml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(["run", "--tsu", "thrml", "--drafts", "2", "--verifier", "recursive", "--vocab", "16",
                              "--K", "4", "--steps", "800", "--quiet", "--runs-dir", str(tmp_path)], capsys)
    assert status == 0, err
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tsu_backend"]["name"] == "thrml" and summary["drafts"] == 2
    assert summary["transition_p_value"] > 0.001
    assert abs(summary["accept_rate"] - summary["mean_overlap"]) < 0.03


def test_one_draft_runs_for_every_verifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["run", "--vocab", "32", "--K", "4", "--steps", "1500", "--quiet"]
    assert run_cli([*common, "--runs-dir", str(tmp_path / "m1")], capsys)[0] == 0
    (m1,) = (tmp_path / "m1").iterdir()
    for verifier in ("spectr", "optimal"):
        status, _, err = run_cli([*common, "--drafts", "1", "--verifier", verifier,
                                  "--runs-dir", str(tmp_path / verifier)], capsys)
        assert status == 0, err
        (run_dir,) = (tmp_path / verifier).iterdir()
        assert (run_dir / "m1_metrics.jsonl").read_bytes() == (m1 / "m1_metrics.jsonl").read_bytes()


def test_streams_are_named(small: PreparedRun) -> None:
    assert chain_stream(5, 0).random() == random_stream(5, Stream.CHAIN).random()


def test_chains_without_telemetry_keep_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(["run", "--drafts", "2", "--verifier", "optimal", "--vocab", "16", "--K", "2",
                              "--steps", "1500", "--chains", "3", "--telemetry", "none", "--quiet",
                              "--runs-dir", str(tmp_path)], capsys)
    assert status == 0, err
    (run_dir,) = tmp_path.iterdir()
    assert [p.name for p in run_dir.iterdir()] == ["summary.json"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4500 and summary["steps_per_chain"] == 1500
    assert summary["chain_accept_rate_min"] <= summary["accept_rate"] <= summary["chain_accept_rate_max"]


def test_a_failed_write_keeps_every_chain_at_the_same_whole_chunks(small: PreparedRun, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import thermospec.runs.telemetry as telemetry
    from thermospec.runs.storage import OutputError, append_whole

    config = dataclasses.replace(small.config, drafts=2, verifier="recursive")
    mode = DraftsMode(dataclasses.replace(small, config=config), tmp_path, "jsonl", chains=3)
    t = small.target
    groups = run_drafts_chains(BigramSource(t), small.proposer.draft, 2, "recursive", 1000,
                               [chain_stream(5, b) for b in range(3)], plans=mode.plans, chunk=500)
    mode.record(next(groups))
    sizes = [(tmp_path / f"chain_{b:04d}" / "m1_metrics.jsonl").stat().st_size for b in range(3)]
    written = append_whole

    def full_disk_at_chain_2(path: Path, text: str, size: int) -> int:
        if "chain_0002" in str(path):
            raise OutputError(f"{path}: cannot write (No space left on device)")
        return written(path, text, size)

    monkeypatch.setattr(telemetry, "append_whole", full_disk_at_chain_2)
    with pytest.raises(OutputError):
        mode.record(next(groups))
    assert [(tmp_path / f"chain_{b:04d}" / "m1_metrics.jsonl").stat().st_size for b in range(3)] == sizes
    assert mode.tokens() == 1500 and all(s > 0 for s in sizes)
