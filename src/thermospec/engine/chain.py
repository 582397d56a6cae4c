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

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from thermospec.core.acceptance import accept_correct_step, acceptance_ratio, residual_cdf
from thermospec.core.sampling import inverse_cdf
from thermospec.engine.chunks import ChainChunk
from thermospec.engine.compact import COMPACT_TABLE_BYTES, CompactStepper, SparseRows, compact_source
from thermospec.engine.kernels import (
    DEFAULT_TABLE_BYTES,
    Backend,
    ChainStepper,
    StepCounts,
    TableSource,
)
from thermospec.engine.step import GuidedCdf, StepArrays, vector_context_steps
from thermospec.engine.tally import RunTally
from thermospec.targets.bigram import RowSource
from thermospec.tsu.drafts import ContextDraft, DraftSource

__all__ = [
    "ContextTables",
    "ReportError",
    "ReportVerifier",
    "context_tables",
    "fixed_context_chunks",
    "fixed_context_draws",
    "run_chain",
    "run_chain_reference",
    "start_token",
]


DEFAULT_CHUNK = 1 << 16
FIXED_CONTEXT_CHUNK = 1 << 16  # steps per chunk of fixed-context draws: their uniforms stay in cache


_Tables = TypeVar("_Tables")


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


class ReportError(RuntimeError):
    """A TSU reported a ``log q`` that is not ``log F(ψ)`` at its draw: the run is refused.

    Attributes
    ----------
    step, context, token : int
        Where the bad report happened (`step` counts from 0 within the run or the check).
    reported, expected : float
        The TSU's ``log q`` and the host's ``log F(ψ)[token]``.
    """

    def __init__(self, step: int, context: int, token: int, reported: float, expected: float) -> None:
        self.step, self.context, self.token = step, context, token
        self.reported, self.expected = reported, expected
        super().__init__(
            f"TSU report refused at step {step}: token {token} (context {context}) was reported with "
            f"log q = {reported!r} but F(ψ) gives {expected!r}"
        )


class ReportVerifier:
    """The host's consistency check of every draw's reported ``log q`` against F(ψ).

    The host knows F(ψ) exactly, so any report that differs from ``log F(ψ)[y]``
    (or a draw of a token F(ψ) gives probability 0) is refused with a `ReportError`
    naming the first offending step.  A simulated TSU's report is a function of its
    context and token, so each context's table of bad tokens is built once and a
    chunk costs one gather.  When every context a chunk can visit is known to it
    (`watched`), a chunk with no suspect context among them costs nothing.
    """

    def __init__(self, drafts: DraftSource) -> None:
        self._drafts = drafts
        self._bad: dict[int, NDArray[np.bool_]] = {}
        self._watching = False
        self._suspects: set[int] = set()

    def watched(self, source: Callable[[int], _Tables]) -> Callable[[int], _Tables]:
        """`source`, noting each context it builds tables for.

        Give it to the stepper that runs the chunks to `verify`: a context is visited only
        once its tables are built, so `verify` then skips every chunk while none of the
        contexts built so far can be misreported (a `SimTSU` never is).
        """
        self._watching = True

        def noted(x: int) -> _Tables:
            if self._bad_tokens(x).any():
                self._suspects.add(x)
            return source(x)

        return noted

    @property
    def quiet(self) -> bool:
        """Whether no chunk can need a check: every context built so far is noted (`watched`) and none is suspect."""
        return self._watching and not self._suspects

    def _bad_tokens(self, x: int) -> NDArray[np.bool_]:
        found = self._bad.get(x)
        if found is None and self._drafts(x).tsu.reports_exactly:
            # SimTSU's report is log F(ψ)[y] by construction (the expression below, evaluated by the
            # TSU itself): nothing to compare, and no O(V) work per context at large V.
            found = self._bad[x] = np.zeros(0, dtype=np.bool_)
        if found is None:
            tsu = self._drafts(x).tsu
            tokens = np.arange(tsu.q.shape[0], dtype=np.int64)
            with np.errstate(divide="ignore"):
                expected = np.log(tsu.q)
            found = (tsu.report_log_q(tokens) != expected) | (tsu.q <= 0)
            # A clean context keeps an empty array, not V flags: memory stays small at large V.
            found = self._bad[x] = found if found.any() else np.zeros(0, dtype=np.bool_)
        return found

    def verify(self, chunk: ChainChunk) -> None:
        """Raise `ReportError` at the first step of `chunk` whose draft was misreported."""
        if self.quiet:
            return
        contexts = np.flatnonzero(np.bincount(chunk.prev)).tolist() if len(chunk) else []
        suspects = [x for x in contexts if self._bad_tokens(x).any()]
        if not suspects:
            return
        bad = np.zeros(len(chunk), dtype=np.bool_)
        for x in suspects:
            at = chunk.prev == x
            bad[at] = self._bad[x][chunk.proposed[at]]
        hits = np.flatnonzero(bad)
        if hits.size:
            i = int(hits[0])
            x, y = int(chunk.prev[i]), int(chunk.proposed[i])
            tsu = self._drafts(x).tsu
            reported = float(tsu.report_log_q(np.array([y], dtype=np.int64))[0])
            with np.errstate(divide="ignore"):
                expected = float(np.log(tsu.q[y]))
            raise ReportError(chunk.start + i, x, y, reported, expected)


