"""ψ from a draft source (``--draft-order``, ``--draft-trace``) and ``--psi-budget`` (issue 17).

Drafts are crafted from the draft model's row d and verified against the target's
p: the telemetry's ``overlap_mass`` must be ``sum min(p, F(ψ(d)))``, the emitted
tokens must still follow p (a χ² per context, with the draft model's rows as the
negative control, which must fail), and the acceptance must match the per-step
expectation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thermospec import api
from thermospec.cli.make_trace import write_trace
from thermospec.core.payload import craft_payload, decode_payload, encode_payload
from thermospec.core.proposal import proposal_distribution
from thermospec.core.statistics import context_chi2
from thermospec.runs.config import ConfigError
from thermospec.targets.draft_models import OrderDraftModel
from thermospec.targets.order import order_target

K = 8


@pytest.fixture(scope="module")
def corpus(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 100 KB of Tiny Shakespeare (enough contexts, quick to load)."""
    path = tmp_path_factory.mktemp("draft-sources") / "tiny.txt"
    path.write_text(shakespeare.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    return path


def _records(run_dir: Path) -> list[dict[str, object]]:
    with open(run_dir / "m1_metrics.jsonl", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def test_order_five_drafted_by_order_two(corpus: Path, tmp_path: Path) -> None:
    """overlap_mass is sum min(p5, F(ψ(p2))) at every step; tokens follow p5, not p2; accept ≈ overlap."""
    result = api.run(corpus=corpus, order=5, draft_order=2, K=K, steps=20_000, seed=3, runs_dir=tmp_path)
    records = _records(result.run_dir)
    target, draft = order_target(corpus, 5), OrderDraftModel(corpus, 2, order_target(corpus, 5).vocabulary)
    index = {ch: i for i, ch in enumerate(target.vocabulary)}
    counts: dict[int, np.ndarray] = {}
    worst, expected = 0.0, 0.0
    overlaps: dict[str, float] = {}  # a context's overlap, crafted from the wire once per context met
    for record in records:
        tokens = [index[ch] for ch in str(record["context"])]
        key = target.context_id(tokens)
        if str(record["context"]) not in overlaps:
            p, d = target.row(key), draft.row_after(tokens)
            q = proposal_distribution(decode_payload(encode_payload(craft_payload(d, K, 1.0, "auto"))))
            overlaps[str(record["context"])] = float(np.minimum(p, q).sum())
        overlap = overlaps[str(record["context"])]
        worst = max(worst, abs(overlap - float(record["overlap_mass"])))  # type: ignore[arg-type]
        expected += overlap
        counts.setdefault(key, np.zeros(target.V))[int(record["emitted_token"])] += 1  # type: ignore[call-overload]
    assert worst < 1e-9
    accepted = sum(bool(r["accepted"]) for r in records)
    n = len(records)
    se = math.sqrt(expected / n * (1 - expected / n) / n)
    assert abs(accepted / n - expected / n) < 5 * se
    assert abs(result.summary.mean_overlap - expected / n) < 1e-9  # type: ignore[operator]
    exact = context_chi2(counts.items(), target.row)
    assert exact.p_value > 1e-4
    wrong = context_chi2(counts.items(), lambda c: draft.row_after(target.context_tokens(c)))
    assert wrong.p_value < 1e-6  # the negative control: the draft model's rows are not what is emitted


def test_draft_order_equal_to_the_target_order_is_the_target(corpus: Path, tmp_path: Path) -> None:
    """--draft-order N on an order-N target crafts from the target's own rows: the same records."""
    plain = api.run(corpus=corpus, order=3, K=K, steps=3_000, runs_dir=tmp_path / "a")
    itself = api.run(corpus=corpus, order=3, draft_order=3, K=K, steps=3_000, runs_dir=tmp_path / "b")
    assert (plain.run_dir / "m1_metrics.jsonl").read_bytes() == (itself.run_dir / "m1_metrics.jsonl").read_bytes()


def test_unigram_draft_of_the_bigram(corpus: Path, tmp_path: Path) -> None:
    """--draft-order 1 on M1's bigram: ψ from one unigram row; acceptance drops, tokens still follow p."""
    plain = api.run(corpus=corpus, K=K, steps=20_000, telemetry="none", runs_dir=tmp_path / "a")
    unigram = api.run(corpus=corpus, K=K, steps=20_000, draft_order=1, runs_dir=tmp_path / "b")
    assert unigram.summary.mean_overlap < plain.summary.mean_overlap - 0.2  # type: ignore[operator]
    assert unigram.summary.p_value is not None and unigram.summary.p_value > 1e-4
    records = _records(unigram.run_dir)
    ids = {int(r["psi_bytes"]) for r in records}  # type: ignore[call-overload]
    assert ids == {24 + 3 * K + 4}


def test_draft_trace(tmp_path: Path) -> None:
    """--draft-trace: ψ of position t from the draft's row t, measured against the target's row t."""
    target = write_trace(tmp_path / "target.npy", positions=40, vocab=300, exponent=1.1, seed=1, progress=False)
    draft = write_trace(tmp_path / "draft.npy", positions=40, vocab=300, exponent=0.9, seed=2, progress=False)
    plain = api.run(trace=target, K=16, steps=4_000, runs_dir=tmp_path / "a")
    drafted = api.run(trace=target, draft_trace=draft, K=16, steps=4_000, runs_dir=tmp_path / "b")
    assert drafted.summary.mean_overlap < plain.summary.mean_overlap  # type: ignore[operator]
    from thermospec.targets.trace import load_trace

    p_trace, d_trace = load_trace(target), load_trace(draft)
    for record in _records(drafted.run_dir)[:80]:
        t = int(record["position"])  # type: ignore[call-overload]
        q = proposal_distribution(decode_payload(encode_payload(craft_payload(d_trace.row(t), 16, 1.0, "auto"))))
        assert abs(float(np.minimum(p_trace.row(t), q).sum()) - float(record["overlap_mass"])) < 1e-9  # type: ignore[arg-type]
    other = write_trace(tmp_path / "other.npy", positions=41, vocab=300, exponent=1.0, seed=3, progress=False)
    with pytest.raises(ConfigError, match="--draft-trace"):
        api.run(trace=target, draft_trace=other, runs_dir=tmp_path / "c")


def test_psi_budget_beats_fixed_K_at_equal_mean_bytes(corpus: Path, tmp_path: Path) -> None:
    """--psi-budget 52 with K up to 32 overlaps more than K = 8 everywhere (52 B), exactly by the design."""
    fixed = api.run(corpus=corpus, K=8, steps=50_000, telemetry="none", runs_dir=tmp_path)
    budget = api.run(corpus=corpus, K=32, psi_budget=52, steps=50_000, telemetry="none", runs_dir=tmp_path)
    design = budget.summary.record["psi_budget"]
    assert design["design_mean_bytes"] <= 52 + 1e-9
    assert abs(design["realised_mean_bytes"] - design["design_mean_bytes"]) < 1.0  # the chain's law is π
    assert sum(design["K_steps"].values()) == 50_000
    assert budget.summary.mean_overlap > fixed.summary.mean_overlap + 0.005  # type: ignore[operator]


@pytest.mark.parametrize(("options", "message"), [
    ({"draft_order": 1}, "--draft-order: needs --corpus"),
    ({"draft_order": 3, "corpus": "x.txt"}, r"--draft-order: must be an integer in \[1, 2\]"),
    ({"draft_trace": "d.npy"}, "--draft-trace: needs --trace"),
    ({"psi_budget": -1.0}, "--psi-budget: must be"),
])
def test_refusals(options: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        api.run(runs_dir=tmp_path, **options)


@pytest.mark.parametrize("options", [{}, {"drafts": 2}, {"gamma": 3}, {"order": 4}, {"order": 4, "draft_order": 2},
                                     {"gamma": 2, "drafts": 2, "verifier": "spectr"}, {"draft_order": 1, "drafts": 3}])
def test_losses_add_up_to_the_one_draft_loss(corpus: Path, tmp_path: Path, options: dict[str, Any]) -> None:
    """The three losses add up to 1 - the one-draft overlap; without a draft source the draft model loses 0."""
    record = api.run(corpus=corpus, K=8, steps=3_000, telemetry="none", runs_dir=tmp_path, **options).summary.record
    total = record["loss_draft_model"] + record["loss_top_k"] + record["loss_quantisation"]
    if "draft_order" not in options:
        assert record["loss_draft_model"] == 0.0
    else:
        assert record["loss_draft_model"] > 0.05
    if options.get("drafts", 1) == 1:
        assert abs((1.0 - total) - record["mean_overlap"]) < 1e-9
        assert "gain_drafts" not in record
    else:
        assert abs(record["gain_drafts"] - (record["mean_overlap"] - (1.0 - total))) < 1e-12
        assert record["gain_drafts"] > 0


@pytest.mark.parametrize("draft", [None, 1, 2])
def test_block_losses_are_the_core_split_row_by_row(corpus: Path, draft: int | None) -> None:
    """The summary's blocked computation (`runs.losses.block_losses`) is `core.losses.acceptance_losses` per row."""
    from thermospec.core.losses import acceptance_losses
    from thermospec.runs.losses import block_losses
    from thermospec.targets.characters import character_target

    target = character_target(str(corpus))
    P = np.stack([target.row(x) for x in range(target.V)])
    model = None if draft is None else OrderDraftModel(corpus, draft, target.vocabulary or ())
    D = None if model is None else np.stack([model.row_after((x,)) for x in range(target.V)])
    for K, tau in ((4, 1.0), (8, 0.7), (16, 1.3)):
        got = block_losses(P, D, K, tau, "auto")
        assert got is not None
        for x in range(target.V):
            d = P[x] if D is None else D[x]
            want = acceptance_losses(P[x], d, decode_payload(encode_payload(craft_payload(d, K, tau, "auto"))))
            assert np.allclose(got[x], (want.loss_draft_model, want.loss_top_k, want.loss_quantisation),
                               rtol=0, atol=1e-12)
    wrong = block_losses(P, D, 8, 2.0, "auto")  # the negative control: another τ is another split
    right = block_losses(P, D, 8, 1.0, "auto")
    assert wrong is not None and right is not None and np.abs(wrong - right).max() > 1e-3


def test_psi_budget_on_order_contexts_and_traces(corpus: Path, tmp_path: Path) -> None:
    """Order N: weights are the corpus' context frequencies; a trace: uniform, so design = realised exactly."""
    order = api.run(corpus=corpus, order=3, K=16, psi_budget=52, steps=2_000, telemetry="none", runs_dir=tmp_path)
    plan = order.summary.record["psi_budget"]
    assert plan["design_weights"] == "corpus context frequencies" and plan["design_mean_bytes"] <= 52 + 1e-9
    path = write_trace(tmp_path / "t.npy", positions=50, vocab=2000, exponent=1.0, seed=5, progress=False)
    trace = api.run(trace=path, K=64, psi_budget=100, steps=500, telemetry="none", runs_dir=tmp_path)
    plan = trace.summary.record["psi_budget"]
    assert plan["design_mean_bytes"] <= 100 + 1e-9
    assert abs(plan["realised_mean_bytes"] - plan["design_mean_bytes"]) < 1e-9  # every position 10 times
    assert abs(trace.summary.mean_overlap - plan["design_mean_overlap"]) < 1e-9
    fixed = api.run(trace=path, K=24, steps=500, telemetry="none", runs_dir=tmp_path)  # 100 bytes each
    assert trace.summary.mean_overlap >= fixed.summary.mean_overlap - 1e-12  # type: ignore[operator]


def test_budget_with_a_draft_trace_splits_the_loss_it_ran(tmp_path: Path) -> None:
    """--draft-trace with --psi-budget: K per position from the draft's rows; the split is of the ψ the run sent."""
    target = write_trace(tmp_path / "target.npy", positions=30, vocab=400, exponent=1.1, seed=1, progress=False)
    draft = write_trace(tmp_path / "draft.npy", positions=30, vocab=400, exponent=0.9, seed=2, progress=False)
    for gamma in (None, 3):
        record = api.run(trace=target, draft_trace=draft, K=48, psi_budget=90, gamma=gamma, steps=600,
                         telemetry="none", runs_dir=tmp_path).summary.record
        total = record["loss_draft_model"] + record["loss_top_k"] + record["loss_quantisation"]
        assert abs((1.0 - total) - record["mean_overlap"]) < 1e-9
        assert record["loss_draft_model"] > 0 and record["psi_budget"]["design_mean_bytes"] <= 90 + 1e-9
