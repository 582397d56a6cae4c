"""Per-step telemetry: the ``m1_metrics.jsonl`` stream (SPEC §6).

One JSON object per step with exactly the guide's fields, in this order:
``step, prev_token, proposed_token, emitted_token, accepted, K, tau, eps_used,
psi_bytes, topk_mass, overlap_mass, ce_gap_nats``.  The last seven are those of
the step's context, so each context's tail of the line is formatted once and
reused; floats are written as the shortest text that reads back to the same
float64, and an infinite CE gap as ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import IO

from thermospec.engine import ChainChunk
from thermospec.proposer import ContextDraft

__all__ = ["FIELDS", "JsonlWriter", "context_fields", "jsonl_lines"]

FIELDS = (
    "step", "prev_token", "proposed_token", "emitted_token", "accepted",
    "K", "tau", "eps_used", "psi_bytes", "topk_mass", "overlap_mass", "ce_gap_nats",
)


def _json_float(value: float) -> str:
    return repr(value) if math.isfinite(value) else "null"


def context_fields(draft: ContextDraft) -> str:
    """The JSON text of a context's fields, from ``"K"`` to the closing brace and newline."""
    payload = draft.payload
    return (
        f'"K":{payload.K},"tau":{_json_float(payload.tau)},"eps_used":{_json_float(payload.eps)},'
        f'"psi_bytes":{draft.psi_bytes},"topk_mass":{_json_float(draft.topk_mass)},'
        f'"overlap_mass":{_json_float(draft.overlap_mass)},'
        f'"ce_gap_nats":{_json_float(draft.ce_gap_nats)}}}\n'
    )


def jsonl_lines(chunk: ChainChunk, context_text: dict[int, str]) -> str:
    """Format a chunk of steps as JSONL text.

    Parameters
    ----------
    chunk : ChainChunk
    context_text : dict
        `context_fields` of every context in the chunk.
    """
    verdict = ("false", "true")
    return "".join(
        [
            f'{{"step":{step},"prev_token":{x},"proposed_token":{y},"emitted_token":{e},'
            f'"accepted":{verdict[a]},{context_text[x]}'
            for step, x, y, e, a in zip(
                range(chunk.start, chunk.start + len(chunk)),
                chunk.prev.tolist(),
                chunk.proposed.tolist(),
                chunk.emitted.tolist(),
                chunk.accepted.tolist(),
                strict=True,
            )
        ]
    )


class JsonlWriter:
    """Streams chunks of steps to an open text file."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._text: dict[int, str] = {}

    def write(self, chunk: ChainChunk, drafts: Callable[[int], ContextDraft]) -> None:
        """Append the records of one chunk."""
        for x in set(chunk.prev.tolist()) - self._text.keys():
            self._text[x] = context_fields(drafts(x))
        self.stream.write(jsonl_lines(chunk, self._text))
