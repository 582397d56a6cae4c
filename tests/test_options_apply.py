"""Issue 18: options are checked in one place, refused where they would not apply, and recorded only where they do."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from thermospec.runs.config import MAX_STEPS, ConfigError, RunConfig


def only_summary(runs: Path) -> dict[str, object]:
    (run_dir,) = runs.iterdir()
    summary: dict[str, object] = json.loads((run_dir / "summary.json").read_text())
    return summary


def test_steps_above_the_bound_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(["run", "--steps", "1e20", "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 2 and not out
    assert err.strip().splitlines() == [
        f"run_m1 run: error: --steps: must be an integer in [1, {MAX_STEPS:,}], got 100000000000000000000"]
    assert not (tmp_path / "runs").exists()
    assert RunConfig(steps=MAX_STEPS).steps == MAX_STEPS  # the bound itself is allowed


def test_trace_with_order_names_the_conflict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.npy"
    np.save(trace, np.zeros((4, 8), dtype=np.float32))
    status, _, err = run_cli(["run", "--trace", str(trace), "--order", "3", "--runs-dir", str(tmp_path)], capsys)
    assert status == 2
    assert err.strip() == ("run_m1 run: error: --trace: the trace is the target and has no character contexts; "
                           "drop --order")


def test_corpus_and_trace_runs_record_no_synthetic_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcab cab bca\n" * 20, encoding="utf-8")
    trace = tmp_path / "t.npy"
    np.save(trace, np.random.default_rng(1).standard_normal((6, 16)).astype(np.float32))
    for name, target in (("corpus", ["--corpus", str(corpus)]), ("trace", ["--trace", str(trace)]),
                         ("synthetic", ["--vocab", "16"])):
        runs = tmp_path / name
        args = ["run", *target, "--K", "4", "--steps", "300", "--quiet", "--runs-dir", str(runs)]
        status, _, _ = run_cli(args, capsys)
        assert status == 0
        config = only_summary(runs)["config"]
        assert isinstance(config, dict)
        recorded = {"vocab", "c"} & config.keys()
        assert recorded == ({"vocab", "c"} if name == "synthetic" else set()), name
    assert RunConfig(corpus="x.txt").as_dict().keys() == RunConfig().as_dict().keys() - {"vocab", "c"}


@pytest.mark.parametrize(("options", "message"), [
    ({"K": "8"}, "--K: must be an integer, got '8' (str)"),
    ({"K": 8.0}, "--K: must be an integer, got 8.0 (float)"),
    ({"drafts": "2"}, "--drafts: must be an integer, got '2' (str)"),
    ({"steps": None}, "--steps: must be an integer, got None (NoneType)"),
    ({"eps": "big"}, "--eps: must be 'auto' or a number, got 'big' (str)"),
    ({"tau": "1.0"}, "--tau: must be a number, got '1.0' (str)"),
    ({"order": "5"}, "--order: must be an integer, got '5' (str)"),
    ({"seed": True}, "--seed: must be an integer, got True (bool)"),
    ({"corpus": 5}, "--corpus: must be text, got 5 (int)"),
    ({"verifier": None}, "--verifier: must be text, got None (NoneType)"),
    ({"tau": 10**400}, "--tau: must be a finite number, got " + str(10**400)),
])
def test_wrong_types_are_one_line_config_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        RunConfig(**options)  # type: ignore[arg-type]
    assert str(error.value) == message


def test_numbers_of_any_type_are_stored_as_the_command_line_stores_them() -> None:
    config = RunConfig(K=np.int64(8), tau=1, c=np.float32(2.5), eps=0, steps=np.int32(10))  # type: ignore[arg-type]
    values = config.as_dict()
    assert [type(values[k]) for k in ("K", "tau", "c", "eps", "steps")] == [int, float, float, float, int]
    assert json.dumps(values)  # JSON-ready: no NumPy scalar left


def test_the_headline_says_the_run_time_and_the_time_with_the_checklist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "--vocab", "32", "--K", "4", "--drafts", "2", "--steps", "500", "--quiet",
            "--runs-dir", str(tmp_path)]
    status, out, _ = run_cli(args, capsys)
    assert status == 0
    summary = only_summary(tmp_path)
    line = next(line for line in out.splitlines() if line.startswith("run "))
    elapsed, wall = (float(t) for t in re.findall(r"(\d+\.\d\d) s", line))
    assert elapsed == round(float(summary["elapsed_s"]), 2)  # type: ignore[arg-type]
    assert wall >= elapsed and "with the summary and its checklist" in line


def test_a_run_whose_records_cannot_fit_is_refused_with_the_projected_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import thermospec
    from thermospec.api import check_room

    runs = tmp_path / "runs"
    status, out, err = run_cli(["run", "--steps", str(MAX_STEPS), "--runs-dir", str(runs)], capsys)
    assert status == 2 and not out and err.count("\n") == 1
    assert "its JSONL records would take at least 200,000.0 GB" in err and "GB free" in err
    assert "--telemetry none" in err
    with pytest.raises(ConfigError, match="GB free"):
        thermospec.run(steps=MAX_STEPS, runs_dir=runs)
    assert not runs.exists()
    check_room(RunConfig(steps=MAX_STEPS), "none", 1, runs)  # no records, nothing to project
    check_room(RunConfig(steps=1000), "jsonl", 4, runs)  # 800 kB fits


def test_a_gamma_sweep_refuses_options_it_would_not_apply(tmp_path: Path) -> None:
    from thermospec.experiments.sweep_runs import gamma_grid_sweep

    for base, option in ((RunConfig(vocab=16, drafts=2), "--drafts"), (RunConfig(vocab=16, gamma=2), "--gamma")):
        with pytest.raises(ConfigError, match=f"^{option}: a γ sweep would record it without applying it"):
            gamma_grid_sweep(base, (1, 2), (4,), (1.0,), (7,), 100, (0.0,), runs_dir=tmp_path / "runs", jobs=1)
    assert not (tmp_path / "runs").exists()
