"""Tests of the per-step telemetry (SPEC §6): every line of ``m1_metrics.jsonl`` checked against SPEC.

The per-context metrics of each line are recomputed here from the target row and
the *decoded* payload with SPEC's formulas (§2 sizes, §3 F(ψ), §6 metrics), not
with the package's own metric functions.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.speculative_law import spec_formula
from thermospec import craft_payload, decode_payload, encode_payload
from thermospec.engine.chunks import ChainChunk
from thermospec.runs.config import RunConfig
from thermospec.runs.executor import execute_run
from thermospec.runs.prepare import prepare_run
from thermospec.runs.storage import create_run_dir
from thermospec.runs.telemetry import JsonlWriter, context_fields, jsonl_lines
from thermospec.targets.bigram import BigramTarget
from thermospec.tsu.drafts import Proposer

GUIDE_FIELDS = [
    "step", "prev_token", "proposed_token", "emitted_token", "accepted",
    "K", "tau", "eps_used", "psi_bytes", "topk_mass", "overlap_mass", "ce_gap_nats",
]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse each line, keeping the key order and refusing NaN/Infinity (not JSON)."""

    def refuse(constant: str) -> float:
        raise AssertionError(f"{constant} is not JSON")

    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line, object_pairs_hook=dict, parse_constant=refuse) for line in lines]


def spec_metrics(target: BigramTarget, context: int, K: int, tau: float, eps: Any) -> dict[str, Any]:
    """SPEC's per-context fields, from the target row and the decoded ψ."""
    p = target.row(context)
    wire = encode_payload(craft_payload(p, K, tau, eps))
    payload = decode_payload(wire)
    V = target.V
    q = spec_formula(payload.ids, payload.codes, V, payload.tau, payload.eps, payload.delta)
    support = p > 0
    if np.any(q[support] == 0):
        ce_gap = None
    else:
        ce_gap = float(np.sum(p[support] * (np.log(p[support]) - np.log(q[support]))))
    id_bytes = 2 if V <= 65536 else 4
    return {
        "K": payload.K,
        "tau": payload.tau,
        "eps_used": payload.eps,
        "psi_bytes": 24 + payload.K * (id_bytes + 1) + 4,
        "wire_bytes": len(wire),
        "topk_mass": float(p[payload.ids].sum()),
        "overlap_mass": float(np.minimum(p, q).sum()),
        "ce_gap_nats": ce_gap,
    }


