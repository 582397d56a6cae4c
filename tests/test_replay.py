"""Reproducibility: the summary records what a rerun needs, and ``--replay`` reproduces the JSONL byte for byte."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy

from thermospec import __version__
from thermospec.cli.m1 import main
from thermospec.runs.replay import ReplayError, load_replay
from thermospec.runs.storage import METRICS_FILE, SUMMARY_FILE


def _run(runs: Path, *options: str) -> Path:
    before = set(runs.iterdir()) if runs.exists() else set()
    assert main(["run", "--runs-dir", str(runs), *options]) == 0
    (new,) = set(runs.iterdir()) - before
    return new


def _summary(run_dir: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((run_dir / SUMMARY_FILE).read_text())
    return document


@pytest.fixture()
def corpus(tmp_path: Path, shakespeare: Path) -> Path:
    copy = tmp_path / "corpus.txt"
    copy.write_bytes(shakespeare.read_bytes()[:200_000])
    return copy


def test_summary_records_versions_configuration_and_corpus_hash(tmp_path: Path, corpus: Path) -> None:
    summary = _summary(_run(tmp_path / "runs", "--corpus", str(corpus), "--steps", "2000", "--K", "16"))
    assert summary["versions"]["thermospec"] == __version__
    assert summary["versions"]["python"] == platform.python_version()
    assert summary["versions"]["numpy"] == np.__version__
    assert summary["versions"]["scipy"] == scipy.__version__
    assert summary["versions"]["platform"] == platform.platform()
    assert summary["config"]["corpus"] == str(corpus) and summary["config"]["K"] == 16
    assert summary["target"]["corpus_sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert summary["interrupted"] is False


def test_replay_reproduces_the_jsonl_byte_for_byte(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    original = _run(runs, "--corpus", str(corpus), "--steps", "30000", "--K", "8", "--tau", "0.9", "--seed", "11")
    replayed = _run(runs, "--replay", str(original / SUMMARY_FILE))
    assert replayed != original
    assert (replayed / METRICS_FILE).read_bytes() == (original / METRICS_FILE).read_bytes()
    assert "replay: identical to the original, byte for byte" in capsys.readouterr().out
    a, b = _summary(original), _summary(replayed)
    assert a["config"] == b["config"] and a["metrics_sha256"] == b["metrics_sha256"]
    assert a["accept_rate"] == b["accept_rate"] and a["chi2_stat"] == b["chi2_stat"]


def test_replay_refuses_a_changed_corpus_and_writes_nothing(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    original = _run(runs, "--corpus", str(corpus), "--steps", "1000")
    with corpus.open("a", encoding="utf-8") as out:
        out.write("one more line\n")
    capsys.readouterr()
    assert main(["run", "--runs-dir", str(runs), "--replay", str(original / SUMMARY_FILE)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--replay" in err and "has changed since the run" in err and str(corpus) in err
    assert list(runs.iterdir()) == [original]


def test_replay_of_a_synthetic_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    original = _run(runs, "--vocab", "100", "--c", "5", "--eps", "1e-4", "--steps", "20000", "--seed", "2")
    replayed = _run(runs, "--replay", str(original / SUMMARY_FILE))
    assert (replayed / METRICS_FILE).read_bytes() == (original / METRICS_FILE).read_bytes()


def test_replay_of_an_interrupted_run_reproduces_the_steps_written(tmp_path: Path) -> None:
    """An interrupted run's JSONL is a prefix of the full run: the replay runs exactly those steps."""
    runs = tmp_path / "runs"
    full = _run(runs, "--vocab", "64", "--steps", "5000", "--seed", "4")
    lines = (full / METRICS_FILE).read_bytes().splitlines(keepends=True)[:1234]
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / METRICS_FILE).write_bytes(b"".join(lines))
    summary = _summary(full) | {"interrupted": True, "interrupted_by": "SIGINT", "steps": 1234,
                                "metrics_sha256": hashlib.sha256(b"".join(lines)).hexdigest()}
    (cut / SUMMARY_FILE).write_text(json.dumps(summary))
    replayed = _run(runs, "--replay", str(cut / SUMMARY_FILE))
    assert (replayed / METRICS_FILE).read_bytes() == b"".join(lines)
    assert _summary(replayed)["steps"] == 1234


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "no such file"), ("not json", "invalid JSON"), ("[1, 2]", "no \"config\""),
     ('{"config": {"K": -3}}', "not valid")],
)
def test_replay_refuses_a_bad_summary(tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "summary.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReplayError, match=words):
        load_replay(path)


def test_replay_refuses_options_that_change_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = _run(tmp_path / "runs", "--steps", "100")
    assert main(["run", "--replay", str(original / SUMMARY_FILE), "--steps", "5", "--K", "3"]) == 2
    err = capsys.readouterr().err
    assert "drop --K --steps" in err or "drop --steps --K" in err
    assert main(["run", "--replay", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_replay_compares_with_the_file_on_disk_and_says_which_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    original = _run(runs, "--vocab", "16", "--K", "4", "--steps", "500", "--quiet")
    records = original / METRICS_FILE
    pristine = records.read_bytes()
    capsys.readouterr()
    # One byte of the JSONL edited (a digit of a step index): the summary's hash still matches the replay.
    edited = bytearray(pristine)
    edited[pristine.index(b'"step":1,') + 7] = ord("7")
    records.write_bytes(bytes(edited))
    assert main(["run", "--runs-dir", str(runs), "--quiet", "--replay", str(original)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(records) in err and "changed after the run" in err
    assert "identical" not in err
    # The summary's hash edited instead: the file on disk matches, the summary does not.
    records.write_bytes(pristine)
    summary = _summary(original)
    summary["metrics_sha256"] = "0" * 64
    (original / SUMMARY_FILE).write_text(json.dumps(summary))
    assert main(["run", "--runs-dir", str(runs), "--quiet", "--replay", str(original)]) == 1
    err = capsys.readouterr().err
    assert "the summary was changed after the run" in err and "metrics_sha256" in err
    # Both as written: identical, and said to be compared with the file too.
    summary["metrics_sha256"] = hashlib.sha256(pristine).hexdigest()
    (original / SUMMARY_FILE).write_text(json.dumps(summary))
    assert main(["run", "--runs-dir", str(runs), "--quiet", "--replay", str(original)]) == 0
    assert "identical to the original, byte for byte" in capsys.readouterr().out
    # The original's file gone: compared with the summary only, and said so.
    records.unlink()
    assert main(["run", "--runs-dir", str(runs), "--quiet", "--replay", str(original)]) == 0
    assert "compared with the summary only" in capsys.readouterr().out


def test_replay_of_a_block_run_compares_its_blocks_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ``--gamma`` run's records are ``m1_blocks.jsonl``: the replay compares with that file, which is there."""
    runs = tmp_path / "runs"
    original = _run(runs, "--vocab", "32", "--K", "4", "--gamma", "3", "--drafts", "2", "--steps", "3000")
    capsys.readouterr()
    replayed = _run(runs, "--replay", str(original / SUMMARY_FILE))
    out = capsys.readouterr().out
    assert (replayed / "m1_blocks.jsonl").read_bytes() == (original / "m1_blocks.jsonl").read_bytes()
    assert "identical to the original" in out and "is gone" not in out and "on disk too" in out, out
