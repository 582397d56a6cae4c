"""The THRML backend: its draws follow F(ψ) (χ², with a negative control), log q and the layout are SimTSU's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from thermospec.cli.m1 import main
from thermospec.core.payload import craft_payload, encode_payload
from thermospec.core.statistics import pooled_chi2
from thermospec.runs.telemetry import FIELDS
from thermospec.tsu.drafts import Proposer
from thermospec.tsu.thrml import node_dtype_name, thrml_available

needs_thrml = pytest.mark.skipif(
    not thrml_available(), reason="the optional 'thrml' extra (Extropic's THRML + JAX) is not installed"
)


def test_node_dtype_holds_every_token_id() -> None:
    assert node_dtype_name(2) == "uint8"
    assert node_dtype_name(256) == "uint8"
    assert node_dtype_name(257) == "uint16"
    assert node_dtype_name(65_536) == "uint16"
    assert node_dtype_name(65_537) == "uint32"


def wire_for(V: int, K: int, seed: int, tau: float = 1.0) -> bytes:
    p = np.random.default_rng(seed).dirichlet(np.full(V, 0.5))
    return encode_payload(craft_payload(p, K, tau, "auto"))


@needs_thrml
@pytest.mark.parametrize(("V", "K"), [(64, 8), (300, 40)])  # 300 > 256: needs uint16 nodes
def test_thrml_draws_follow_f_psi_by_chi2(V: int, K: int) -> None:
    from thermospec.tsu.sim import SimTSU
    from thermospec.tsu.thrml import ThrmlSampler, ThrmlTSU

    wire = wire_for(V, K, seed=V)
    sampler = ThrmlSampler(V, nodes=2048)
    refills = iter(range(1_000))
    tsu = ThrmlTSU(wire, sampler, sampler.key(11), lambda: next(refills))
    n = 60_000
    rng = np.random.default_rng(0)
    tokens, log_q = tsu.sample(rng, n)
    assert tokens.shape == (n,) and tokens.max() < V
    assert np.array_equal(log_q, np.log(SimTSU(wire).q[tokens]))  # log q from the decoded payload
    observed = np.bincount(tokens, minlength=V).astype(np.float64)
    assert pooled_chi2(observed, n * tsu.q).p_value > 0.001
    # Negative control: the same draws against a slightly sharpened F(ψ) are rejected.
    sharper = tsu.q**1.15
    assert pooled_chi2(observed, n * sharper / sharper.sum()).p_value < 1e-6


@needs_thrml
def test_thrml_tsu_keeps_the_stream_layout_and_never_reuses_a_key() -> None:
    from thermospec.tsu.thrml import ThrmlSampler, ThrmlTSU

    wire = wire_for(32, 4, seed=1)
    sampler = ThrmlSampler(32, nodes=64)
    counter = iter(range(100))
    tsu = ThrmlTSU(wire, sampler, sampler.key(3), lambda: next(counter))
    rng, twin = np.random.default_rng(5), np.random.default_rng(5)
    first = tsu.sample(rng, 64)[0]  # one whole refill (key number 0)
    twin.random(64)
    assert rng.random() == twin.random()  # exactly n uniforms consumed
    rebuilt = ThrmlTSU(wire, sampler, sampler.key(3), lambda: next(counter))  # same context, key number 1
    assert not np.array_equal(first, rebuilt.sample(np.random.default_rng(5), 64)[0])


@needs_thrml
def test_thrml_proposer_keeps_payloads_and_metrics() -> None:
    from thermospec.tsu.thrml import ThrmlTSU, thrml_proposer

    rows = np.random.default_rng(2).dirichlet(np.full(16, 0.5), size=16)
    base = Proposer(lambda x: rows[x], 4, 1.0, "auto")
    proposer = thrml_proposer(base, 16, seed=7)
    for x in (0, 5):
        d, b = proposer.draft(x), base.draft(x)
        assert isinstance(d.tsu, ThrmlTSU)
        assert d.payload_bytes == b.payload_bytes and np.array_equal(d.tsu.q, b.tsu.q)
        assert d.overlap_mass == b.overlap_mass


@needs_thrml
def test_cli_run_with_thrml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["run", "--tsu", "thrml", "--vocab", "32", "--K", "8", "--steps", "4000",
                   "--runs-dir", str(tmp_path)])
    _out, err = capsys.readouterr()
    assert status == 0, err
    (run_dir,) = list(tmp_path.iterdir())
    lines = (run_dir / "m1_metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4000 and tuple(json.loads(lines[0])) == FIELDS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tsu_backend"]["name"] == "thrml" and summary["config"]["tsu"] == "thrml"
    assert summary["checklist"]["accept_overlap_within_0.03"] is True
    assert summary["p_value"] > 0.001


@pytest.mark.parametrize(
    "args",
    [["check", "--tsu", "thrml"]],  # --telemetry none and --chains B run now
)
def test_cli_refuses_thrml_where_it_would_not_be_used(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = main([*args, "--steps", "10", *(["--runs-dir", str(tmp_path / "runs")] if args[0] == "run" else [])])
    except SystemExit as exc:
        status = int(exc.code or 0)
    _out, err = capsys.readouterr()
    assert status == 2 and "--tsu thrml" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@needs_thrml
def test_cli_block_run_with_thrml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["run", "--tsu", "thrml", "--gamma", "2", "--vocab", "16", "--K", "4", "--steps", "3000",
                   "--runs-dir", str(tmp_path)])
    _out, err = capsys.readouterr()
    assert status == 0, err
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["tsu"] == "thrml" and summary["config"]["gamma"] == 2
    gap = abs(summary["mean_accepted_length"] - summary["expected"]["accepted_length"])
    assert gap < 4 * summary["mean_accepted_length_se"]
