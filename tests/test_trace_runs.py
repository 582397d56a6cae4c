"""``run/check --trace PATH``: teacher-forced runs over recorded next-token distributions (SPEC §8).

The fast engine emits the per-step reference's tokens; every step's metrics are
SPEC's at V = 131,072; a run corrected against a wrong row fails the χ² a correct
run passes; bad traces and unsupported combinations are refused in one line
before anything is written; a recorder output runs as is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts.make_trace import write_trace
from tests.conftest import REPO, run_cli
from thermospec.api import config
from thermospec.api import run as api_run
from thermospec.core.metrics import ce_gap_nats, overlap_mass, topk_mass
from thermospec.core.payload import craft_payload, decode_payload, encode_payload
from thermospec.core.proposal import proposal_distribution
from thermospec.core.statistics import context_chi2, pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.pairs import PairCounts
from thermospec.engine.positions import PositionProposer, position_tables, run_positions, run_positions_reference
from thermospec.runs.prepare import prepare_run
from thermospec.runs.telemetry import FIELDS
from thermospec.targets.trace import TraceTarget, load_trace

TRACE_FIELDS = (*FIELDS, "position")


def only_run_dir(runs: Path) -> Path:
    (run_dir,) = list(runs.iterdir())
    return run_dir


def tie_and_gap_trace(path: Path) -> Path:
    """Rows with ties at the top, -inf entries (a support narrower than V), a near-uniform and a uniform row."""
    x = np.random.default_rng(3).standard_normal((6, 300)).astype(np.float32) * 3
    x[1, 10:20] = x[1].max() + 1  # ten tied top tokens
    x[2, ::4] = -np.inf
    x[3] = np.float32(0.001) * x[3]
    x[4] = 0.0  # K = V sends it exactly: q = p, the residual is all 0 (a rejection draws from p)
    np.save(path, x)
    return path


@pytest.mark.parametrize(("K", "tau", "eps"), [(8, 1.0, "auto"), (16, 0.7, 0.0), (64, 1.3, 1e-4), (300, 1.0, "auto"),
                                               (1, 1.0, "auto"), (10, 0.4, 1e-3)])
def test_engine_emits_the_per_step_reference_tokens(tmp_path: Path, K: int, tau: float, eps: Any) -> None:
    trace = load_trace(tie_and_gap_trace(tmp_path / "t.npy"))
    drafts = PositionProposer(trace, K, tau, eps).draft
    reference = run_positions_reference(trace, drafts, 2500, np.random.default_rng(11))
    chunks = list(run_positions(trace, drafts, 2500, np.random.default_rng(11), chunk=700))
    assert [c.start for c in chunks] == [0, 700, 1400, 2100]
    for name in ("prev", "proposed", "emitted", "accepted"):
        np.testing.assert_array_equal(np.concatenate([getattr(c, name) for c in chunks]), getattr(reference, name))
    np.testing.assert_array_equal(reference.position, np.arange(2500) % 6)
    if K == 300:
        tables = position_tables(trace.row(4), drafts(4).payload)
        np.testing.assert_array_equal(tables.residual_tokens, np.arange(300))  # the fallback: p itself


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Zipf trace at V = 131,072 with observed tokens: 3 positions (scripts/make_trace.py's function)."""
    folder = tmp_path_factory.mktemp("wide")
    return write_trace(folder / "zipf.npz", 3, 131_072, 1.0, 5, tokens=True, progress=False)


@pytest.mark.parametrize(("K", "size"), [(64, 348), (128, 668)])
def test_every_steps_metrics_are_specs_at_131072_tokens(
    wide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], K: int, size: int
) -> None:
    status, _, err = run_cli(["run", "--trace", str(wide), "--K", str(K), "--steps", "30", "--runs-dir",
                              str(tmp_path)], capsys)
    assert status == 0, err
    run_dir = only_run_dir(tmp_path)
    records = [json.loads(line) for line in (run_dir / "m1_metrics.jsonl").read_text().splitlines()]
    trace = load_trace(wide)
    assert trace.tokens is not None
    expected = {}
    for t in range(3):  # SPEC §2-§6 written out: ψ from the whole row (full sort), F of the decoded bytes
        p = trace.row(t)
        wire = encode_payload(craft_payload(p, K, 1.0, "auto"))
        payload = decode_payload(wire)
        q = proposal_distribution(payload)
        expected[t] = {"K": K, "tau": 1.0, "eps_used": payload.eps, "psi_bytes": len(wire),
                       "topk_mass": topk_mass(p, payload.ids), "overlap_mass": overlap_mass(p, q),
                       "ce_gap_nats": ce_gap_nats(p, q)}
        assert len(wire) == size
    for s, record in enumerate(records):
        t = s % 3
        assert tuple(record) == TRACE_FIELDS and record["step"] == s and record["position"] == t
        assert record["prev_token"] == (None if t == 0 else int(trace.tokens[t - 1]))
        assert {k: record[k] for k in expected[t]} == expected[t]
    drafts = prepare_run(config(trace=str(wide), K=K)).proposer.draft
    reference = run_positions_reference(trace, drafts, 30, random_stream(7, Stream.CHAIN))  # the run's stream
    assert [r["proposed_token"] for r in records] == reference.proposed.tolist()
    assert [r["emitted_token"] for r in records] == reference.emitted.tolist()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["psi_bytes_max"] == size and summary["positions_visited"] == 3
    assert summary["target"] == {"source": "trace", "V": 131_072, "trace": str(wide), "trace_sha256": trace.sha256,
                                 "dtype": "float16", "positions": 3, "tokens": True, "metadata": dict(trace.metadata),
                                 "teacher_forced": True}
    assert summary["config"]["trace"] == str(wide) and "order" not in summary["config"]


