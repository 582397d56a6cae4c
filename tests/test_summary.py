"""Tests of ``summary.json`` (SPEC §6): every aggregate is recomputed here from the JSONL alone
(plus the stationary π of the target the configuration names, for the χ²)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats

from thermospec.engine.chunks import ChainChunk
from thermospec.engine.tally import RunTally
from thermospec.runs.config import RunConfig
from thermospec.runs.executor import execute_run
from thermospec.runs.prepare import prepare_run
from thermospec.runs.storage import create_run_dir


def pooled_chi2_by_hand(observed: NDArray[np.float64], expected: NDArray[np.float64]) -> tuple[float, int, float]:
    """SPEC §6's pooling, written out again: small bins pooled, a small pool merged into the smallest other bin."""
    small = expected < 5
    obs, exp = list(observed[~small]), list(expected[~small])
    if small.any():
        pool_obs, pool_exp = float(observed[small].sum()), float(expected[small].sum())
        if pool_exp >= 5 or not exp:
            obs.append(pool_obs)
            exp.append(pool_exp)
        else:
            i = int(np.argmin(exp))
            obs[i] += pool_obs
            exp[i] += pool_exp
    if len(obs) <= 1:
        return 0.0, 0, 1.0
    stat = math.fsum((o - e) ** 2 / e for o, e in zip(obs, exp, strict=True))
    dof = len(obs) - 1
    return stat, dof, float(stats.chi2.sf(stat, dof))


def run(runs_dir: Path, config: RunConfig) -> tuple[list[dict[str, Any]], dict[str, Any], bytes, NDArray[np.float64]]:
    prepared = prepare_run(config)
    run_dir = create_run_dir(runs_dir)
    returned = execute_run(prepared, run_dir)
    raw = (run_dir / "m1_metrics.jsonl").read_bytes()
    records = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary == json.loads(json.dumps(returned))  # what execute_run returns is what it wrote
    return records, summary, raw, prepared.target.pi


def assert_recomputable(records: list[dict[str, Any]], summary: dict[str, Any], raw: bytes,
                        pi: NDArray[np.float64], config: RunConfig) -> None:
    n = len(records)
    assert summary["steps"] == n == config.steps
    accept_rate = sum(r["accepted"] for r in records) / n
    assert summary["accept_rate"] == accept_rate
    mean_overlap = math.fsum(r["overlap_mass"] for r in records) / n
    assert summary["mean_overlap"] == pytest.approx(mean_overlap, rel=1e-12)
    assert summary["accept_overlap_gap"] == pytest.approx(abs(accept_rate - mean_overlap), abs=1e-12)
    gaps = [r["ce_gap_nats"] for r in records]
    infinite = sum(g is None for g in gaps)
    assert summary["ce_gap_infinite_steps"] == infinite
    if infinite:
        assert summary["mean_ce_gap"] is None
    else:
        assert summary["mean_ce_gap"] == pytest.approx(math.fsum(gaps) / n, rel=1e-12)
    emitted = np.bincount([r["emitted_token"] for r in records], minlength=pi.size).astype(np.float64)
    stat, dof, p_value = pooled_chi2_by_hand(emitted, n * pi)
    assert summary["chi2_stat"] == pytest.approx(stat, rel=1e-9)
    assert summary["chi2_dof"] == dof
    assert summary["p_value"] == pytest.approx(p_value, rel=1e-6, abs=1e-300)
    assert summary["psi_bytes_max"] == max(r["psi_bytes"] for r in records)
    assert summary["K_sent_min"] == min(r["K"] for r in records)
    assert summary["K_sent_max"] == max(r["K"] for r in records)
    assert summary["contexts_visited"] == len({r["prev_token"] for r in records})
    assert summary["checklist"]["accept_overlap_within_0.03"] == (abs(accept_rate - mean_overlap) < 0.03)
    assert summary["checklist"]["psi_bytes_le_1024"] == (max(r["psi_bytes"] for r in records) <= 1024)
    assert summary["config"]["K"] == config.K
    assert summary["config"]["K_used"] == min(config.K, pi.size)
    assert summary["config"]["seed"] == config.seed
    assert summary["config"]["steps"] == config.steps
    if "metrics_sha256" in summary:
        assert summary["metrics_sha256"] == hashlib.sha256(raw).hexdigest()
    assert summary["elapsed_s"] > 0
    assert summary["tokens_per_s"] == pytest.approx(n / summary["elapsed_s"])


