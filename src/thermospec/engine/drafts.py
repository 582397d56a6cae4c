"""Many drafts per target call (``--drafts N``): each step, N i.i.d. TSU draws and one exact verifier.

Step t at context ``x``: the TSU programmed with ψ(x) draws ``x_1 … x_N`` (each
draw reports its ``log q``, checked against F(ψ) as in M1), and the context's
verifier plan (`core.verifiers.make_plan`, built once per context and cached)
emits one token distributed exactly as ``p(. | x)``.  On the bigram chain the
emitted token is the next context; on any context source (`engine.keys`) whose
next key follows the emitted token (order-N contexts) the source says which key
comes next: `run_drafts_chains` is the one loop over a source, `run_drafts` the
bigram chain's.

Random stream layout: one uniform for ``x_0 ~ pi``, then per step ``2N + 1``
float64 uniforms: N for the draws, then the verifier's ``N + 1``
(``u_1 … u_N, u_res``), always all consumed.  With N = 1 this is M1's layout
and every verifier is M1's step, so ``--drafts 1`` is the M1 chain token for
token (tested); the run itself takes the M1 engine for N = 1.

`draft_step` and `run_drafts_reference` are the per-step reference, plain Python
over NumPy rows (about 10 to 100 µs a step), and the path of every TSU whose draws
are its own (THRML, fault-injected: `Proposer.samples_payload` False), each draw's
report checked.  `run_drafts` steps on per-context tables
(`engine.draft_tables`: the compiled kernel, or its Python fallback), built once
per context from the plan (`VerifierPlan.tables`) and the TSU's draft CDF; the
tests pin it to the reference token for token.  `run_drafts_chains` runs B chains
in lock step, chain b on its own stream, sharing plans and tables (`source_stepper`:
keys that are tokens, an order-N move table's states, or moves met on demand).

Memory: plans of at most `PLAN_CACHE_BYTES` (`plan_bytes` each) and tables of at
most ``max_table_bytes`` (default `DEFAULT_TABLE_BYTES`), both least recently used
first out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from thermospec.core.verifiers import VerifierPlan, VerifierTables, make_plan, table_layout
from thermospec.engine.chain import DEFAULT_CHUNK, ReportError
from thermospec.engine.chunks import DraftsChunk
from thermospec.engine.crafted_drafts import CraftedDrafts, craft_drafts, first_met
from thermospec.engine.draft_tables import DraftsStepper, DraftTableSource, drafts_used
from thermospec.engine.kernels import DEFAULT_TABLE_BYTES, Backend, guide_size
from thermospec.engine.keys import BigramSource, ChainRows, ContextSource, memoised_advance
from thermospec.engine.state_drafts import PsiSpec
from thermospec.targets.bigram import RowSource
from thermospec.tsu.drafts import DraftSource

__all__ = [
    "PlanSource",
    "draft_step",
    "draft_table_source",
    "fixed_context_drafts",
    "plan_source",
    "run_drafts",
    "run_drafts_chains",
    "run_drafts_reference",
    "source_stepper",
]

PlanSource = Callable[[int], VerifierPlan]
PLAN_CACHE_BYTES = 256 * 1024 * 1024
"""Memory bound of the plans kept (`plan_bytes` each); at least 16 plans are kept."""


def state_guide(V: int) -> int:
    """Guide buckets of a move table's states: a quarter of `guide_size` (their rows far apart: filling and
    fetching the bytes bound a step, not its search), as `engine.kernels.TableCache` takes."""
    return max(2, guide_size(V) // 4)


def plan_bytes(V: int, n: int) -> int:
    """Upper bound of one plan's arrays: p, q, N ratio levels, the residual CDF, and the selection's law, ratio,
    ranks and removal times (optimal)."""
    return 8 * (V + 1) * (n + 6)


def plan_source(row: RowSource, drafts: DraftSource, verifier: str, n: int) -> PlanSource:
    """Each context's verifier plan for N drafts, built on first use and kept within `PLAN_CACHE_BYTES`
    (least recently used first out)."""
    kept: OrderedDict[int, VerifierPlan] = OrderedDict()

    def plan(x: int) -> VerifierPlan:
        found = kept.get(x)
        if found is not None:
            kept.move_to_end(x)
            return found
        found = kept[x] = make_plan(verifier, row(x), drafts(x).tsu.q, n)
        if len(kept) > max(16, PLAN_CACHE_BYTES // plan_bytes(found.p.shape[0], n)):
            kept.popitem(last=False)
        return found

    return plan


def draft_step(
    x: int, drafts: DraftSource, plans: PlanSource, rng: np.random.Generator, step: int
) -> tuple[int, list[int], int | None]:
    """One step at context x: N checked TSU draws, then the plan's verification; (emitted, drafts, index)."""
    plan = plans(x)
    tsu = drafts(x).tsu
    ys: list[int] = []
    for _ in range(plan.n):
        y, log_q = tsu.draw(rng)
        with np.errstate(divide="ignore"):
            expected = float(np.log(tsu.q[y]))
        if log_q != expected or not tsu.q[y] > 0:
            raise ReportError(step, x, y, log_q, expected)
        ys.append(y)
    emitted, index = plan.step(ys, rng.random(plan.n + 1))
    return emitted, ys, index


