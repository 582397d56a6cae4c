"""Block and tree records built from the one schema (`runs.schema.block_layout`), and M1's compiled format.

* The block JSONL formatter gives the bytes of the hand-written one it replaced (kept here as the
  reference), for γ-blocks and token trees, on integer and text keys; its Parquet rows are its records
  with the declared column types; a new block field is one `Field` and its values.
* `Layout.compiled_format`'s texts, put around M1's step values as the compiled ``jsonl`` puts them,
  give `jsonl_lines`' bytes.  About 3 s.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thermospec.core.streams import Stream, random_stream
from thermospec.engine.blocks import run_blocks
from thermospec.engine.chain import run_chain
from thermospec.engine.chunks import BlockChunk, ChainChunk
from thermospec.engine.kernels import compiled_module
from thermospec.engine.keys import BigramSource
from thermospec.engine.trees import TreeChunk, run_trees
from thermospec.runs.block_run import block_lines, block_values, key_kind
from thermospec.runs.config import RunConfig
from thermospec.runs.parquet_file import RecordParquet
from thermospec.runs.prepare import PreparedRun, context_source, prepare_run
from thermospec.runs.schema import (
    BLOCK_FIELDS,
    M1,
    M1_FIELDS,
    CompiledFormat,
    Field,
    Layout,
    block_layout,
    layout,
)
from thermospec.runs.telemetry import JsonlWriter, context_fields, jsonl_lines
from thermospec.tsu.drafts import DraftSource


def reference_block_lines(chunk: BlockChunk, key_json: Callable[[int], str] = str) -> str:
    """The block records as `runs.block_run` wrote them by hand before the schema built them."""
    lines = []
    for i in range(len(chunk)):
        n, ys = int(chunk.accepted_length[i]), chunk.drafted[i].tolist()
        emitted = [*ys[:n], int(chunk.final[i])]
        line = (f'{{"block":{chunk.start + i},"first_step":{int(chunk.first_step[i])},'
                f'"context":{key_json(int(chunk.context[i]))},"drafted":{json.dumps(ys, separators=(",", ":"))},'
                f'"accepted_length":{n},"emitted":{json.dumps(emitted, separators=(",", ":"))}}}\n')
        if isinstance(chunk, TreeChunk):
            children = json.dumps(chunk.children[i, :min(n + 1, chunk.gamma)].tolist(), separators=(",", ":"))
            index = json.dumps(chunk.accepted_index[i, :n].tolist(), separators=(",", ":"))
            line = f'{line[:-2]},"children":{children},"accepted_index":{index}}}\n'
        lines.append(line)
    return "".join(lines)


@pytest.fixture(scope="module")
def small_run() -> PreparedRun:
    return prepare_run(RunConfig(vocab=12, c=0.7, K=3, seed=4))


@pytest.fixture(scope="module")
def order_run(shakespeare: Path) -> PreparedRun:
    return prepare_run(RunConfig(corpus=str(shakespeare), order=4, K=3, seed=3))


def chunks_of(run: PreparedRun, gamma: int, drafts: int, steps: int = 1500) -> list[BlockChunk]:
    source, rng = context_source(run), random_stream(run.config.seed, Stream.CHAIN)
    if drafts > 1:
        return list(run_trees(source, run.proposer.draft, "recursive", drafts, gamma, steps, rng, chunk=200))
    return list(run_blocks(source, run.proposer.draft, gamma, steps, rng, chunk=200))


def test_the_block_layouts() -> None:
    block = ("block", "first_step", "context", "drafted", "accepted_length", "emitted")
    assert block_layout().names == block and block_layout("text").field["context"].kind == "text"
    assert block_layout(tree=True).names == (*block, "children", "accepted_index")
    assert all(f.level == "block" for f in block_layout(tree=True).fields)
    with pytest.raises(ValueError, match="block fields only"):
        Layout((*BLOCK_FIELDS, M1_FIELDS[1]))


@pytest.mark.parametrize(("which", "gamma", "drafts"), [("small", 3, 1), ("small", 2, 3), ("order", 3, 1),
                                                         ("order", 2, 2)])
def test_block_lines_are_the_hand_written_bytes(which: str, gamma: int, drafts: int,
                                                request: pytest.FixtureRequest) -> None:
    run: PreparedRun = request.getfixturevalue(f"{which}_run")
    source = context_source(run)
    for chunk in chunks_of(run, gamma, drafts):
        assert block_lines(chunk, source.key_json, key_kind(source)) == reference_block_lines(chunk, source.key_json)
    assert key_kind(source) == ("text" if which == "order" else "int")
    assert key_kind(BigramSource(run.target)) == "int"


@pytest.mark.parametrize("drafts", [1, 2])
def test_block_parquet_rows_are_the_records_with_the_declared_types(drafts: int, order_run: PreparedRun,
                                                                   tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    source = context_source(order_run)
    shape = block_layout(key_kind(source), drafts > 1)
    writer = RecordParquet(tmp_path / "b.parquet", shape, chain_column=True, empty_file=False)
    records = []
    for chain in (0, 1):
        for chunk in chunks_of(order_run, 2, drafts, 600):
            writer.write(chunk.start, block_values(chunk, source.key_json), chain)
            records += [{"chain": chain, **json.loads(line)} for line in block_lines(chunk, source.key_json, "text")
                        .splitlines()]
    writer.close()
    table = pq.read_table(tmp_path / "b.parquet")
    assert table.to_pylist() == records
    types = {f.name: f.type for f in table.schema}
    assert {str(types[name]) for name in ("chain", "block", "accepted_length")} == {"int64"}
    assert str(types["context"]) == "string"
    assert str(types["drafted"].value_type) == str(types["emitted"].value_type) == "int64"
    if drafts > 1:
        assert str(types["children"].value_type.value_type) == "int64"


def test_an_empty_block_run_writes_no_parquet_file(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    writer = RecordParquet(tmp_path / "b.parquet", block_layout(), empty_file=False)
    writer.write(0, {name: [] for name in block_layout().names})
    writer.close()
    assert not writer.started and not (tmp_path / "b.parquet").exists()


def test_a_new_block_field_is_one_declaration_and_its_values(small_run: PreparedRun, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    shape = Layout((*block_layout().fields, Field("verified", "int", "block", "gamma"),
                    Field("final_ok", "bool", "block", "gamma")))
    (chunk, *_) = chunks_of(small_run, 3, 1)
    values: dict[str, Any] = block_values(chunk)
    values["verified"] = np.minimum(chunk.accepted_length + 1, 3).tolist()
    values["final_ok"] = (chunk.accepted_length == 3).tolist()
    records = [json.loads(line) for line in shape.json_lines(chunk.start, values).splitlines()]
    assert [r["verified"] for r in records] == values["verified"] and tuple(records[0]) == shape.names
    writer = RecordParquet(tmp_path / "x.parquet", shape)
    writer.write(chunk.start, values)
    writer.close()
    assert pq.read_table(tmp_path / "x.parquet").to_pylist() == records


def compiled_bytes(form: CompiledFormat, chunk: ChainChunk, tails: dict[int, str]) -> str:
    """M1's lines as the compiled ``jsonl`` writes them, from `form` alone (no field name here)."""
    out = bytearray()
    for t in range(len(chunk)):
        values = (chunk.start + t, int(chunk.prev[t]), int(chunk.proposed[t]), int(chunk.emitted[t]))
        for prefix, nullable, value in zip(form.int_prefixes, form.nullable, values, strict=True):
            out += prefix + (b"null" if nullable and value < 0 else str(value).encode())
        out += form.bool_texts[int(chunk.accepted[t])]
        out += tails[int(chunk.prev[t])].encode()
    return out.decode("ascii")


