"""N drafts per target call on any context source (`engine.keys`): order-N contexts and a trace's positions.

`engine.drafts` steps the bigram chain, whose next key is the emitted token.  Here
the key of a step is the source's (an order-N context id, a trace position), the
step at a key is the very N-draft step of `engine.drafts` (the key's verifier
plan, its ``2N + 1`` uniforms), and the next key is the source's move:

- order N: ``x0 ~ pi`` (one uniform), then ``next_context(key, emitted)``: the
  loop of `engine.drafts.run_drafts_chains` over the source (on the target's move
  table, `ContextSource.moves`, the compiled stepper runs over its states with the
  table as next-key table, a state's tables its context's, loaded when first met,
  or, given the proposer's ψ parameters, built from every state's ψ crafted at once
  (`engine.crafted_drafts`); without one, too many contexts, the Python loop with
  the moves memoised), each chunk given the tokens emitted before its steps;
- trace: position 0 (no uniform), then ``t + 1`` mod T, whatever was emitted
  (teacher-forced).  Since every step's position is known in advance, a block of
  steps is stepped position by position (as `engine.positions` does): each
  position's tables are built once per block and its steps run on a one-key
  stepper, so a large V is paid once per position and block, not per step (a
  position with few steps in a block steps on its plan with the TSU's own draws,
  on the same uniforms: the tables' setup would cost more);
- a TSU whose draws are its own (THRML, fault-injected): `run_keyed_drafts_reference`,
  one `draft_step` at a time, each draw's report checked.

Every path consumes the stream as the per-step reference does, so they emit the
same tokens (tested); at N = 1 the step is M1's and the stream layout the
single-draft run's, so ``--drafts 1`` here is that source's single-draft run,
token for token (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.core.verifiers import table_layout
from thermospec.engine.chain import DEFAULT_CHUNK
from thermospec.engine.chunks import DraftsChunk
from thermospec.engine.crafted_drafts import CraftedDrafts
from thermospec.engine.draft_tables import DraftsStepper, drafts_used
from thermospec.engine.drafts import PlanSource, draft_step, draft_table_source, plan_source, run_drafts_chains
from thermospec.engine.kernels import DEFAULT_TABLE_BYTES, Backend
from thermospec.engine.keys import ContextSource, PositionSource
from thermospec.engine.state_drafts import PsiSpec
from thermospec.tsu.drafts import DraftSource

__all__ = ["KeyedDraftsChunk", "run_keyed_drafts_chains", "run_keyed_drafts_reference"]

BLOCK_UNIFORMS = 1 << 23
"""Most uniforms a trace block draws at once (64 MiB): bounds a block's steps at large N."""
STEPS_PER_POSITION = 1024
"""A trace block holds about this many steps of each position (its tables are built once per block)."""


@dataclass(frozen=True, eq=False)
class KeyedDraftsChunk(DraftsChunk):
    """N-draft steps on a context source: `prev` is each step's key (context id or position).

    Attributes
    ----------
    last_token : ndarray of int64, shape (n,)
        The token emitted before each step (order N: ``x0`` before the first); -1 on a trace
        (its previous token is the trace's own, not the run's).
    """

    last_token: NDArray[np.int64]

    @property
    def context(self) -> NDArray[np.int64]:
        """Each step's key (an order-N context id)."""
        return self.prev

    @property
    def position(self) -> NDArray[np.int64]:
        """Each step's key (a trace position)."""
        return self.prev


def _chunk(start: int, keys: NDArray[np.int64], proposed: NDArray[np.int64], emitted: NDArray[np.int64],
           index: NDArray[np.int64], used: NDArray[np.int64], last: NDArray[np.int64]) -> KeyedDraftsChunk:
    return KeyedDraftsChunk(start=start, prev=keys, proposed=proposed, emitted=emitted, accepted=index >= 0,
                            drafts_used=used, accepted_index=index, last_token=last)


def _last_tokens(first: int, emitted: NDArray[np.int64], token_free: bool) -> NDArray[np.int64]:
    """The token before each step: `first`, then the chunk's emitted tokens but the last (-1 on a trace)."""
    if token_free:
        return np.full(emitted.shape[0], -1, dtype=np.int64)
    last = np.empty_like(emitted)
    if last.shape[0]:
        last[0] = first
        last[1:] = emitted[:-1]
    return last


