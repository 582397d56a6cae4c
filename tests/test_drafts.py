"""Many drafts per target call (``--drafts N``): exact for every verifier, M1 at N = 1, telemetry and summary."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, run_cli
from thermospec.cli.drafts_sweep import main as sweep_main
from thermospec.core.statistics import context_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.core.verifiers import VERIFIERS, VerifierPlan
from thermospec.engine.chain import run_chain_reference
from thermospec.engine.chunks import DraftsChunk
from thermospec.engine.drafts import plan_source, run_drafts
from thermospec.engine.tally import RunTally
from thermospec.experiments.sweeps import read_csv_rows
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import PreparedRun, prepare_run


@pytest.fixture(scope="module")
def small() -> PreparedRun:
    return prepare_run(RunConfig(vocab=16, c=3.0, K=2, tau=1.3, seed=3))


def transition_p(run: PreparedRun, chunks: list[DraftsChunk], V: int) -> float:
    tally = RunTally(V, track_transitions=True)
    for chunk in chunks:
        tally.update(chunk)
    assert tally.transitions is not None
    counts = tally.transitions.reshape(V, V).astype(np.float64)
    return context_chi2(((x, counts[x]) for x in np.flatnonzero(counts.sum(axis=1)).tolist()), run.target.row).p_value


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_one_draft_is_the_m1_chain(small: PreparedRun, verifier: str) -> None:
    t = small.target
    reference = run_chain_reference(t.row, t.pi, small.proposer.draft, 4000, random_stream(5, Stream.CHAIN))
    chunks = list(run_drafts(t.row, t.pi, small.proposer.draft, 1, verifier, 4000, random_stream(5, Stream.CHAIN),
                             chunk=999))
    assert np.array_equal(np.concatenate([c.emitted for c in chunks]), reference.emitted)
    assert np.array_equal(np.concatenate([c.accepted for c in chunks]), reference.accepted)


@pytest.mark.parametrize("verifier", VERIFIERS)
@pytest.mark.parametrize("n", [2, 4])
def test_the_chain_is_the_target_for_every_verifier(small: PreparedRun, verifier: str, n: int) -> None:
    t = small.target
    chunks = list(run_drafts(t.row, t.pi, small.proposer.draft, n, verifier, 25_000, random_stream(9, Stream.CHAIN)))
    assert transition_p(small, chunks, t.V) > 0.001
    accepted = np.concatenate([c.accepted for c in chunks])
    index = np.concatenate([c.accepted_index for c in chunks])
    assert np.array_equal(accepted, index >= 0) and index.max() < n


@dataclasses.dataclass(frozen=True)
class FirstDraft:
    """Negative control: emits the first draft, always (output law q, not p)."""

    n: int
    acceptance: float = 1.0

    def step(self, drafts: list[int], u: np.ndarray) -> tuple[int, int | None]:
        return int(drafts[0]), 0

    def draws_used(self, index: int | None) -> int:
        return 1


def test_a_wrong_verifier_fails_the_same_test(small: PreparedRun) -> None:
    t = small.target
    wrong: VerifierPlan = FirstDraft(2)  # type: ignore[assignment]
    chunks = list(run_drafts(t.row, t.pi, small.proposer.draft, 2, "recursive", 25_000,
                             random_stream(9, Stream.CHAIN), plans=lambda x: wrong,
                             backend="reference"))
    assert transition_p(small, chunks, t.V) < 1e-6


def test_run_drafts_1_is_m1_byte_for_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, extra in (("m1", []), ("d1", ["--drafts", "1"])):
        status, _, err = run_cli(["run", "--steps", "3000", "--quiet", "--runs-dir", str(tmp_path / name), *extra],
                                 capsys)
        assert status == 0, err
    (a,), (b,) = (tmp_path / "m1").iterdir(), (tmp_path / "d1").iterdir()
    assert (a / "m1_metrics.jsonl").read_bytes() == (b / "m1_metrics.jsonl").read_bytes()
    assert "drafts" not in json.loads((b / "summary.json").read_text())["config"]  # N = 1 is recorded as M1


def test_run_drafts_writes_the_fields_and_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(["run", "--vocab", "64", "--K", "8", "--drafts", "2", "--verifier", "optimal",
                                "--steps", "6000", "--quiet", "--runs-dir", str(tmp_path)], capsys)
    assert status == 0, err
    (run_dir,) = tmp_path.iterdir()
    records = [json.loads(line) for line in (run_dir / "m1_metrics.jsonl").read_text().splitlines()]
    assert len(records) == 6000
    assert list(records[0])[-2:] == ["drafts_used", "accepted_index"]
    assert all((r["accepted_index"] is None) == (not r["accepted"]) for r in records)
    assert all(r["drafts_used"] == 2 for r in records)  # the optimal verifier looks at every draft
    run = prepare_run(RunConfig(vocab=64, K=8, drafts=2, verifier="optimal"))
    plans = plan_source(run.target.row, run.proposer.draft, "optimal", 2)
    assert all(r["overlap_mass"] == plans(r["prev_token"]).acceptance for r in records[:200])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["drafts"] == 2 and summary["config"]["verifier"] == "optimal"
    assert summary["single_draft_acceptance"] < summary["acceptance_optimum"] <= summary["acceptance_bound"] + 1e-12
    assert abs(summary["accept_rate"] - summary["mean_overlap"]) < 0.03
    assert summary["gain_fraction"] > 0.5 and summary["checklist"]["fixed_context_chi2_3_of_4"] is True
    assert "drafts         N = 2, optimal verifier" in out


@pytest.mark.parametrize("target", [[], ["--corpus", "{corpus}", "--K", "8"]], ids=["synthetic", "shakespeare"])
def test_check_drafts_4_passes(target: list[str], shakespeare: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.replace("{corpus}", str(shakespeare)) for a in target]
    status, out, _ = run_cli(["check", *args, "--drafts", "4", "--check-steps", "4000", "--steps", "8000",
                              "--pooled-steps", "20000"], capsys)
    assert status == 0, out
    assert "4/4 checks passed" in out


@pytest.mark.parametrize(("extra", "reason"), [(["--verifier", "best"], "--verifier"),
                                               (["--drafts", "65"], "--drafts")])
def test_refusals_are_one_line(extra: list[str], reason: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(["run", "--drafts", "2", *extra, "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 2 and err.count("\n") == 1 and reason in err, err
    assert not (tmp_path / "runs").exists()


def test_drafts_sweep_writes_its_table_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep_main(["--vocab", "32", "--Ks", "4", "--Ns", "1", "2", "--verifiers", "recursive", "optimal",
                       "--steps", "800", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (folder,) = tmp_path.iterdir()
    rows = read_csv_rows(folder / "m1_drafts_sweep.csv")
    assert [(r["N"], r["verifier"]) for r in rows] == [("1", "recursive"), ("1", "optimal"), ("2", "recursive"),
                                                        ("2", "optimal")]
    optimal = rows[3]
    assert float(optimal["exact_acceptance"]) == pytest.approx(float(optimal["optimum"]), abs=1e-12)
    assert float(rows[2]["exact_acceptance"]) < float(optimal["exact_acceptance"]) <= float(optimal["bound"])
    assert (folder / "m1_acceptance_vs_drafts.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 4 | 2 | optimal |" in out


def test_drafts_sweep_keeps_finished_rows_on_ctrl_c(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.sweep_drafts", "--steps", "20000", "--quiet", "--runs-dir", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list(tmp_path.glob("*/m1_drafts_sweep.csv"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.count("\n") == 1 and "finished and kept" in err, err
    (csv,) = tmp_path.glob("*/m1_drafts_sweep.csv")
    assert 1 <= len(read_csv_rows(csv)) < 15