def test_shakespeare_summary_is_recomputable_from_the_jsonl(shakespeare: Path, tmp_path: Path) -> None:
    config = RunConfig(corpus=str(shakespeare), K=128, steps=3000, seed=7)  # K above V = 65: clamped
    records, summary, raw, pi = run(tmp_path, config)
    assert_recomputable(records, summary, raw, pi, config)
    assert summary["config"]["K_used"] == 65
    assert summary["target"]["source"] == "corpus"
    assert summary["target"]["V"] == 65
    assert summary["target"]["corpus_sha256"] == hashlib.sha256(shakespeare.read_bytes()).hexdigest()
    assert summary["mean_ce_gap"] is not None


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(steps=3000),  # the guide's defaults at a small step count
        RunConfig(steps=2000, eps=0.0, K=8, seed=3),  # every gap infinite: mean_ce_gap null
        RunConfig(steps=2000, vocab=30, c=0.2, K=1, tau=3.0, seed=4),  # peaked rows, exact zeros
    ],
    ids=["defaults", "eps0", "peaked"],
)
def test_synthetic_summary_is_recomputable_from_the_jsonl(config: RunConfig, tmp_path: Path) -> None:
    records, summary, raw, pi = run(tmp_path, config)
    assert_recomputable(records, summary, raw, pi, config)
    assert summary["target"]["source"] == "synthetic"
    if config.eps == 0.0:
        assert summary["mean_ce_gap"] is None
        assert summary["ce_gap_infinite_steps"] == config.steps


def test_summary_json_has_no_infinity_or_nan(tmp_path: Path) -> None:
    _, summary, _, _ = run(tmp_path, RunConfig(steps=500, eps=0.0))
    text = json.dumps(summary, allow_nan=False)  # raises on inf / nan
    assert "Infinity" not in text


def test_run_tally_counts_chunks() -> None:
    rng = np.random.default_rng(0)
    tally = RunTally(12)
    prev_all, emitted_all, accepted_all = [], [], []
    for start in (0, 100, 250):
        n = 100 if start < 250 else 37
        chunk = ChainChunk(start=start, prev=rng.integers(0, 12, n), proposed=rng.integers(0, 12, n),
                           emitted=rng.integers(0, 12, n), accepted=rng.random(n) < 0.3)
        tally.update(chunk)
        prev_all.append(chunk.prev)
        emitted_all.append(chunk.emitted)
        accepted_all.append(chunk.accepted)
    assert tally.steps == 237
    assert tally.accepted == int(np.concatenate(accepted_all).sum())
    np.testing.assert_array_equal(tally.context_counts, np.bincount(np.concatenate(prev_all), minlength=12))
    np.testing.assert_array_equal(tally.emitted_counts, np.bincount(np.concatenate(emitted_all), minlength=12))


def transition_chi2_by_hand(records: list[dict[str, Any]], P: NDArray[np.float64]) -> tuple[float, int, float]:
    """Per-context emitted counts against n_x p(.|x), pooled per context, statistics and dofs summed."""
    V = P.shape[0]
    counts = np.zeros((V, V))
    for r in records:
        counts[r["prev_token"], r["emitted_token"]] += 1
    stat_terms, dof = [], 0
    for x in range(V):
        n_x = counts[x].sum()
        if n_x:
            s, d, _ = pooled_chi2_by_hand(counts[x], n_x * P[x])
            stat_terms.append(s)
            dof += d
    stat = math.fsum(stat_terms)
    return stat, dof, float(stats.chi2.sf(stat, dof))


def test_transition_chi2_is_recomputable_from_the_jsonl(shakespeare: Path, tmp_path: Path) -> None:
    config = RunConfig(corpus=str(shakespeare), K=8, steps=4000, seed=5)
    records, summary, _, _ = run(tmp_path, config)
    target = prepare_run(config).target
    stat, dof, p_value = transition_chi2_by_hand(records, np.stack([target.row(x) for x in range(target.V)]))
    assert summary["transition_chi2_stat"] == pytest.approx(stat, rel=1e-9)
    assert summary["transition_chi2_dof"] == dof
    assert summary["transition_p_value"] == pytest.approx(p_value, rel=1e-6)


def _transition_p_value(config: RunConfig, fault: str | None) -> float:
    from thermospec.core.streams import Stream, random_stream
    from thermospec.engine.chain import run_chain
    from thermospec.runs.prepare import inject_fault
    from thermospec.runs.summary import summarise_run
    from thermospec.tsu.faults import Fault

    prepared = prepare_run(config)
    if fault is not None:
        prepared = inject_fault(prepared, Fault.parse(fault))
    target = prepared.target
    tally = RunTally(target.V, track_transitions=True)
    rng = random_stream(config.seed, Stream.CHAIN)
    for chunk in run_chain(target.row, target.pi, prepared.proposer.draft, config.steps, rng):
        tally.update(chunk)
    p_value: float = summarise_run(tally, prepared.proposer.draft, target.pi, target.row)["transition_p_value"]
    return p_value


def test_transition_chi2_passes_a_correct_tsu_and_catches_a_biased_one(shakespeare: Path) -> None:
    # Tiny Shakespeare at K = 4 rejects ~30 % of drafts, and every rejection's residual draw inherits
    # the sampler's error: a TSU that over-draws its top token by 5 % (while reporting F(ψ)) is refused
    # with p ~ 1e-12 over 200,000 steps at this seed, while the correct TSU gives p ~ 1.
    config = RunConfig(corpus=str(shakespeare), K=4, steps=200_000, seed=9)
    assert _transition_p_value(config, None) > 0.01
    assert _transition_p_value(config, "bias:0.05") < 1e-6


def test_transition_chi2_is_null_without_tracking_or_above_1024_tokens() -> None:
    assert RunTally(1025, track_transitions=True).transitions is None
    assert RunTally(12).transitions is None