def run_once(runs_dir: Path, config: RunConfig) -> Path:
    run_dir = create_run_dir(runs_dir)
    execute_run(prepare_run(config), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def shakespeare_run(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Path]:
    config = RunConfig(corpus=str(shakespeare), K=64, steps=3000, seed=7)
    return config, run_once(tmp_path_factory.mktemp("runs"), config)


def check_lines(records: list[dict[str, Any]], target: BigramTarget, config: RunConfig) -> None:
    expected_cache: dict[int, dict[str, Any]] = {}
    for t, record in enumerate(records):
        assert list(record) == GUIDE_FIELDS
        assert record["step"] == t
        assert isinstance(record["accepted"], bool)
        for name in ("prev_token", "proposed_token", "emitted_token", "K", "psi_bytes"):
            assert type(record[name]) is int
            assert 0 <= record[name] < max(target.V, 2000)
        if record["accepted"]:
            assert record["emitted_token"] == record["proposed_token"]
        if t:
            assert record["prev_token"] == records[t - 1]["emitted_token"]
        x = record["prev_token"]
        if x not in expected_cache:
            expected_cache[x] = spec_metrics(target, x, config.K, config.tau, config.eps)
        expected = expected_cache[x]
        assert record["K"] == expected["K"]
        assert record["tau"] == expected["tau"]
        assert record["eps_used"] == expected["eps_used"]
        assert record["psi_bytes"] == expected["psi_bytes"] == expected["wire_bytes"]
        assert record["topk_mass"] == pytest.approx(expected["topk_mass"], abs=1e-6)
        assert record["overlap_mass"] == pytest.approx(expected["overlap_mass"], abs=1e-6)
        if expected["ce_gap_nats"] is None:
            assert record["ce_gap_nats"] is None
        else:
            assert record["ce_gap_nats"] == pytest.approx(expected["ce_gap_nats"], abs=1e-6)


def test_every_line_has_the_guide_fields_and_spec_values(shakespeare_run: tuple[RunConfig, Path]) -> None:
    config, run_dir = shakespeare_run
    records = read_jsonl(run_dir / "m1_metrics.jsonl")
    assert len(records) == config.steps
    target = prepare_run(config).target
    check_lines(records, target, config)
    assert {r["K"] for r in records} == {64}  # V = 65 > 64, every row is positive (Laplace)
    assert {r["psi_bytes"] for r in records} == {24 + 64 * 3 + 4}
    assert len({r["prev_token"] for r in records}) > 30


def test_ce_gap_is_null_where_q_misses_the_support(shakespeare: Path, tmp_path: Path) -> None:
    config = RunConfig(corpus=str(shakespeare), K=8, eps=0.0, steps=500, seed=3)
    records = read_jsonl(run_once(tmp_path, config) / "m1_metrics.jsonl")
    check_lines(records, prepare_run(config).target, config)
    assert all(r["ce_gap_nats"] is None for r in records)  # Laplace rows are positive, ε = 0 leaves 57 at q = 0
    assert all(r["eps_used"] == 0.0 for r in records)


def test_K_above_V_and_the_synthetic_target(tmp_path: Path) -> None:
    config = RunConfig(vocab=40, c=0.5, K=128, tau=0.3, steps=800, seed=2)  # peaked rows: K shrinks to nonzeros
    records = read_jsonl(run_once(tmp_path, config) / "m1_metrics.jsonl")
    check_lines(records, prepare_run(config).target, config)
    assert max(r["K"] for r in records) <= 40
    assert len({r["K"] for r in records}) > 1


def test_same_options_and_seed_give_byte_identical_jsonl(tmp_path: Path) -> None:
    config = RunConfig(vocab=64, steps=2000, seed=11)
    first = (run_once(tmp_path, config) / "m1_metrics.jsonl").read_bytes()
    second = (run_once(tmp_path, config) / "m1_metrics.jsonl").read_bytes()
    assert first == second
    other = (run_once(tmp_path, RunConfig(vocab=64, steps=2000, seed=12)) / "m1_metrics.jsonl").read_bytes()
    assert other != first


def test_jsonl_formatting_by_hand() -> None:
    p = np.array([0.5, 0.3, 0.2, 0.0])
    proposer = Proposer(lambda _: p, 2, 1.0, 0.0)
    chunk = ChainChunk(
        start=10,
        prev=np.array([1, 1], dtype=np.int64),
        proposed=np.array([0, 2], dtype=np.int64),
        emitted=np.array([0, 1], dtype=np.int64),
        accepted=np.array([True, False]),
    )
    draft = proposer.draft(1)
    text = jsonl_lines(chunk, {1: context_fields(draft)})
    lines = text.splitlines()
    assert text.endswith("\n")
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert list(first) == GUIDE_FIELDS
    assert (first["step"], first["prev_token"], first["proposed_token"], first["emitted_token"]) == (10, 1, 0, 0)
    assert first["accepted"] is True
    assert json.loads(lines[1])["accepted"] is False
    assert first["ce_gap_nats"] is None  # ε = 0 and p(2) > 0: the gap is infinite
    assert first["overlap_mass"] == draft.overlap_mass  # floats round-trip exactly
    assert lines[0].startswith('{"step":10,"prev_token":1,"proposed_token":0,"emitted_token":0,"accepted":true,"K":2,')


@pytest.mark.parametrize("compiled", [False, True])
def test_writer_matches_the_python_formatter(compiled: bool) -> None:
    rng = np.random.default_rng(0)
    P: NDArray[np.float64] = rng.dirichlet(np.full(20, 0.3), size=20)
    proposer = Proposer(lambda x: P[x], 5, 0.7, "auto")
    chunk = ChainChunk(
        start=0,
        prev=rng.integers(0, 20, 500),
        proposed=rng.integers(0, 20, 500),
        emitted=rng.integers(0, 20, 500),
        accepted=rng.random(500) < 0.5,
    )
    stream = io.StringIO()
    JsonlWriter(stream, compiled=compiled).write(chunk, proposer.draft)
    expected = jsonl_lines(chunk, {x: context_fields(proposer.draft(x)) for x in range(20)})
    assert stream.getvalue() == expected
    for line in stream.getvalue().splitlines():
        record = json.loads(line)
        for name in ("tau", "eps_used", "topk_mass", "overlap_mass", "ce_gap_nats"):
            assert record[name] is None or math.isfinite(record[name])
