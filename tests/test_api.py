"""The notebook API: docs/api.md's session runs as written, and the API writes what the CLI writes."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import thermospec
import thermospec.api
from tests.conftest import REPO
from thermospec.cli.m1 import main

DOC = REPO / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_docs_api_session_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyarrow")
    blocks = python_blocks(DOC.read_text())
    assert blocks, "docs/api.md has no python block"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {"__name__": "docs_api"})
    assert len(list((tmp_path / "runs").iterdir())) == 6  # 4 runs, 2 sweeps: the bad-input call wrote nothing


def test_api_run_writes_the_cli_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = thermospec.run(vocab=32, K=4, steps=3000, seed=11, runs_dir=tmp_path / "api")
    assert main(["run", "--vocab", "32", "--K", "4", "--steps", "3000", "--seed", "11", "--quiet",
                 "--runs-dir", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    (cli_dir,) = (tmp_path / "cli").iterdir()
    api_bytes = (result.run_dir / "m1_metrics.jsonl").read_bytes()
    assert api_bytes == (cli_dir / "m1_metrics.jsonl").read_bytes()
    assert result.summary.metrics_sha256 == hashlib.sha256(api_bytes).hexdigest()
    assert thermospec.Summary.read(cli_dir).accept_rate == result.summary.accept_rate


def test_api_refuses_bad_input_before_writing(tmp_path: Path) -> None:
    with pytest.raises(thermospec.api.ConfigError, match="--chains"):
        thermospec.run(vocab=32, chains=0, runs_dir=tmp_path)  # (γ-blocks with chains compose since 3798a24)
    with pytest.raises(thermospec.api.ConfigError, match="--telemetry"):
        thermospec.run(vocab=32, telemetry="csv", runs_dir=tmp_path)
    assert not os.listdir(tmp_path)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        thermospec.no_such_name  # noqa: B018


def test_sweep_result_is_exported() -> None:
    assert "SweepResult" in thermospec.__all__
    assert thermospec.SweepResult is thermospec.api.SweepResult


@pytest.mark.parametrize(("kind", "options", "message"), [
    ("grid", {"trace": "tiny.npz"}, "--trace: a grid sweep would record it without applying it"),
    ("grid", {"corpus": "{corpus}", "order": 5}, "--order: a grid sweep would record it without applying it"),
    ("grid", {"drafts": 2, "verifier": "optimal"}, "--drafts: a grid sweep would record it without applying it"),
    ("grid", {"tsu": "thrml"}, "--tsu: a grid sweep would record it without applying it"),
    ("seeds", {"gamma": 2}, "--gamma: a seed sweep would record it without applying it"),
    ("seeds", {"seed": 3}, "seed: a seed sweep takes seeds=(...), not seed"),
    ("grid", {"K": 8}, "K: a grid takes Ks=(...), not K"),
    ("seeds", {"seeds": 7}, "--seeds: must be a sequence of values, got 7 (int)"),
    ("grid", {"Ks": (8,), "taus": ("1.0",)}, "--taus: every tau must be a number, got '1.0' (str)"),
    ("grid", {"seeds": (1, -1)}, "--seeds: every seed must be an integer in [0, "),
    ("seeds", {"K": "8"}, "--K: must be an integer, got '8' (str)"),
    ("seeds", {"bogus": 1}, "bogus: not an option of a seed sweep"),
    ("seeds", {"Ks": (4, 8)}, "Ks: a grid sweep's axis; a seed sweep runs one configuration"),
    ("seeds", {"taus": (0.5,)}, "taus: a grid sweep's axis"),
    ("seeds", {"context": "a"}, "context: a grid sweep's axis"),
])
def test_sweeps_refuse_what_they_would_not_apply_before_writing(
    tmp_path: Path, kind: str, options: dict[str, object], message: str
) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcab cab bca\n" * 20, encoding="utf-8")
    options = {k: str(corpus) if v == "{corpus}" else v for k, v in options.items()}
    with pytest.raises(thermospec.api.ConfigError) as error:
        thermospec.sweep(kind, steps=100, jobs=1, runs_dir=tmp_path / "runs", **options)
    assert str(error.value).startswith(message)
    assert not (tmp_path / "runs").exists()


def test_seed_sweeps_apply_the_full_run_options(tmp_path: Path) -> None:
    result = thermospec.sweep("seeds", vocab=16, K=4, drafts=2, verifier="optimal", seeds=(1,), steps=300, jobs=1,
                              runs_dir=tmp_path)
    summary = thermospec.Summary.read(result.folder / "seed_1")
    assert summary.record["drafts"] == 2 and summary.record["verifier"] == "optimal"


def test_wrong_types_through_the_api_are_config_errors(tmp_path: Path) -> None:
    for options in ({"K": 8.0}, {"tau": "1.0"}, {"bogus": 1}):
        with pytest.raises(thermospec.api.ConfigError):
            thermospec.run(runs_dir=tmp_path, **options)
    with pytest.raises(thermospec.api.ConfigError):
        thermospec.check(drafts="2")
    assert not os.listdir(tmp_path)


def test_docs_session_runs_without_pyarrow_and_telemetry_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment `make run` builds has no pyarrow: docs/api.md's first session must run there.
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")] + ["pyarrow"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.chdir(tmp_path)
    first = python_blocks(DOC.read_text())[0]
    exec(compile(first, str(DOC), "exec"), {"__name__": "docs_api"})
    result = thermospec.run(vocab=16, K=4, steps=100, runs_dir=tmp_path / "more")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'thermospec\[parquet\]'"):
        result.telemetry()


@pytest.mark.parametrize(("call", "message"), [
    (lambda d: thermospec.check(vocab=16, check_steps="5"), "check_steps: must be an integer >= 1, got '5'"),
    (lambda d: thermospec.check(vocab=16, pooled_steps=None), "pooled_steps: must be an integer >= 1, got None"),
    (lambda d: thermospec.check(vocab=16, fault=3), "fault: must be text such as 'bias:0.2' or a Fault, got 3"),
    (lambda d: thermospec.check(vocab=16, fault="bogus:1"), "fault: "),
    (lambda d: thermospec.run(vocab=16, runs_dir=5), "runs_dir: must be a folder (text or a path), got 5"),
    (lambda d: thermospec.sweep("grid", vocab=16, jobs="1", runs_dir=d), "jobs: must be an integer >= 1, got '1'"),
    (lambda d: thermospec.sweep("grid", vocab=16, context=3, runs_dir=d), "context: must be text, got 3"),
])
def test_the_apis_own_options_are_type_checked(tmp_path: Path, call: Any, message: str) -> None:
    with pytest.raises(thermospec.api.ConfigError) as error:
        call(tmp_path / "runs")
    assert str(error.value).startswith(message)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("call", "own"), [
    (lambda **kw: thermospec.run(**kw), ("runs_dir", "telemetry", "chains", "replay", "progress", "notify")),
    (lambda **kw: thermospec.check(**kw), ("check_steps", "pooled_steps", "fault", "notify", "announce")),
    (lambda **kw: thermospec.sweep("grid", **kw), ("runs_dir", "jobs", "scheduler", "seeds", "Ks", "taus", "context")),
])
def test_an_unknown_keyword_is_refused_naming_the_calls_own_keywords_too(call: Any, own: tuple[str, ...]) -> None:
    with pytest.raises(thermospec.api.ConfigError) as error:
        call(vocab=16, bogus=1)
    listed = str(error.value).split("(options: ")[1].rstrip(")").split(", ")
    assert set(own) <= set(listed) and "vocab" in listed
    assert len(listed) == len(set(listed))
