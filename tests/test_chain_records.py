"""The records of one chain or of B in lock step, written once for every mode (`runs.telemetry.ChainRecords`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import thermospec.runs.telemetry as telemetry
from thermospec.engine.chunks import ChainChunk
from thermospec.runs.schema import M1
from thermospec.runs.storage import METRICS_FILE, OutputError, append_whole, chain_dir
from thermospec.runs.telemetry import PARQUET_FILE, ChainRecords, step_arrays
from thermospec.tsu.drafts import DraftRecord


class Draft:
    """A draft record with the guide's key fields."""

    def __init__(self, key: int) -> None:
        self.K, self.tau, self.eps_used, self.psi_bytes = 4, 1.0, 0.0, 20 + key
        self.topk_mass, self.overlap_mass, self.ce_gap_nats = 0.5, 0.25, float("inf") if key == 2 else 0.125


def draft(key: int) -> DraftRecord:
    return Draft(key)


def chunk(start: int, n: int, seed: int) -> ChainChunk:
    rng = np.random.default_rng(seed)
    return ChainChunk(start=start, prev=rng.integers(0, 4, n), proposed=rng.integers(0, 4, n),
                      emitted=rng.integers(0, 4, n), accepted=rng.random(n) < 0.5)


def lines(part: ChainChunk) -> str:
    return M1.lines(part.start, telemetry.step_columns(part),
                    [M1.key_tail(draft(k), k) for k in part.prev.tolist()])


def test_one_chain_is_one_hashed_file(tmp_path: Path) -> None:
    records: ChainRecords[ChainChunk] = ChainRecords(tmp_path, "jsonl")
    parts = [chunk(0, 5, 1), chunk(5, 3, 2)]
    for part in parts:
        records.write([part], lines)
    digest = records.close()
    text = (tmp_path / METRICS_FILE).read_text()
    assert text == "".join(map(lines, parts)) and digest == hashlib.sha256(text.encode()).hexdigest()
    assert records.steps == 8 and not list(tmp_path.glob("chain_*"))


def test_a_failed_write_keeps_every_chain_at_the_same_whole_chunks(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    records: ChainRecords[ChainChunk] = ChainRecords(tmp_path, "jsonl", chains=3)
    records.write([chunk(0, 4, b) for b in range(3)], lines)
    sizes = [(chain_dir(tmp_path, b) / METRICS_FILE).stat().st_size for b in range(3)]

    def full_at_chain_2(path: Path, text: str, size: int) -> int:
        if "chain_0002" in str(path):
            raise OutputError(f"{path}: cannot write (No space left on device)")
        return append_whole(path, text, size)

    monkeypatch.setattr(telemetry, "append_whole", full_at_chain_2)
    with pytest.raises(OutputError, match="every chain's file kept its 4 steps of whole records"):
        records.write([chunk(4, 4, 10 + b) for b in range(3)], lines)
    assert [(chain_dir(tmp_path, b) / METRICS_FILE).stat().st_size for b in range(3)] == sizes
    assert records.close() is None and records.steps == 4


def test_parquet_holds_every_chain_with_its_keys_fields(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    records: ChainRecords[ChainChunk] = ChainRecords(tmp_path, "parquet", chains=2, records=M1)
    parts = [chunk(0, 6, 3), chunk(0, 6, 4)]
    records.write(parts, lines, step_arrays, lambda part: part.prev, draft)
    assert records.close() is None
    rows = pq.read_table(tmp_path / PARQUET_FILE).to_pylist()
    expected = [{"chain": b, **json.loads(line)} for b, part in enumerate(parts) for line in lines(part).splitlines()]
    assert rows == expected and any(row["ce_gap_nats"] is None for row in rows)
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["chain_0000", "chain_0001", PARQUET_FILE]


def test_no_telemetry_or_no_folder_writes_nothing(tmp_path: Path) -> None:
    for records in (ChainRecords[ChainChunk](tmp_path, "none", chains=2), ChainRecords[ChainChunk](None, "jsonl")):
        records.write([chunk(0, 3, 5)] * 2, lines)
        assert records.close() is None
    assert not list(tmp_path.iterdir())