def run_keyed_drafts_chains(
    source: ContextSource,
    drafts: DraftSource,
    n: int,
    verifier: str,
    steps: int,
    rngs: list[np.random.Generator],
    plans: PlanSource | None = None,
    chunk: int = DEFAULT_CHUNK,
    backend: Backend | Literal["reference"] = "auto",
    max_table_bytes: int = DEFAULT_TABLE_BYTES,
    chain_drafts: list[DraftSource] | None = None,
    few_steps: int | None = None,
    psi: PsiSpec | None = None,
    on_crafted: Callable[[CraftedDrafts], None] | None = None,
) -> Iterator[list[KeyedDraftsChunk]]:
    """B chains with N drafts per step on `source`, in lock step: each yield is the same steps of every chain.

    Chain b draws from ``rngs[b]`` (and, with `chain_drafts`, from its own TSUs ``chain_drafts[b]``: a
    THRML chain's sampler); `backend` as `engine.drafts.run_drafts` (``"reference"``: every draw the TSU's
    own).  A trace's chunks are its blocks (module docstring), at least `chunk` steps; a position with fewer
    than `few_steps` steps in a block (default ``max(16, V // 256)``) steps on its plan, not on tables.
    Every other path is `engine.drafts.run_drafts_chains`, each chunk with the tokens before its steps (with
    `psi` and `on_crafted` as there: every state of a move table crafted at once).
    """
    plans = plans or plan_source(source.row, drafts, verifier, n)
    if backend != "reference" and isinstance(source, PositionSource):
        runs = [_position_drafts(source, drafts, plans, n, verifier, steps, rng, chunk, backend, few_steps)
                for rng in rngs]
        yield from (list(chunks) for chunks in zip(*runs, strict=True))
        return
    last = [0] * len(rngs)  # each chain's last emitted token; before its first step, its start key (x0)
    for chunks in run_drafts_chains(source, drafts, n, verifier, steps, rngs, plans, chunk, backend,
                                    max_table_bytes, chain_drafts, psi, on_crafted):
        out = []
        for b, part in enumerate(chunks):
            first = int(part.prev[0]) if part.start == 0 else last[b]
            out.append(_chunk(part.start, part.prev, part.proposed, part.emitted, part.accepted_index,
                              part.drafts_used, _last_tokens(first, part.emitted, source.token_free)))
            last[b] = int(part.emitted[-1])
        yield out


def _position_drafts(source: PositionSource, drafts: DraftSource, plans: PlanSource, n: int, verifier: str,
                     steps: int, rng: np.random.Generator, chunk: int, backend: Backend,
                     few_steps: int | None) -> Iterator[KeyedDraftsChunk]:
    """One teacher-forced chain, block by block, each block position by position (module docstring)."""
    tables = draft_table_source(drafts, plans)
    _, selection = table_layout(verifier, n)
    T, V, width = source.target.positions, source.V, 2 * n + 1
    few = max(16, V // 256) if few_steps is None else few_steps
    block = max(1, min(max(chunk, T * STEPS_PER_POSITION), BLOCK_UNIFORMS // width))
    self_loop = np.zeros(V, dtype=np.int64)  # a one-key stepper: its next key is itself
    for start in range(0, steps, block):
        m = min(block, steps - start)
        u = rng.random((m, width))
        keys = (start + np.arange(m, dtype=np.int64)) % T
        out = [np.empty(m, dtype=np.int64) for _ in range(3)]
        proposed, emitted, index = out
        for i in range(min(m, T)):
            t = int(keys[i])
            at = np.arange(i, m, T)
            if at.shape[0] < few:  # too few steps to pay for the position's tables: plan steps on these uniforms
                for j in at.tolist():
                    e, ys, accepted = draft_step(t, drafts, plans, cast(np.random.Generator, _Preset(u[j])),
                                                 start + j)
                    proposed[j], emitted[j], index[j] = ys[0], e, -1 if accepted is None else accepted
                continue
            found = tables(t)
            stepper = DraftsStepper(1, V, n, verifier, lambda _, found=found: found,  # type: ignore[misc]
                                    backend, next_keys=self_loop)
            (_, proposed[at], emitted[at], index[at]), _ = stepper.steps(u[at], 0)
        yield _chunk(start, keys, proposed, emitted, index, drafts_used(index, n, selection),
                     _last_tokens(-1, emitted, True))


class _Preset:
    """A step's given uniforms through ``random(n)``, so `draft_step` runs on a block's uniforms."""

    def __init__(self, values: NDArray[np.float64]) -> None:
        self.values, self.at = values, 0

    def random(self, n: int) -> NDArray[np.float64]:
        out = self.values[self.at : self.at + n]
        self.at += n
        return out


def run_keyed_drafts_reference(
    source: ContextSource,
    drafts: DraftSource,
    n: int,
    verifier: str,
    steps: int,
    rng: np.random.Generator,
    plans: PlanSource | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> Iterator[KeyedDraftsChunk]:
    """The N-draft run on `source`, one `draft_step` at a time: each draw the TSU's own, its report checked."""
    for (part,) in run_keyed_drafts_chains(source, drafts, n, verifier, steps, [rng], plans, chunk, "reference"):
        yield part
