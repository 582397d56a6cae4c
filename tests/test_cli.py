"""End-to-end tests of ``python -m scripts.run_m1``: the guide's commands and every bad-input path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from thermospec.runs.telemetry import FIELDS


def only_run_dir(runs: Path) -> Path:
    (run_dir,) = list(runs.iterdir())
    return run_dir


def test_guide_synthetic_command_writes_jsonl_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    status, out, err = run_cli(
        ["run", "--vocab", "256", "--K", "64", "--eps", "auto", "--steps", "3000", "--seed", "7",
         "--runs-dir", str(runs)],
        capsys,
    )
    assert status == 0, err
    run_dir = only_run_dir(runs)
    lines = (run_dir / "m1_metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3000
    first = json.loads(lines[0])
    assert tuple(first) == FIELDS
    assert [json.loads(line)["step"] for line in lines[:3]] == [0, 1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("accept_rate", "mean_overlap", "mean_ce_gap", "chi2_stat", "chi2_dof", "p_value",
                "psi_bytes_max", "elapsed_s", "tokens_per_s", "config", "target", "checklist"):
        assert key in summary
    assert summary["config"] == {"corpus": None, "vocab": 256, "c": 50.0, "K": 64, "tau": 1.0, "eps": "auto",
                                 "steps": 3000, "seed": 7, "K_used": 64}
    assert summary["target"]["source"] == "synthetic"
    assert summary["psi_bytes_max"] == 28 + 3 * 64
    assert summary["checklist"]["accept_overlap_within_0.03"] is True
    # The CLI prints a headline: the statistics with what they test, the checklist with its numbers.
    lines = out.splitlines()
    assert len(lines) <= 30, out
    assert f"accept rate    {summary['accept_rate']:.5f}   overlap {summary['mean_overlap']:.5f}" in out
    assert "χ² vs N·π      p = " in out and "transition χ²" in out
    assert sum(line.lstrip().startswith("PASS") for line in lines) == 4
    assert "PASS  ψ ≤ 1024 bytes" in out and "220 bytes" in out
    assert f"wrote {run_dir / 'm1_metrics.jsonl'} and {run_dir / 'summary.json'}" in out
    assert "versions.platform" not in out and "config.vocab" not in out


def test_full_prints_every_summary_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["run", "--steps", "2000", "--full", "--runs-dir", str(tmp_path)], capsys)
    assert status == 0
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    for key, value in summary.items():
        if isinstance(value, dict):
            assert all(f"{key}.{k}" in out for k in value)
        else:
            assert key in out


def test_guide_corpus_command_with_clamped_K(shakespeare: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    status, _, err = run_cli(
        ["run", "--corpus", str(shakespeare), "--K", "128", "--eps", "auto", "--steps", "2000", "--seed", "7",
         "--runs-dir", str(runs)],
        capsys,
    )
    assert status == 0, err
    assert "notice: --K 128 is above the vocabulary size V = 65; using K = 65" in err
    summary = json.loads((only_run_dir(runs) / "summary.json").read_text())
    assert summary["config"]["K"] == 128
    assert summary["config"]["K_used"] == 65
    assert summary["target"]["V"] == 65
    assert len(summary["target"]["corpus_sha256"]) == 64


def test_same_seed_gives_byte_identical_jsonl_in_distinct_folders(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    args = ["run", "--steps", "1500", "--seed", "11", "--K", "16", "--runs-dir", str(runs)]
    assert run_cli(args, capsys)[0] == 0
    assert run_cli(args, capsys)[0] == 0
    folders = sorted(runs.iterdir())
    assert len(folders) == 2  # two runs within the same second never share a folder
    a, b = (f / "m1_metrics.jsonl" for f in folders)
    assert a.read_bytes() == b.read_bytes()
    assert run_cli([*args[:-4], "--seed", "12", "--runs-dir", str(runs)], capsys)[0] == 0
    c = next(f for f in runs.iterdir() if f not in folders) / "m1_metrics.jsonl"
    assert c.read_bytes() != a.read_bytes()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--K", "0"], "--K"),
        (["--K", "x"], "--K"),
        (["--steps", "0"], "--steps"),
        (["--tau", "0"], "--tau"),
        (["--tau", "nan"], "--tau"),
        (["--tau", "-1"], "--tau"),
        (["--tau", "inf"], "--tau"),
        (["--eps", "-0.1"], "--eps"),
        (["--eps", "often"], "--eps"),
        (["--eps", "0.5"], "--eps"),  # (V - K) * eps >= 1
        (["--vocab", "1"], "--vocab"),
        (["--c", "0"], "--c"),
        (["--c", "-2"], "--c"),
        (["--seed", "-1"], "--seed"),
        (["--eps", "1e-50"], "--eps"),  # rounds to 0 in float32: a different experiment, refused
        (["--tau", "1e-50"], "--tau"),
        (["--vocab", "100000000"], "--vocab"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_options_one_line_exit_2_nothing_written(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    status, _, err = run_cli(["run", *args, "--runs-dir", str(runs)], capsys)
    assert status == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not runs.exists()


def _corpus_cases(tmp_path: Path) -> list[tuple[Path, str]]:
    missing = tmp_path / "missing.txt"
    folder = tmp_path / "folder"
    folder.mkdir()
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    single = tmp_path / "single.txt"
    single.write_text("aaaa", encoding="utf-8")
    cases = [(missing, "no such file"), (folder, "is a folder"), (latin1, "not UTF-8"), (empty, "is empty"),
             (single, "at least 2")]
    if Path("/dev/zero").exists():
        cases.append((Path("/dev/zero"), "not a regular file"))  # would be read forever
    return cases


def test_bad_corpus_one_line_exit_2_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    for path, reason in _corpus_cases(tmp_path):
        for command in ("run", "check"):
            extra = ["--runs-dir", str(runs)] if command == "run" else []
            status, _, err = run_cli([command, "--corpus", str(path), *extra], capsys)
            assert status == 2, (path, err)
            assert str(path) in err and reason in err, err
            assert len(err.strip().splitlines()) == 1
            assert not runs.exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("ab ba", encoding="utf-8")
    path.chmod(0)
    status, _, err = run_cli(["run", "--corpus", str(path), "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 2 and "cannot be read" in err


def test_unwritable_runs_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    status, _, err = run_cli(["run", "--steps", "10", "--runs-dir", str(blocker / "runs")], capsys)
    assert status == 2
    assert "--runs-dir" in err and len(err.strip().splitlines()) == 1


def test_check_passes_on_defaults_and_reports_each_item(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["check", "--steps", "20000", "--check-steps", "5000"], capsys)
    assert status == 0, out
    assert out.count("PASS") >= 3
    assert "fixed-context" in out and "accept - overlap" in out and "1024" in out


@pytest.mark.parametrize(
    "args",
    [["--tau", "0.3"], ["--tau", "3"], ["--eps", "0"], ["--K", "1"], ["--K", "128"]],
)
def test_check_passes_on_hard_settings_synthetic(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["check", *args, "--steps", "20000", "--check-steps", "5000"], capsys)
    assert status == 0, out


@pytest.mark.parametrize(
    "args",
    [["--tau", "0.3"], ["--tau", "3"], ["--eps", "0"], ["--K", "1"], ["--K", "128"]],
)
def test_check_passes_on_hard_settings_corpus(args: list[str], shakespeare: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["check", "--corpus", str(shakespeare), *args, "--steps", "20000",
                              "--check-steps", "5000"], capsys)
    assert status == 0, out


def test_help_has_examples_and_every_guide_option(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["run", "--help"], capsys)
    assert status == 0
    for option in ("--corpus", "--vocab", "--c", "--K", "--tau", "--eps", "--steps", "--seed", "--runs-dir",
                   "examples:"):
        assert option in out


def test_module_entry_point_runs_as_the_guide_types_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "scripts.run_m1", "run", "--steps", "500", "--runs-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "accept rate" in done.stdout and "checklist" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "scripts.run_m1", "run", "--tau", "0", "--runs-dir", str(tmp_path / "bad")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "--tau" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_empty_runs_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli(["run", "--steps", "10", "--runs-dir", ""], capsys)
    assert status == 2 and "--runs-dir" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("K", ["64", "1"])
def test_summary_checklist_agrees_with_check(K: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["run", "--K", K, "--steps", "2000", "--runs-dir", str(tmp_path)], capsys)[0] == 0
    checklist = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())["checklist"]
    assert set(checklist) == {"fixed_context_chi2_3_of_4", "accept_overlap_within_0.03", "psi_bytes_le_1024",
                              "psi_bytes_le_1024_every_K_le_128"}
    _, out, _ = run_cli(["check", "--K", K, "--steps", "2000"], capsys)
    fixed_line = next(line for line in out.splitlines() if "fixed-context" in line)
    assert checklist["fixed_context_chi2_3_of_4"] == fixed_line.startswith("PASS")


def test_a_run_too_short_for_its_chi2_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every N·pi below 5: the run χ² has one bin (p = 1 by SPEC §6); the user is told it tested nothing."""
    code, _, err = run_cli(["run", "--vocab", "2000", "--steps", "200", "--telemetry", "none",
                            "--runs-dir", str(tmp_path)], capsys)
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert code == 0 and summary["chi2_dof"] == 0 and summary["p_value"] == 1.0
    assert "tests nothing" in err
    code, _, err = run_cli(["run", "--steps", "20000", "--runs-dir", str(tmp_path)], capsys)
    assert code == 0 and "tests nothing" not in err