def draft_table_source(drafts: DraftSource, plans: PlanSource) -> DraftTableSource:
    """``key -> (draft CDF, verifier tables)`` for the table-driven steps (`engine.draft_tables`).

    Only for TSUs whose draws invert their payload's CDF and report ``log F(ψ)`` by
    construction (`SimTSU`): tables cannot reproduce another TSU's draws.
    """

    def source(x: int) -> tuple[NDArray[np.float64], VerifierTables]:
        tsu = drafts(x).tsu
        if not (tsu.samples_payload and tsu.reports_exactly):
            raise ValueError(f"context {x}: its TSU's draws are its own; run it with backend='reference'")
        return tsu.cdf, plans(x).tables()

    return source


def run_drafts(
    row: RowSource,
    pi: NDArray[np.float64],
    drafts: DraftSource,
    n: int,
    verifier: str,
    steps: int,
    rng: np.random.Generator,
    plans: PlanSource | None = None,
    chunk: int = DEFAULT_CHUNK,
    backend: Backend | Literal["reference"] = "auto",
    max_table_bytes: int = DEFAULT_TABLE_BYTES,
) -> Iterator[DraftsChunk]:
    """The chain with N drafts per step, in chunks of at most `chunk` steps (layout in the module docstring).

    `backend`: ``"auto"`` (the compiled kernel when built), ``"compiled"`` or ``"python"`` step on
    per-context tables of at most `max_table_bytes`; ``"reference"`` is `run_drafts_reference`
    (for TSUs whose draws are their own).  All give the same tokens.
    """
    for (produced,) in run_drafts_chains(BigramSource(ChainRows(row, pi)), drafts, n, verifier, steps, [rng], plans,
                                         chunk, backend, max_table_bytes):
        yield produced  # one chain is the lock step of one


def run_drafts_chains(
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
    psi: PsiSpec | None = None,
    on_crafted: Callable[[CraftedDrafts], None] | None = None,
) -> Iterator[list[DraftsChunk]]:
    """B chains with N drafts per step on `source` in lock step: each yield is the same `chunk` steps of every chain.

    Chain b starts at ``source.start(rngs[b])`` on its own stream ``rngs[b]``; a step at key x is
    `draft_step` at x (its ``2N + 1`` uniforms), then the key is the source's move (on the bigram chain,
    the emitted token).  A chain given the single-chain stream is that run, token for token; the chains
    share one table cache (at most `max_table_bytes`, `source_stepper`) and the plans.  With
    ``backend="reference"``, one `draft_step` at a time (`run_drafts_reference`), chain b with its own
    TSUs ``chain_drafts[b]`` when given (a THRML TSU's draws are its sampler's state: chains do not share it).

    On a move table, with the proposer's ψ parameters `psi` (`Proposer.psi_spec`), every state's draft may be
    crafted at once (`engine.crafted_drafts.craft_drafts`): each state's tables then come from it (not from
    `drafts` and `plans`), and `on_crafted` is given it before the first chunk.
    """
    plans = plans or plan_source(source.row, drafts, verifier, n)
    if backend == "reference":
        per_chain = chain_drafts or [drafts] * len(rngs)
        runs = [run_drafts_reference(source, d, n, verifier, steps, rng, plans, chunk)
                for d, rng in zip(per_chain, rngs, strict=True)]
        yield from (list(chunks) for chunks in zip(*runs, strict=True))
        return
    _, selection = table_layout(verifier, n)
    moves = source.moves() if psi is not None and not source.keys_are_tokens else None
    crafted = None if moves is None or psi is None else craft_drafts(moves, psi, drafts, verifier, n,
                                                                      steps * len(rngs))
    if crafted is not None and on_crafted is not None:
        on_crafted(crafted)
    stepper, key_of = source_stepper(source, draft_table_source(drafts, plans), n, verifier, backend,
                                     max_table_bytes, crafted)
    keys = [source.start(rng) for rng in rngs]  # order N: a one-token context is its token and its state
    for start in range(0, steps, chunk):
        m = min(chunk, steps - start)
        out = []
        for b, rng in enumerate(rngs):
            (prev, proposed, emitted, index), keys[b] = stepper.draw_steps(rng, m, keys[b])
            out.append(DraftsChunk(start=start, prev=key_of(prev), proposed=proposed, emitted=emitted,
                                   accepted=index >= 0, drafts_used=drafts_used(index, n, selection),
                                   accepted_index=index))
        yield out


