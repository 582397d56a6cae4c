"""The run engine: the bigram chain drafted by the TSU and corrected by the target.

At step t the context is the previous emitted token ``x``; the TSU programmed
with ψ(x) drafts ``y ~ F(ψ(x))`` and `accept_correct_step` emits a token that
becomes the next context.  The chain starts from ``x_0 ~ pi``.

Random stream layout, shared by every path so that the same seed gives the same
tokens: one uniform for ``x_0``, then exactly three float64 uniforms per step,
``(u_draft, u_accept, u_residual)``, the residual uniform being consumed even
when the draft is accepted.  `run_chain_reference` is the plain per-step
implementation (SimTSU.draw, then accept_correct_step); `run_chain` is the fast
one, driven by per-context tables built once; the tests pin one to the other.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from thermospec.acceptance import accept_correct_step, acceptance_ratio, residual_cdf
from thermospec.proposer import ContextDraft
from thermospec.sampling import inverse_cdf, last_positive

__all__ = [
    "ChainChunk",
    "ContextTables",
    "context_tables",
    "fixed_context_draws",
    "run_chain",
    "run_chain_reference",
    "start_token",
]

DEFAULT_CHUNK = 1 << 16

DraftSource = Callable[[int], ContextDraft]
RowSource = Callable[[int], NDArray[np.float64]]


@dataclass(frozen=True, eq=False)
class ChainChunk:
    """Consecutive steps of a run, as parallel arrays.

    Attributes
    ----------
    start : int
        Index of the first step.
    prev, proposed, emitted : ndarray of int64, shape (n,)
        Context, draft and emitted token of each step.
    accepted : ndarray of bool, shape (n,)
        Whether each draft was accepted.
    """

    start: int
    prev: NDArray[np.int64]
    proposed: NDArray[np.int64]
    emitted: NDArray[np.int64]
    accepted: NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.prev.shape[0])


@dataclass(frozen=True, eq=False)
class ContextTables:
    """Per-context look-up tables: the whole per-step work becomes two searches.

    Attributes
    ----------
    draft_cdf : ndarray of float64
        Cumulative F(ψ), as `SimTSU` inverts it.
    ratio : ndarray of float64
        ``p / q``: a draft y is accepted when ``u_accept < ratio[y]``.
    residual_cdf : ndarray of float64
        Cumulative residual ``max(p - q, 0)`` (or p where the residual is all 0).
    """

    draft_cdf: NDArray[np.float64]
    ratio: NDArray[np.float64]
    residual_cdf: NDArray[np.float64]


def context_tables(p: NDArray[np.float64], draft: ContextDraft) -> ContextTables:
    """Build the tables of one context from its target row and its draft."""
    q = draft.tsu.q
    return ContextTables(
        draft_cdf=draft.tsu.cdf, ratio=acceptance_ratio(p, q), residual_cdf=residual_cdf(p, q)
    )


def start_token(pi: NDArray[np.float64], rng: np.random.Generator) -> int:
    """Draw ``x_0 ~ pi`` (one uniform)."""
    return int(inverse_cdf(np.cumsum(pi), rng.random(1))[0])


def fixed_context_draws(
    p: NDArray[np.float64], draft: ContextDraft, n: int, rng: np.random.Generator
) -> ChainChunk:
    """`n` independent draft-and-correct steps from one fixed context, vectorised.

    Uses the same three-uniforms-per-step layout as the chain, so it emits what
    `n` calls of ``SimTSU.draw`` + `accept_correct_step` would.
    """
    tables = context_tables(p, draft)
    u = rng.random((n, 3))
    proposed = inverse_cdf(tables.draft_cdf, u[:, 0])
    accepted = u[:, 1] < tables.ratio[proposed]
    emitted = proposed.copy()
    rejected = ~accepted
    emitted[rejected] = inverse_cdf(tables.residual_cdf, u[rejected, 2])
    prev = np.full(n, draft.context, dtype=np.int64)
    return ChainChunk(start=0, prev=prev, proposed=proposed, emitted=emitted, accepted=accepted)


_LoopTable = tuple[list[float], float, int, list[float], list[float], float, int]


def _loop_table(tables: ContextTables) -> _LoopTable:
    """The tables as Python lists: `bisect` on a list beats a NumPy call per step."""
    dc, rc = tables.draft_cdf, tables.residual_cdf
    return (
        dc.tolist(), float(dc[-1]), last_positive(dc),
        tables.ratio.tolist(),
        rc.tolist(), float(rc[-1]), last_positive(rc),
    )


def run_chain(
    row: RowSource,
    pi: NDArray[np.float64],
    drafts: DraftSource,
    steps: int,
    rng: np.random.Generator,
    chunk: int = DEFAULT_CHUNK,
) -> Iterator[ChainChunk]:
    """Run the speculative bigram chain for `steps` steps, yielding chunks of steps.

    Parameters
    ----------
    row : callable
        ``row(x)`` is the target ``p(. | x)``.
    pi : ndarray of float64, shape (V,)
        Start distribution.
    drafts : callable
        ``drafts(x)`` gives the (cached) `ContextDraft` of context x.
    steps : int
        Number of emitted tokens.
    rng : numpy.random.Generator
        The chain's random stream.
    chunk : int
        Steps per yielded chunk; memory stays flat in `steps`.

    Yields
    ------
    ChainChunk
    """
    x = start_token(pi, rng)
    tables: dict[int, _LoopTable] = {}
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        uniforms = rng.random((n, 3)).tolist()
        prev = [0] * n
        proposed = [0] * n
        emitted = [0] * n
        accepted = [False] * n
        for t, (u_draft, u_accept, u_residual) in enumerate(uniforms):
            table = tables.get(x)
            if table is None:
                table = tables[x] = _loop_table(context_tables(row(x), drafts(x)))
            draft_cdf, draft_total, draft_last, ratio, res_cdf, res_total, res_last = table
            y = bisect_right(draft_cdf, u_draft * draft_total)
            if y > draft_last:
                y = draft_last
            prev[t] = x
            proposed[t] = y
            if u_accept < ratio[y]:
                accepted[t] = True
                x = y
            else:
                x = bisect_right(res_cdf, u_residual * res_total)
                if x > res_last:
                    x = res_last
            emitted[t] = x
        yield ChainChunk(
            start=done,
            prev=np.array(prev, dtype=np.int64),
            proposed=np.array(proposed, dtype=np.int64),
            emitted=np.array(emitted, dtype=np.int64),
            accepted=np.array(accepted, dtype=np.bool_),
        )
        done += n


def run_chain_reference(
    row: RowSource,
    pi: NDArray[np.float64],
    drafts: DraftSource,
    steps: int,
    rng: np.random.Generator,
) -> ChainChunk:
    """The chain written step by step as in the papers: the tests pin `run_chain` to it.

    Each step: the TSU draws ``y`` and reports ``log q(y)``; the host checks the
    report against F(ψ), then calls `accept_correct_step` with the q the draft
    really came from.
    """
    x = start_token(pi, rng)
    prev, proposed, emitted, accepted = [], [], [], []
    for _ in range(steps):
        tsu = drafts(x).tsu
        y, log_q = tsu.draw(rng)
        if log_q != float(np.log(tsu.q[y])):
            raise ValueError(f"TSU reported log q = {log_q!r} for token {y}; F(ψ) says {np.log(tsu.q[y])!r}")
        e, a = accept_correct_step(row(x), tsu.q, y, rng)
        prev.append(x)
        proposed.append(y)
        emitted.append(e)
        accepted.append(a)
        x = e
    return ChainChunk(
        start=0,
        prev=np.array(prev, dtype=np.int64),
        proposed=np.array(proposed, dtype=np.int64),
        emitted=np.array(emitted, dtype=np.int64),
        accepted=np.array(accepted, dtype=np.bool_),
    )