def counts_of(trace: TraceTarget, drafts_of: TraceTarget, steps: int, seed: int) -> tuple[Any, PairCounts]:
    """Emitted counts (and per-position pairs) of a run drafted and corrected against `drafts_of`'s rows."""
    drafts = PositionProposer(drafts_of, 16, 1.0, "auto").draft
    counts, pairs = np.zeros(trace.V), PairCounts(trace.V)
    for chunk in run_positions(drafts_of, drafts, steps, np.random.default_rng(seed)):
        counts += np.bincount(chunk.emitted, minlength=trace.V)
        pairs.add(chunk.position, chunk.emitted)
    return counts, pairs


def test_a_run_against_a_wrong_row_fails_both_chi2_a_correct_run_passes(tmp_path: Path) -> None:
    right = load_trace(write_trace(tmp_path / "right.npy", 6, 200, 1.1, 1, progress=False))
    logits = np.load(tmp_path / "right.npy").astype(np.float32)
    logits[2] *= np.float32(1.15)  # one position of six, tempered: the run's χ² must see it
    np.save(tmp_path / "wrong.npy", logits.astype(np.float16))
    wrong = load_trace(tmp_path / "wrong.npy")
    steps = 60_000
    for target, fails in ((right, False), (wrong, True)):
        counts, pairs = counts_of(right, target, steps, seed=4)
        marginal = pooled_chi2(counts, right.expected_counts(steps))
        per_position = context_chi2(pairs.contexts(), right.row)
        if fails:
            assert per_position.p_value < 1e-6 and marginal.p_value < 1e-3, (per_position, marginal)
        else:
            assert per_position.p_value > 1e-3 and marginal.p_value > 1e-3, (per_position, marginal)


def test_run_summary_counts_and_jsonl_recompute(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace_path = write_trace(tmp_path / "z.npy", 7, 500, 1.0, 2, progress=False)
    runs = tmp_path / "runs"
    status, out, err = run_cli(["run", "--trace", str(trace_path), "--K", "16", "--steps", "20000", "--runs-dir",
                                str(runs)], capsys)
    assert status == 0, err
    run_dir = only_run_dir(runs)
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "m1_metrics.jsonl").read_text().splitlines()]
    assert len(records) == 20_000 and all(r["prev_token"] is None for r in records)  # a .npy has no tokens
    assert summary["accept_rate"] == sum(r["accepted"] for r in records) / 20_000
    assert summary["mean_overlap"] == pytest.approx(np.mean([r["overlap_mass"] for r in records]), abs=1e-12)
    assert summary["checklist"] == {"fixed_context_chi2_3_of_4": True, "accept_overlap_within_0.03": True,
                                    "psi_bytes_le_1024": True, "psi_bytes_le_1024_every_K_le_128": True}
    assert summary["p_value"] > 1e-3 and summary["position_p_value"] > 1e-3
    assert "trace " in out and "teacher-forced" in out and "position χ²" in out and "fixed-position χ²" in out
    # The same options and seed: the same bytes (whatever the engine's block size).
    again = api_run(runs_dir=tmp_path / "again", trace=trace_path, K=16, steps=20_000)
    assert (again.run_dir / "m1_metrics.jsonl").read_bytes() == (run_dir / "m1_metrics.jsonl").read_bytes()
    status, out, err = run_cli(["run", "--replay", str(run_dir), "--runs-dir", str(tmp_path / "replay")], capsys)
    assert status == 0 and "identical to the original" in out, err