def start_token(pi: NDArray[np.float64], rng: np.random.Generator) -> int:
    """Draw ``x_0 ~ pi`` (one uniform)."""
    return int(inverse_cdf(np.cumsum(pi), rng.random(1))[0])


def fixed_context_chunks(
    p: NDArray[np.float64], draft: ContextDraft, n: int, rng: np.random.Generator, chunk: int = FIXED_CONTEXT_CHUNK
) -> Iterator[ChainChunk]:
    """`n` independent draft-and-correct steps from one fixed context, in chunks of at most `chunk` steps.

    Three uniforms per step, drawn chunk by chunk in the order of one ``rng.random((n, 3))`` (the
    chain's layout), so the steps are what `n` calls of ``SimTSU.draw`` + `accept_correct_step`
    would give, whatever `chunk`.  Each chunk is checked against the TSU's reports before it is
    yielded (`ReportError` names the step counted from 0 over all `n`); its `start` is its first step.
    """
    tables = context_tables(p, draft)
    draft_cdf, residual = GuidedCdf(tables.draft_cdf), GuidedCdf(tables.residual_cdf)
    verifier = ReportVerifier(lambda _: draft)
    verifier.watched(lambda x: x)(draft.context)  # a TSU that reports exactly costs no check per chunk
    buffer = np.empty((min(chunk, n), 3), dtype=np.float64)
    for start in range(0, n, chunk):
        u = buffer[: min(chunk, n - start)]
        rng.random(out=u)
        proposed, emitted, accepted = vector_context_steps(draft_cdf, tables.ratio, residual, u)
        prev = np.full(u.shape[0], draft.context, dtype=np.int64)
        produced = ChainChunk(start=start, prev=prev, proposed=proposed, emitted=emitted, accepted=accepted)
        verifier.verify(produced)
        yield produced


def fixed_context_draws(
    p: NDArray[np.float64], draft: ContextDraft, n: int, rng: np.random.Generator
) -> ChainChunk:
    """`n` independent draft-and-correct steps from one fixed context, vectorised (`fixed_context_chunks` in one chunk).

    Uses the same three-uniforms-per-step layout as the chain, so it emits what
    `n` calls of ``SimTSU.draw`` + `accept_correct_step` would.
    """
    parts = list(fixed_context_chunks(p, draft, n, rng))
    if len(parts) == 1:
        return parts[0]
    empty = np.zeros(0, dtype=np.int64)
    return ChainChunk(
        start=0,
        prev=np.concatenate([c.prev for c in parts] or [empty]),
        proposed=np.concatenate([c.proposed for c in parts] or [empty]),
        emitted=np.concatenate([c.emitted for c in parts] or [empty]),
        accepted=np.concatenate([c.accepted for c in parts] or [empty.astype(np.bool_)]),
    )


