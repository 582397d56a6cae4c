"""A draft trace for a target trace: the draft model's rows, position by position (docs/traces.md).

``run --trace TARGET --draft-trace DRAFT`` crafts ψ at position t from the draft
trace's row t and verifies it against the target's row t.  The two traces must
describe the same positions: the same V and T, the same observed ``tokens`` when
both carry them, and the same ``vocab`` when both carry it (``record-trace
--draft-model`` writes such a pair).  The draft trace is read like any trace
(`load_trace`: checked, rows on demand); it is a `PositionTarget` whose row t is
the draft's row t.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thermospec.targets.trace import ROW_CACHE_BYTES, TraceError, TraceTarget, load_trace

__all__ = ["load_draft_trace", "mismatch"]


def load_draft_trace(path: str | Path, target: TraceTarget, *, row_cache_bytes: int = ROW_CACHE_BYTES) -> TraceTarget:
    """Load the trace at `path` as the draft of `target` once they describe the same positions.

    Parameters
    ----------
    path : str or Path
        The draft model's trace (.npy or .npz, docs/traces.md).
    target : TraceTarget
        The target's trace, already loaded.
    row_cache_bytes : int
        The draft's row cache bound (`load_trace`'s).

    Returns
    -------
    TraceTarget
        The draft trace: ``row(t)`` is the draft's law at position t (a `PositionTarget`).

    Raises
    ------
    TraceError
        One line naming `path` and the reason: any of `load_trace`'s, or a V, T, ``tokens`` or
        ``vocab`` that differs from `target`'s (`mismatch`).
    """
    draft = load_trace(path, row_cache_bytes=row_cache_bytes)
    reason = mismatch(draft, target)
    if reason is not None:
        draft.reader.close()
        raise TraceError(f"{path}: {reason}")
    return draft


def mismatch(draft: TraceTarget, target: TraceTarget) -> str | None:
    """Why `draft` cannot be `target`'s draft trace (a reason without the file's name), or None when it can."""
    against = f"the target trace {target.path}"
    if draft.V != target.V:
        return f"has V = {draft.V:,} tokens per row where {against} has {target.V:,}: a draft trace needs the same V"
    if draft.positions != target.positions:
        return (f"has T = {draft.positions:,} positions where {against} has {target.positions:,}: "
                "a draft trace needs the same T")
    if draft.tokens is not None and target.tokens is not None and not np.array_equal(draft.tokens, target.tokens):
        t = int(np.flatnonzero(draft.tokens != target.tokens)[0])
        return (f"has other observed tokens than {against} (position {t}: {draft.tokens[t]}, not "
                f"{target.tokens[t]}): a draft trace is recorded over the same text")
    if draft.vocabulary is not None and target.vocabulary is not None and draft.vocabulary != target.vocabulary:
        i = next(i for i, (a, b) in enumerate(zip(draft.vocabulary, target.vocabulary, strict=True)) if a != b)
        return (f"spells token {i} {draft.vocabulary[i]!r} where {against} spells it {target.vocabulary[i]!r}: "
                "a draft trace needs the same vocabulary")
    return None
