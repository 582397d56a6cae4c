"""A new verifier is one module plus its ``PLANS`` entry (issue 16, "where do I change X").

`tests/first_draft_verifier.py` is written as a user would write one, and registered here only by
adding it to ``thermospec.core.verifiers.PLANS``.  Through `thermospec.run` it then runs with N drafts
and as token trees, on a bigram chain (the compiled N-draft kernel), order-N contexts and a trace, with
one and three chains, and is checked as the whole matrix is (`tests/test_matrix.py`): its tokens follow
the target's row of each key (pooled χ², with a negative control that fails), and its acceptance is its
own exact expectation.  A wrong verifier registered the same way (its residual is p itself) fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import thermospec
from scripts.make_trace import write_trace
from tests.first_draft_verifier import FirstDraftPlan, WrongResidualPlan
from tests.matrix_law import KeyLaw, block_length, block_pairs, exactness, step_acceptance, step_pairs
from tests.test_compose import TEXT
from thermospec.core.verifiers import PLANS
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import context_source, prepare_run

SEED = 5


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PLANS, "first", FirstDraftPlan)
    monkeypatch.setitem(PLANS, "wrong", WrongResidualPlan)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("new_verifier")
    corpus = root / "small.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    trace = write_trace(root / "trace.npz", 12, 40, 1.2, 5, tokens=True, progress=False)
    return {"bigram": {"vocab": 16, "K": 4}, "order": {"corpus": str(corpus), "order": 4, "K": 3},
            "trace": {"trace": str(trace), "K": 4}}


def _records(folder: Path, name: str, chains: int) -> list[list[dict[str, Any]]]:
    files = [folder / name] if chains == 1 else [folder / f"chain_{b:04d}" / name for b in range(chains)]
    return [[json.loads(line) for line in path.read_text().splitlines()] for path in files]


@pytest.mark.parametrize("shape", ["drafts", "tree"])
@pytest.mark.parametrize("chains", [1, 3])
@pytest.mark.parametrize("source", ["bigram", "order", "trace"])
def test_a_verifier_of_one_module_runs_exactly_everywhere(
    sources: dict[str, dict[str, Any]], tmp_path: Path, source: str, chains: int, shape: str
) -> None:
    options = sources[source]
    n = 3 if shape == "drafts" else 2
    verifier: dict[str, Any] = {"drafts": n, "verifier": "first"} | ({} if shape == "drafts" else {"gamma": 2})
    steps = 3000 if chains == 1 else 1000
    result = thermospec.run(runs_dir=tmp_path, chains=chains, steps=steps, seed=SEED, **options, **verifier)
    run = prepare_run(RunConfig(**options, seed=SEED))
    law = KeyLaw(context_source(run), run.proposer.draft, "first", n)
    keys, tokens = [], []
    if shape == "drafts":
        field = {"order": "context", "trace": "position"}.get(source, "prev_token")
        accepted: list[bool] = []
        for chain in _records(result.run_dir, "m1_metrics.jsonl", chains):
            k, t = step_pairs(chain, law.source, field)
            keys.append(k)
            tokens.append(t)
            accepted.extend(bool(r["accepted"]) for r in chain)
            assert all(r["accepted_index"] in (0, None) for r in chain)  # only the first draft is ever accepted
        deviation = step_acceptance(np.concatenate(keys), accepted, law)
    else:
        starts, lengths = [], []
        for chain in _records(result.run_dir, "m1_blocks.jsonl", chains):
            k, t, s, length = block_pairs(chain, law.source)
            keys.append(k)
            tokens.append(t)
            starts.append(s)
            lengths.append(length)
        deviation = block_length(np.concatenate(starts), np.concatenate(lengths), law, 2)
    right, wrong = exactness(np.concatenate(keys), np.concatenate(tokens), law.source)
    assert right.p_value > 1e-4, f"emitted tokens do not follow p(.|key): {right}"
    assert wrong.p_value < 1e-6, f"negative control passed, the test has no power: {wrong}"
    assert abs(deviation.z) < 5, f"acceptance is not the exact expectation: {deviation}"


def test_a_wrong_verifier_registered_the_same_way_fails(tmp_path: Path) -> None:
    options: dict[str, Any] = {"vocab": 16, "K": 1}  # ψ of one id: F(ψ) far from p, so the residual matters
    result = thermospec.run(runs_dir=tmp_path, steps=20_000, seed=SEED, drafts=3, verifier="wrong", **options)
    run = prepare_run(RunConfig(**options, seed=SEED))
    source = context_source(run)
    (chain,) = _records(result.run_dir, "m1_metrics.jsonl", 1)
    keys, tokens = step_pairs(chain, source, "prev_token")
    right, _ = exactness(keys, tokens, source)
    assert right.p_value < 1e-6, f"a verifier that emits from p after a rejection passed: {right}"


def test_an_unregistered_verifier_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--verifier: must be one of recursive, spectr, optimal, first, wrong, "
                                         r"got 'nope'"):
        thermospec.run(runs_dir=tmp_path, steps=10, drafts=2, verifier="nope")
    assert not any(tmp_path.iterdir())


def test_the_command_line_takes_a_registered_verifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from thermospec.cli.m1 import main

    assert main(["run", "--vocab", "16", "--K", "4", "--steps", "500", "--drafts", "3", "--verifier", "first",
                 "--runs-dir", str(tmp_path), "--quiet"]) == 0
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["config"]["verifier"] == "first"
    with pytest.raises(SystemExit):  # argparse's one line for a name nobody registered
        main(["run", "--drafts", "2", "--verifier", "nope", "--runs-dir", str(tmp_path)])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