def table_source(row: RowSource, drafts: DraftSource) -> TableSource:
    """``(draft_cdf, ratio, residual_cdf)`` of a context, as the steppers of `thermospec.engine.kernels` take them."""

    def source(x: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        tables = context_tables(row(x), drafts(x))
        return tables.draft_cdf, tables.ratio, tables.residual_cdf

    return source


class Stepper(Protocol):
    """What `run_chain` steps on: the compiled or fallback dense stepper (`ChainStepper`), or the compact one."""

    @property
    def counts_in_kernel(self) -> bool:
        """Whether `draw_steps` adds each step to the counts it is given (else the run counts each chunk)."""
        ...

    def preload_for(self, steps: int) -> bool:
        """Build every context's tables first when `steps` pays for it; whether it may then keep counts only."""
        ...

    def draw_steps(self, rng: np.random.Generator, n: int, x: int, counts: StepCounts | None = None,
                   record: bool = True) -> tuple[StepArrays, int]:
        """Run `n` steps from context `x` on the uniforms ``rng.random((n, 3))``; the arrays and the last context."""
        ...


def run_chain(
    row: RowSource,
    pi: NDArray[np.float64],
    drafts: DraftSource,
    steps: int,
    rng: np.random.Generator,
    chunk: int = DEFAULT_CHUNK,
    backend: Backend = "auto",
    max_table_bytes: int | None = None,
    sparse: SparseRows | None = None,
    tally: RunTally | None = None,
    record: bool = True,
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
    backend : {"auto", "compiled", "python"}
        The stepper of `thermospec.engine.kernels`: the compiled kernel when built
        ("auto"), or the pure-Python fallback; both emit the same tokens.
    max_table_bytes : int, optional
        Memory bound of the per-context table cache (least recently used evicted);
        default `DEFAULT_TABLE_BYTES` for dense tables, `COMPACT_TABLE_BYTES` for compact ones.
    sparse : SparseRows, optional
        The target's rows by their supports: the steppers then run on compact
        tables of O(K + s) entries per context (`thermospec.engine.compact`), never
        O(V), and emit the same tokens as the dense tables.  Only for TSUs that
        sample F(ψ) of their payload (not fault-injected ones).
    tally : RunTally, optional
        Counts to which every chunk is added before it is yielded (by the compiled
        kernel as it steps, or with `RunTally.update`): the caller must not add the
        chunks again.  A chunk refused by the report check is not counted.
    record : bool
        False (with `tally`): the caller reads only the counts and each chunk's length (a run
        without telemetry).  When the compiled kernel can hold every context's tables and the run
        is long enough to pay for building them all (`PRELOAD_STEPS` per context) and no TSU needs
        its reports checked, it builds them first and then keeps nothing but the counts (its plain
        loop): the chunks' arrays are then `unrecorded` (every entry -1), and the chunks hold at
        least `UNRECORDED_CHUNK` steps (no memory, fewer round trips).  Otherwise the chunks are
        recorded as usual.

    Yields
    ------
    ChainChunk
    """
    x = start_token(pi, rng)
    V = int(pi.shape[0])
    verifier = ReportVerifier(drafts)
    stepper: Stepper
    if sparse is None:
        stepper = ChainStepper(V, verifier.watched(table_source(row, drafts)), backend,
                               max_table_bytes or DEFAULT_TABLE_BYTES)
    else:
        source = verifier.watched(sparse.tables or compact_source(sparse.support, drafts))
        stepper = CompactStepper(V, source, sparse.max_ids, sparse.max_support, backend,
                                 max_table_bytes or COMPACT_TABLE_BYTES)
    counts: StepCounts | None = None
    if tally is not None and stepper.counts_in_kernel:  # the kernel counts as it steps
        counts = (np.zeros(1, dtype=np.int64), tally.context_counts, tally.emitted_counts, tally.transitions)
    # Counts only: every table built first (its TSU noted by `verifier`), so no later chunk can meet a TSU
    # whose reports need checking and the chunks need no arrays.
    keep = record or counts is None or not (stepper.preload_for(steps) and verifier.quiet)
    if not keep:
        chunk = max(chunk, UNRECORDED_CHUNK)
    done = 0
    while done < steps:
        n = min(chunk, steps - done)  # the same uniforms, in the same order, as rng.random((n, 3))
        (prev, proposed, emitted, accepted), x = stepper.draw_steps(rng, n, x, counts, record=keep)
        produced = ChainChunk(start=done, prev=prev, proposed=proposed, emitted=emitted, accepted=accepted)
        if tally is not None:
            if counts is None:
                tally.update(produced)
            else:
                tally.steps += n
                tally.accepted += int(counts[0][0])
                counts[0][0] = 0
        try:
            verifier.verify(produced)  # before the chunk leaves the engine: no bad step is ever written
        except ReportError:
            if tally is not None:
                _uncount(tally, produced)
            raise
        yield produced
        done += n


UNRECORDED_CHUNK = 1 << 20
"""Least steps per chunk when nothing is recorded: a chunk's round trip (~0.1 ms) is then ~1 % of its
stepping, and a run still stops within ~20 ms of a signal."""




def _uncount(tally: RunTally, chunk: ChainChunk) -> None:
    """Take a chunk back out of `tally` (the inverse of `RunTally.update`)."""
    V = tally.vocab_size
    tally.steps -= len(chunk)
    tally.accepted -= int(np.count_nonzero(chunk.accepted))
    tally.context_counts -= np.bincount(chunk.prev, minlength=V)
    tally.emitted_counts -= np.bincount(chunk.emitted, minlength=V)
    if tally.transitions is not None:
        tally.transitions -= np.bincount(chunk.prev * V + chunk.emitted, minlength=V * V)


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
    for step in range(steps):
        tsu = drafts(x).tsu
        y, log_q = tsu.draw(rng)
        with np.errstate(divide="ignore"):
            expected = float(np.log(tsu.q[y]))
        if log_q != expected or not tsu.q[y] > 0:
            raise ReportError(step, x, y, log_q, expected)
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


def dense_matrices(row: RowSource, drafts: DraftSource, V: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The target ``P`` and the drafts' ``Q = F(ψ)`` as ``V x V`` matrices, one context per row (small V only)."""
    return np.stack([row(x) for x in range(V)]), np.stack([drafts(x).tsu.q for x in range(V)])