def source_stepper(source: ContextSource, tables: DraftTableSource, n: int, verifier: str, backend: Backend,
                   max_table_bytes: int = DEFAULT_TABLE_BYTES, crafted: CraftedDrafts | None = None
                   ) -> tuple[DraftsStepper, Callable[[NDArray[np.int64]], NDArray[np.int64]]]:
    """The stepper of a source's chain and the map from its keys to the source's keys.

    Keys that are tokens: the compiled chain's own next key, the emitted token.  A move table
    (`ContextSource.moves`, order N): the stepper walks its states, each state's tables its key's
    (interned when first met, so a state met maps back to its key), or, with every state `crafted` at once,
    built from the crafted draft (the states a chunk met interned in the order met, as loading them would), a
    block of states at once when the verifier allows it (`CraftedDrafts.load_blocks`).
    Otherwise the source's moves, memoised, on the Python loop.
    """
    V = source.V
    if source.keys_are_tokens:
        return DraftsStepper(V, V, n, verifier, tables, backend, max_table_bytes), _same
    moves = source.moves()
    if moves is not None and crafted is not None:
        def contexts(states: NDArray[np.int64]) -> NDArray[np.int64]:
            moves.intern(first_met(states))
            return moves.contexts(states)

        stepper = DraftsStepper(moves.states, V, n, verifier, crafted.tables, backend, max_table_bytes,
                                next_keys=moves.next.astype(np.int64), guide=state_guide(V))
        if stepper.cache is not None:
            crafted.load_blocks(stepper.cache)
        return stepper, contexts
    if moves is not None:
        def state_tables(state: int) -> tuple[NDArray[np.float64], VerifierTables]:
            return tables(moves.context(state))

        return (DraftsStepper(moves.states, V, n, verifier, state_tables, backend, max_table_bytes,
                              next_keys=moves.next.astype(np.int64), guide=state_guide(V)), moves.contexts)
    return (DraftsStepper(1 << 62, V, n, verifier, tables, backend, max_table_bytes, advance=memoised_advance(source)),
            _same)


def _same(keys: NDArray[np.int64]) -> NDArray[np.int64]:
    return keys


def run_drafts_reference(
    source: ContextSource,
    drafts: DraftSource,
    n: int,
    verifier: str,
    steps: int,
    rng: np.random.Generator,
    plans: PlanSource | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> Iterator[DraftsChunk]:
    """The N-draft run on `source`, one `draft_step` at a time: each draw the TSU's own, its report checked."""
    plans = plans or plan_source(source.row, drafts, verifier, n)
    advance = memoised_advance(source)
    x = source.start(rng)
    for start in range(0, steps, chunk):
        m = min(chunk, steps - start)
        prev, proposed, emitted, index, used = (np.empty(m, dtype=np.int64) for _ in range(5))
        for i in range(m):
            e, ys, accepted = draft_step(x, drafts, plans, rng, start + i)
            prev[i], proposed[i], emitted[i] = x, ys[0], e
            index[i] = -1 if accepted is None else accepted
            used[i] = plans(x).draws_used(accepted)
            x = advance(x, e)
        yield DraftsChunk(start=start, prev=prev, proposed=proposed, emitted=emitted, accepted=index >= 0,
                          drafts_used=used, accepted_index=index)


def fixed_context_drafts(x: int, drafts: DraftSource, plans: PlanSource, n: int, rng: np.random.Generator
                         ) -> DraftsChunk:
    """`n` independent N-draft steps from one fixed context x (the emitted token does not feed back).

    On the tables (one key whose next key is always itself: the next-key rule) when x's TSU
    samples its payload, else one `draft_step` at a time; the same ``2N + 1`` uniforms per step.
    """
    plan = plans(x)
    tsu = drafts(x).tsu
    if tsu.samples_payload and tsu.reports_exactly:
        source = draft_table_source(drafts, plans)
        V = int(tsu.q.shape[0])
        stepper = DraftsStepper(1, V, plan.n, plan.name, lambda _: source(x), next_keys=np.zeros(V, dtype=np.int64))
        (_, proposed, emitted, index), _ = stepper.draw_steps(rng, n, 0)
        _, selection = table_layout(plan.name, plan.n)
        used = drafts_used(index, plan.n, selection)
    else:
        emitted = np.empty(n, dtype=np.int64)
        proposed = np.empty(n, dtype=np.int64)
        index = np.empty(n, dtype=np.int64)
        used = np.empty(n, dtype=np.int64)
        for i in range(n):
            e, ys, accepted = draft_step(x, drafts, plans, rng, i)
            emitted[i], proposed[i] = e, ys[0]
            index[i] = -1 if accepted is None else accepted
            used[i] = plan.draws_used(accepted)
    return DraftsChunk(start=0, prev=np.full(n, x, dtype=np.int64), proposed=proposed, emitted=emitted,
                       accepted=index >= 0, drafts_used=used, accepted_index=index)