def test_check_names_its_positions_and_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace_path = write_trace(tmp_path / "z.npy", 20, 1000, 1.1, 9, progress=False)
    status, out, err = run_cli(["check", "--trace", str(trace_path), "--K", "32", "--steps", "20000",
                                "--pooled-steps", "20000"], capsys)
    assert status == 0, out + err
    assert "fixed-position χ²" in out and "t=0:" in out and "t=3:" in out and "the first 4" in out
    assert "pooled TSU χ² (16 positions" in out and "4/4 checks passed" in out
    status, out, _ = run_cli(["check", "--trace", str(trace_path), "--K", "32", "--steps", "5000",
                              "--check-steps", "5000", "--inject-fault", "bias:0.2"], capsys)
    assert status == 1 and "FAIL" in out


def bad_traces(folder: Path) -> dict[str, Path]:
    rows = np.zeros((3, 10), dtype=np.float32)
    rows[1, 4] = np.nan
    np.save(folder / "nan.npy", rows)
    (folder / "text.npy").write_text("not a trace")
    return {"missing": folder / "absent.npy", "nan": folder / "nan.npy", "text": folder / "text.npy"}


@pytest.mark.parametrize("case", ["missing", "nan", "text"])
@pytest.mark.parametrize("command", ["run", "check"])
def test_bad_traces_are_one_line_exit_2_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, command: str
) -> None:
    path = bad_traces(tmp_path)[case]
    runs = tmp_path / "runs"
    extra = ["--runs-dir", str(runs)] if command == "run" else []
    status, out, err = run_cli([command, "--trace", str(path), *extra], capsys)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"run_m1 {command}: error: --trace {path}: "), err
    assert not runs.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--draft-order", "2"], "--draft-order: needs --corpus"),
    (["--corpus", "x.txt"], "--trace: the trace is the target; drop --corpus"),
    (["--corpus", "x.txt", "--order", "3"], "--trace: the trace is the target"),
])
def test_unsupported_combinations_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    trace_path = write_trace(tmp_path / "z.npy", 2, 50, 1.0, 0, progress=False)
    runs = tmp_path / "runs"
    status, out, err = run_cli(["run", "--trace", str(trace_path), *args, "--runs-dir", str(runs)], capsys)
    assert status == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert not runs.exists()


def test_a_recorder_output_runs_as_is(shakespeare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    torch: Any = pytest.importorskip("torch", reason="the hf extra (torch) is not installed")
    transformers: Any = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    tokenizers: Any = pytest.importorskip("tokenizers", reason="tokenizers is not installed")
    from scripts import record_trace

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "tiny"
    corpus = shakespeare.read_text(encoding="utf-8")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([corpus[:20_000]], trainer=trainer)
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe).save_pretrained(folder)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=bpe.get_vocab_size(), n_positions=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=None,
        eos_token_id=None, initializer_range=0.5)).save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text(corpus[:700], encoding="utf-8")
    out = tmp_path / "trace.npz"
    assert record_trace.main(["--model", str(folder), "--text", str(text), "--positions", "40", "--out", str(out),
                              "--local-files-only", "--quiet"]) == 0
    runs = tmp_path / "runs"
    status, _, err = run_cli(["run", "--trace", str(out), "--K", "16", "--steps", "4000", "--runs-dir", str(runs)],
                             capsys)
    assert status == 0, err
    run_dir = only_run_dir(runs)
    trace = load_trace(out)
    assert trace.tokens is not None
    records = [json.loads(line) for line in (run_dir / "m1_metrics.jsonl").read_text().splitlines()[:80]]
    assert [r["prev_token"] for r in records[:3]] == [None, int(trace.tokens[0]), int(trace.tokens[1])]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["target"]["metadata"]["model"] == str(folder)
    assert summary["checklist"]["accept_overlap_within_0.03"] and summary["position_p_value"] > 1e-3


def test_replay_refuses_a_changed_trace_and_audit_says_what_it_audits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_trace(tmp_path / "t.npy", positions=8, vocab=64, exponent=1.0, seed=3)
    status, _, err = run_cli(["run", "--trace", str(path), "--K", "8", "--steps", "500", "--quiet",
                              "--runs-dir", str(tmp_path / "a")], capsys)
    assert status == 0, err
    run_dir = only_run_dir(tmp_path / "a")
    done = subprocess.run([sys.executable, "-m", "scripts.audit_run", str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--trace" in done.stderr
    write_trace(path, positions=8, vocab=64, exponent=1.2, seed=3)  # the trace changes under the run
    status, _, err = run_cli(["run", "--replay", str(run_dir), "--quiet", "--runs-dir", str(tmp_path / "b")], capsys)
    assert status == 2 and "has changed since the run" in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()
