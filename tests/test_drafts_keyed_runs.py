"""``run --drafts N`` on order-N contexts and a trace, through the executor: the records carry the key as the
single-draft records do, Parquet holds the JSONL's fields, chain 0 of B is the single-chain run byte for byte;
and ``--tsu thrml --chains B`` (no ``--gamma``) runs every chain on its own TSUs, chain 0 the single-chain run.

About 20 s (THRML's cases skip without the extra).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, cast

import pytest

from scripts.make_trace import write_trace
from thermospec.engine.drafts import plan_source
from thermospec.runs.config import RunConfig
from thermospec.runs.executor import check_mode_options, execute_run, run_mode
from thermospec.runs.keyed_drafts_run import KeyedDraftsMode
from thermospec.runs.prepare import PreparedRun, prepare_run
from thermospec.runs.telemetry import FIELDS, parquet_available
from thermospec.targets.order import OrderTarget
from thermospec.tsu.thrml import thrml_available


def config(**options: Any) -> RunConfig:
    """A configuration with `options`, made with ``--gamma`` (the options check refuses --drafts on order-N and
    traces without it until that refusal goes) and then without it."""
    made = RunConfig(gamma=2, **options)
    object.__setattr__(made, "gamma", None)
    return made


@pytest.fixture(scope="module")
def order_run(shakespeare: Path) -> PreparedRun:
    return prepare_run(config(corpus=str(shakespeare), order=4, K=4, tau=1.2, drafts=2, steps=3000, seed=3))


@pytest.fixture(scope="module")
def trace_run(tmp_path_factory: pytest.TempPathFactory) -> PreparedRun:
    path = write_trace(tmp_path_factory.mktemp("keyed_runs") / "z.npz", 7, 400, 1.0, 2, tokens=True, progress=False)
    return prepare_run(config(trace=str(path), K=8, drafts=3, verifier="optimal", steps=2000, seed=3))


def run_in(folder: Path, run: PreparedRun, telemetry: str = "jsonl", chains: int = 1) -> dict[str, Any]:
    folder.mkdir(parents=True)
    check_mode_options(run.config, telemetry, chains)
    return execute_run(run, folder, telemetry=telemetry, chains=chains)  # type: ignore[arg-type]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("name", "key"), [("order_run", "context"), ("trace_run", "position")])
def test_records_carry_the_key_and_the_drafts_fields(name: str, key: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    run: PreparedRun = request.getfixturevalue(name)
    assert isinstance(run_mode(run, tmp_path, "none"), KeyedDraftsMode)
    summary = run_in(tmp_path / "j", run)
    lines = records(tmp_path / "j" / "m1_metrics.jsonl")
    assert len(lines) == run.config.steps == summary["steps"]
    assert list(lines[0]) == [*FIELDS, key, "drafts_used", "accepted_index"]
    plans = plan_source(run.target.row, run.proposer.draft, run.config.verifier, run.config.drafts)
    for line in lines[:50]:
        order = cast(OrderTarget, run.target)
        k = line[key] if key == "position" else order.context_id([order.vocabulary.index(c) for c in line["context"]])
        assert line["overlap_mass"] == plans(k).acceptance  # the verifier's exact acceptance at the key
        assert line["accepted"] == (line["accepted_index"] is not None)
    if key == "position":
        tokens = run.target.tokens  # type: ignore[attr-defined]
        assert [line["prev_token"] for line in lines[:3]] == [None, int(tokens[0]), int(tokens[1])]
    else:
        assert all(b["prev_token"] == a["emitted_token"] for a, b in itertools.pairwise(lines))
    for field in ("drafts", "verifier", "mean_drafts_used", "acceptance_optimum", "gain_fraction"):
        assert field in summary
    assert summary["accept_overlap_gap"] < 0.03 and all(summary["checklist"].values())
    quiet = run_in(tmp_path / "n", run, "none")
    for field in ("accept_rate", "mean_overlap", "acceptance_optimum", "steps"):
        assert quiet[field] == summary[field]


@pytest.mark.parametrize("name", ["order_run", "trace_run"])
def test_chain_0_is_the_single_run_byte_for_byte(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    run: PreparedRun = request.getfixturevalue(name)
    run_in(tmp_path / "one", run)
    summary = run_in(tmp_path / "three", run, chains=3)
    single = (tmp_path / "one" / "m1_metrics.jsonl").read_bytes()
    assert (tmp_path / "three" / "chain_0000" / "m1_metrics.jsonl").read_bytes() == single
    assert (tmp_path / "three" / "chain_0002" / "m1_metrics.jsonl").read_bytes() != single
    assert summary["chains"] == 3 and summary["steps"] == 3 * run.config.steps
    assert json.loads((tmp_path / "three" / "chain_0001" / "summary.json").read_text())["chain"] == 1


@pytest.mark.skipif(not parquet_available(), reason="the optional 'parquet' extra (pyarrow) is not installed")
@pytest.mark.parametrize("chains", [1, 2])
@pytest.mark.parametrize("name", ["order_run", "trace_run"])
def test_parquet_columns_are_the_jsonl_fields(name: str, chains: int, tmp_path: Path,
                                              request: pytest.FixtureRequest) -> None:
    import pyarrow.parquet as pq

    run: PreparedRun = request.getfixturevalue(name)
    run_in(tmp_path / "j", run, chains=chains)
    run_in(tmp_path / "p", run, "parquet", chains)
    rows = pq.read_table(tmp_path / "p" / "m1_metrics.parquet").to_pylist()
    for b in range(chains):
        folder = tmp_path / "j" if chains == 1 else tmp_path / "j" / f"chain_{b:04d}"
        mine = [r for r in rows if r.get("chain", 0) == b]
        if chains > 1:
            assert all(r.pop("chain") == b for r in mine)
        assert mine == records(folder / "m1_metrics.jsonl")


needs_thrml = pytest.mark.skipif(not thrml_available(), reason="the optional 'thrml' extra is not installed")


@needs_thrml
@pytest.mark.parametrize("kind", ["m1", "drafts", "order", "order_drafts", "trace", "trace_drafts"])
def test_thrml_chains_each_draw_their_own(kind: str, tmp_path: Path, shakespeare: Path) -> None:
    options: dict[str, Any] = {"tsu": "thrml", "steps": 30, "seed": 5, "K": 3}
    if kind.startswith("order"):
        options |= {"corpus": str(shakespeare), "order": 3}
    elif kind.startswith("trace"):
        options |= {"trace": str(write_trace(tmp_path / "t.npy", 4, 40, 1.0, 1, progress=False))}
    else:
        options |= {"vocab": 10}
    if kind.endswith("drafts"):
        options |= {"drafts": 2}
    run = prepare_run(config(**options))
    run_in(tmp_path / "one", run)
    summary = run_in(tmp_path / "two", prepare_run(config(**options)), chains=2)
    first, second = ((tmp_path / "two" / f"chain_{b:04d}" / "m1_metrics.jsonl").read_bytes() for b in (0, 1))
    assert first == (tmp_path / "one" / "m1_metrics.jsonl").read_bytes()
    assert first != second
    assert summary["tsu_backend"]["name"] == "thrml" and summary["steps"] in (60, 30)