def test_the_compiled_format_gives_the_python_formatters_bytes() -> None:
    form = M1.compiled_format()
    assert form.int_prefixes == (b'{"step":', b',"prev_token":', b',"proposed_token":', b',"emitted_token":')
    assert form.nullable == (False, True, False, False)
    assert form.bool_texts == (b',"accepted":false,', b',"accepted":true,')
    config = RunConfig(vocab=40, K=4, eps=0.0, seed=9)  # ε = 0: some ce_gap_nats are null
    run = prepare_run(config)
    drafts: DraftSource = run.proposer.draft
    compiled = compiled_module()
    for chunk in run_chain(run.target.row, run.target.pi, drafts, 3000, random_stream(9, Stream.CHAIN), chunk=700):
        tails = {x: context_fields(drafts(x)) for x in np.unique(chunk.prev).tolist()}
        expected = jsonl_lines(chunk, tails)
        assert compiled_bytes(form, chunk, tails) == expected
        if compiled is not None:
            stream = io.StringIO()
            JsonlWriter(stream).write(chunk, drafts)
            assert stream.getvalue() == expected
    assert layout("context").compiled_format() == form  # the key's fields end the record either way
    for other in (layout(drafts=True), block_layout()):  # step fields after the key's, or no key: no format
        with pytest.raises(ValueError, match="no compiled format"):
            other.compiled_format()
