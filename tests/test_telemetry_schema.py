"""The one telemetry schema (`runs.schema`): its layouts, and Parquet rows equal to the JSONL records.

Single-draft steps on order-N contexts and on a trace (one chain and B chains), and
N drafts on both, are run twice, with ``--telemetry jsonl`` and ``parquet``: every
row must equal its record field for field (nulls included), the Parquet columns
typed as the schema says; a failed row-group write is one line naming the file.  About 8 s.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts.make_trace import write_trace
from thermospec.runs.config import RunConfig
from thermospec.runs.executor import check_mode_options, execute_run
from thermospec.runs.prepare import prepare_run
from thermospec.runs.schema import M1, M1_FIELDS, Field, Layout, layout
from thermospec.runs.telemetry import FIELDS

pytest.importorskip("pyarrow")


def test_the_layouts_are_the_guides_fields_then_each_axis() -> None:
    guide = ("step", "prev_token", "proposed_token", "emitted_token", "accepted", "K", "tau", "eps_used",
             "psi_bytes", "topk_mass", "overlap_mass", "ce_gap_nats")
    assert FIELDS == M1.names == guide
    assert layout("context").names == (*guide, "context")
    assert layout("position").names == (*guide, "position")
    assert layout(drafts=True).names == (*guide, "drafts_used", "accepted_index")
    assert layout("position", drafts=True).names == (*guide, "position", "drafts_used", "accepted_index")
    assert [f.axis for f in layout("context", drafts=True).fields].count("m1") == 12


def test_key_fields_must_be_consecutive() -> None:
    with pytest.raises(ValueError, match="consecutive"):
        Layout((*M1_FIELDS[:6], Field("x", "int", "step", "drafts"), *M1_FIELDS[6:]))


def test_json_text_of_each_kind() -> None:
    texts = {kind: Field("f", kind, "step", "m1").json_column(values) for kind, values in (  # type: ignore[arg-type]
        ("int", np.array([0, 7])), ("optional_int", np.array([-1, 3])), ("bool", np.array([True, False])),
        ("float", np.array([0.1, math.inf]))
    )}
    assert [[str(v) for v in column] for column in texts.values()] == [
        ["0", "7"], ["null", "3"], ["true", "false"], ["0.1", "null"]]
    assert Field("f", "text", "key", "context").json('a"b') == '"a\\"b"'


Chains = list[list[dict[str, Any]]]


def rows_and_records(folder: Path, config: RunConfig, chains: int) -> tuple[Chains, Chains, Any]:
    """Each chain's Parquet rows and JSONL records of one configuration run with both sinks, and the schema."""
    import pyarrow.parquet as pq

    run = prepare_run(config)
    found: dict[str, Chains] = {}
    for sink in ("jsonl", "parquet"):
        (folder / sink).mkdir(parents=True)
        check_mode_options(run.config, sink, chains)
        execute_run(prepare_run(config), folder / sink, telemetry=sink, chains=chains)
    table = pq.read_table(folder / "parquet" / "m1_metrics.parquet")
    rows = table.to_pylist()
    if chains == 1:
        found["parquet"] = [rows]
        found["jsonl"] = [[json.loads(x) for x in (folder / "jsonl" / "m1_metrics.jsonl").read_text().splitlines()]]
    else:
        assert table.column_names[0] == "chain"
        found["parquet"] = [[{k: v for k, v in r.items() if k != "chain"} for r in rows if r["chain"] == b]
                            for b in range(chains)]
        found["jsonl"] = [[json.loads(x) for x in (folder / "jsonl" / f"chain_{b:04d}" / "m1_metrics.jsonl")
                           .read_text().splitlines()] for b in range(chains)]
    return found["parquet"], found["jsonl"], table.schema


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trace(tmp_path_factory.mktemp("schema") / "z.npz", 9, 60, 1.0, 3, tokens=True, progress=False)


@pytest.mark.parametrize("chains", [1, 3])
@pytest.mark.parametrize(("source", "key", "arrow_type"), [("order", "context", "string"),
                                                           ("trace", "position", "int64")])
def test_single_draft_parquet_rows_equal_the_jsonl_records(source: str, key: str, arrow_type: str, chains: int,
                                                           shakespeare: Path, trace_file: Path,
                                                           tmp_path: Path) -> None:
    options: dict[str, Any] = ({"corpus": str(shakespeare), "order": 4} if source == "order"
                               else {"trace": str(trace_file)})
    config = RunConfig(K=6, tau=1.1, steps=1500, seed=5, **options)
    rows, records, schema = rows_and_records(tmp_path, config, chains)
    assert rows == records and all(len(chain) == 1500 for chain in rows)
    assert tuple(records[0][0]) == (*FIELDS, key)
    assert str(schema.field(key).type) == arrow_type
    if source == "trace":  # the null prev_token of position 0 is a null in Parquet too
        assert records[0][0]["prev_token"] is None and rows[0][0]["prev_token"] is None


@pytest.mark.parametrize("source", ["order", "trace"])
def test_drafts_parquet_rows_equal_the_jsonl_records(source: str, shakespeare: Path, trace_file: Path,
                                                     tmp_path: Path) -> None:
    options: dict[str, Any] = ({"corpus": str(shakespeare), "order": 3} if source == "order"
                               else {"trace": str(trace_file)})
    config = RunConfig(K=6, steps=800, seed=2, drafts=2, verifier="recursive", **options)
    rows, records, _ = rows_and_records(tmp_path, config, 2)
    assert rows == records
    assert any(r["accepted_index"] is None for r in records[0]) and any(r["accepted_index"] for r in records[1])


@pytest.mark.parametrize("source", ["order", "trace"])
def test_a_failed_parquet_write_is_one_line_naming_the_file(source: str, shakespeare: Path, trace_file: Path,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    from tests.conftest import run_cli

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    options = (["--corpus", str(shakespeare), "--order", "3"] if source == "order" else ["--trace", str(trace_file)])
    status, _, err = run_cli(["run", *options, "--K", "4", "--steps", "300", "--telemetry", "parquet", "--quiet",
                              "--runs-dir", str(tmp_path)], capsys)
    (run_dir,) = tmp_path.iterdir()
    assert status == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{run_dir / 'm1_metrics.parquet'}: cannot write (No space left on device)" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["steps"] == 0
