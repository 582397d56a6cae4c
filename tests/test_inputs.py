"""Edge inputs as a user meets them (issue 8, point 4): each test failed before its fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, run_cli
from thermospec.cli.m1 import main
from thermospec.cli.sweep import grid_main
from thermospec.core.metrics import ce_gap_nats
from thermospec.targets.corpus import corpus_target, read_corpus


def test_a_leading_bom_is_not_a_token(tmp_path: Path) -> None:
    plain, with_bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text("abca\nbca\n", encoding="utf-8")
    with_bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert read_corpus(with_bom)[0] == read_corpus(plain)[0]
    a, b = corpus_target(plain), corpus_target(with_bom)
    assert a.vocabulary == b.vocabulary and "\ufeff" not in (b.vocabulary or ())
    np.testing.assert_array_equal(a.P, b.P)
    assert a.corpus_sha256 != b.corpus_sha256  # the recorded digest is of the bytes, as read


def test_crlf_is_kept_and_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"ab\r\nba\r\n")
    assert "\r" in (corpus_target(crlf).vocabulary or ())
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "byte-order mark" in out and "CRLF" in out


def test_ce_gap_is_never_negative() -> None:
    # q is p up to rounding (each entry one ulp away) and the float sum of p (log p - log q) is negative:
    # the clamp, not luck, keeps the gap at 0
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4))
    q = np.nextafter(p, p * np.array([0.0, 2.0, 2.0, 2.0]))
    assert np.all(q != p)
    assert float(np.sum(p * (np.log(p) - np.log(q)))) < 0.0
    assert ce_gap_nats(p, q) == 0.0
    # a positive gap keeps its bits
    rng = np.random.default_rng(3)
    for _ in range(200):
        r = rng.dirichlet(np.ones(50))
        assert ce_gap_nats(r, r.copy()) == 0.0
        s = rng.dirichlet(np.ones(50))
        exact = float(np.sum(r * (np.log(r) - np.log(s))))
        assert ce_gap_nats(r, s) == exact


def test_small_corpus_has_no_negative_ce_gap_in_its_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log.\n" * 3, encoding="utf-8")
    status, _, err = run_cli(["run", "--corpus", str(corpus), "--K", "64", "--steps", "3000", "--quiet",
                              "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    gaps = [json.loads(line)["ce_gap_nats"] for line in (run_dir / "m1_metrics.jsonl").read_text().splitlines()]
    assert min(gaps) >= 0.0
    assert json.loads((run_dir / "summary.json").read_text())["mean_ce_gap"] >= 0.0


@pytest.mark.parametrize(("option", "text", "reason"), [
    ("--steps", "10_000", "an integer >= 1"),
    ("--steps", " 100", "an integer >= 1"),
    ("--steps", "2.5", "an integer >= 1"),
    ("--seed", str(2**70), "an integer in [0, 9223372036854775807]"),
    ("--eps", "-1e-9", ">= 0"),
    ("--tau", "0x10", "> 0"),
    ("--eps", "1e-400", ">= 0"),
])
def test_numbers_are_spelled_one_way(option: str, text: str, reason: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(["run", option, text, "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 2 and err.count("\n") == 1 and option in err and reason in err, err
    assert not (tmp_path / "runs").exists()


def test_scientific_integers_and_negative_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(["run", "--steps", "2e3", "--eps", "-0", "--quiet", "--runs-dir", str(tmp_path)], capsys)
    assert status == 0, err
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["steps"] == 2000
    assert '"eps": 0.0' in (run_dir / "summary.json").read_text() and summary["config"]["eps"] == 0.0


def test_tau_below_the_smallest_normal_float32_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(["run", "--tau", "1e-45", "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 2 and "--tau" in err and "smallest normal" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_runs_dir_naming_a_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    status, _, err = run_cli(["run", "--steps", "100", "--runs-dir", str(a_file)], capsys)
    assert status == 2 and "is a file" in err and "File exists" not in err


def test_replay_takes_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["run", "--steps", "1500", "--quiet", "--runs-dir", str(tmp_path / "a")], capsys)[0] == 0
    (run_dir,) = (tmp_path / "a").iterdir()
    status, out, err = run_cli(["run", "--replay", str(run_dir), "--quiet", "--runs-dir", str(tmp_path / "b")], capsys)
    assert status == 0, err
    assert "identical to the original" in out


@pytest.mark.parametrize("kind", ["parquet", "gamma", "chains"])
def test_audit_run_supports_or_says_what_it_supports(kind: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    extra = {"parquet": ["--telemetry", "parquet"], "gamma": ["--gamma", "3"], "chains": ["--chains", "2"]}[kind]
    if kind == "parquet":
        pytest.importorskip("pyarrow")
    assert run_cli(["run", "--steps", "3000", "--quiet", "--runs-dir", str(tmp_path), *extra], capsys)[0] == 0
    (run_dir,) = tmp_path.iterdir()
    done = subprocess.run([sys.executable, "-m", "scripts.audit_run", str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    if kind == "parquet":
        assert done.returncode == 0, done.stderr
        assert "DIFFERS" not in done.stdout and "accept_rate" in done.stdout
    else:
        assert done.returncode == 2 and done.stderr.count("\n") == 1
        assert "m1_metrics.jsonl: no such file" not in done.stderr
        assert ("--gamma" in done.stderr) if kind == "gamma" else ("chain_" in done.stderr)


@pytest.mark.parametrize("script", ["chi2_calibration", "thrml_cost", "sweep_bpe_k"])
def test_script_options_have_help_and_defaults(script: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"scripts.{script}", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    options = [line.split()[0] for line in done.stdout.splitlines() if line.strip().startswith("--")]
    assert options
    text = " ".join(done.stdout.split("options:", 1)[1].split())
    for option in options:
        if option in ("--help", "--bare", "--corpus"):
            continue
        after = text.split(option + " ", 1)[1].split(" --", 1)[0]
        assert "default" in after, f"{script} {option} has no default in its help"


def test_numba_probe_without_numba_is_one_line() -> None:
    pytest.importorskip("numpy")
    if __import__("importlib").util.find_spec("numba") is not None:
        pytest.skip("Numba is installed here")
    done = subprocess.run([sys.executable, "-m", "benchmarks.numba_probe"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Numba is not installed" in done.stderr


@pytest.mark.parametrize(("args", "named"), [
    (["--corpus", "{corpus}", "--vocab", "100"], "--vocab"),
    (["--corpus", "{corpus}", "--c", "3"], "--c"),
])
def test_options_that_would_not_apply_are_refused(args: list[str], named: str, shakespeare: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{corpus}", str(shakespeare)) for a in args]
    status, _, err = run_cli(["run", *argv, "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 2 and err.count("\n") == 1 and named in err, err
    assert not (tmp_path / "runs").exists()


def test_sweeps_say_a_file_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert grid_main(["--Ks", "8", "--taus", "1.0", "--seeds", "7", "--jobs", "1", "--runs-dir", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "File exists" not in err and err.count("\n") == 1


def test_a_synthetic_chain_too_peaked_for_float64_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    """--c 0.001 at V = 300: leaving some tokens rounds to 0 and the stationary solve is singular (a review
    found a LinAlgError traceback here)."""
    assert main(["run", "--vocab", "300", "--c", "0.001", "--steps", "100", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--c 0.001 --vocab 300: the chain's stationary distribution cannot be computed" in err
    assert not any(tmp_path.iterdir())
