"""`load_draft_trace`: a draft trace is the target's positions or a one-line refusal naming it (about 1 s)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from thermospec.cli.make_trace import write_trace
from thermospec.targets.trace import TraceError, TraceWriter, load_trace, softmax64
from thermospec.targets.trace_pair import load_draft_trace


def npz(path: Path, rows: np.ndarray, tokens: list[int] | None = None, vocab: list[str] | None = None) -> Path:
    """Write `rows` as a .npz trace with optional tokens and vocab."""
    with TraceWriter(path, rows.shape[0], rows.shape[1], "float32") as writer:
        writer.write(rows)
        return writer.finish(tokens=tokens, vocabulary=vocab)


def rows_of(seed: int, T: int = 6, V: int = 5) -> np.ndarray:
    """Random log-probabilities, (T, V)."""
    logits = np.random.default_rng(seed).normal(size=(T, V)) * 2
    rows: np.ndarray = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return rows


def test_the_draft_rows_are_the_draft_traces_position_by_position(tmp_path: Path) -> None:
    target = load_trace(npz(tmp_path / "t.npz", rows_of(1), [0, 1, 2, 3, 4, 0], list("abcde")))
    draft_rows = rows_of(2)
    draft = load_draft_trace(npz(tmp_path / "d.npz", draft_rows, [0, 1, 2, 3, 4, 0], list("abcde")), target)
    assert (draft.V, draft.positions) == (target.V, target.positions)
    for t in range(6):
        np.testing.assert_allclose(draft.row(t), softmax64(draft_rows[t].astype(np.float32)), rtol=1e-12)
        assert np.abs(draft.row(t) - target.row(t)).max() > 0.01  # the draft's row, not the target's
    tokens, probs = draft.top_support(3, 2)
    assert probs.tolist() == draft.row(3)[tokens].tolist()
    # tokens or vocab carried by one trace only; a .npy draft (rows only); a trace drafted by itself
    assert load_draft_trace(npz(tmp_path / "bare.npz", draft_rows), target).V == 5
    plain = load_trace(write_trace(tmp_path / "z.npy", 6, 5, 1.0, 3, progress=False))
    assert load_draft_trace(tmp_path / "d.npz", plain).positions == 6
    assert load_draft_trace(tmp_path / "t.npz", target).sha256 == target.sha256


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: npz(p, rows_of(2, V=6), [0, 1, 2, 3, 4, 0]), "has V = 6 tokens per row"),
    (lambda p: npz(p, rows_of(2, T=7), [0, 1, 2, 3, 4, 0, 1]), "has T = 7 positions"),
    (lambda p: npz(p, rows_of(2), [0, 1, 2, 4, 4, 0]), "(position 3: 4, not 3)"),
    (lambda p: npz(p, rows_of(2), None, list("abcdX")), "spells token 4 'X'"),
    (lambda p: p.write_bytes(b"not a trace"), "is neither a .npy array nor a .npz archive"),
])
def test_a_draft_trace_of_other_positions_is_refused_in_one_line(
    tmp_path: Path, make: Callable[[Path], object], reason: str
) -> None:
    target = load_trace(npz(tmp_path / "t.npz", rows_of(1), [0, 1, 2, 3, 4, 0], list("abcde")))
    path = tmp_path / "d.npz"
    make(path)
    with pytest.raises(TraceError) as refused:
        load_draft_trace(path, target)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message, message
    if "neither" not in reason:
        assert f"the target trace {target.path}" in message
