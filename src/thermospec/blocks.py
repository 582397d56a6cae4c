"""γ-token speculative blocks (Leviathan et al. 2023, Algorithm 1) on the bigram chain.

A block starts at context ``x`` (the last emitted token).  The TSU drafts γ
tokens autoregressively: draft ``y_1`` from ψ(x), ``y_2`` from ψ(y_1), ...,
``y_γ`` from ψ(y_{γ-1}): each drafted token is the context of the next draft.
One target call then verifies the block: drafts are accepted in order with
probability ``min(1, p(y_i | c_i) / q(y_i | c_i))`` (``c_1 = x``,
``c_i = y_{i-1}``); at the first rejection a token is drawn from that
position's residual ``max(p - q, 0)`` and the block ends; if all γ drafts are
accepted, one bonus token is drawn from ``p(. | y_γ)``.  A block thus emits
``L + 1`` tokens, ``L`` the accepted length, and every emitted token is
distributed as ``p(. | previous token)``: the output is exactly the bigram chain.

Random stream layout (fixed; `run_blocks` and `run_blocks_reference` share it):
one uniform for ``x_0 ~ pi`` (`engine.start_token`), then exactly ``2γ + 1``
float64 uniforms per block, ``(u_draft_1 .. u_draft_γ, u_accept_1 .. u_accept_γ,
u_final)``, all consumed whatever the accepted length; ``u_final`` draws the
residual token on a rejection or the bonus token otherwise.  Tokens are drawn by
`sampling.inverse_cdf`, and a draft is accepted iff ``u_accept < p/q``
(strict), exactly as in the single-draft engine.

Expected accepted length along the chain (`block_expectation`).  With
``M[c, y] = min(p(y|c), q(y|c))`` (the probability that a draft from context
``c`` is ``y`` *and* is accepted) and ``R = P - M = max(P - Q, 0)`` (rejected
at ``c``, residual token ``y``), the probability that a block started at ``x``
accepts its first ``i`` drafts is ``(M^i 1)[x]``: the drafted contexts are the
accepted tokens themselves, so this is a product along the chain, not
``alpha^i``.  The block-start contexts form a Markov chain with kernel
``B = sum_{i<γ} M^i R + M^γ P`` (the last emitted token of a block started at
x); its stationary law ``rho`` (``rho B = rho``, by lazy power iteration with
vector-matrix products only, started from pi) weights the blocks.  Then
``E[L] = sum_{i=1..γ} rho M^i 1`` and the per-position acceptance rate is
``rho M^i 1 / rho M^{i-1} 1``.  The i.i.d. formula ``(1 - a^{γ+1}) / (1 - a)``
with ``a`` the pi-mean overlap is reported beside it for contrast.

Speed-up model: one target call per block, γ TSU drafts per block, each costing
``c`` target calls (``--cost-ratio c``): speed-up over plain decoding
``= tokens per target call / (γ c + 1)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.acceptance import accept_correct_step
from thermospec.compact import CompactTables, SparseRows, compact_lists, compact_source, first_above
from thermospec.engine import context_tables, start_token
from thermospec.proposer import ContextDraft
from thermospec.sampling import inverse_cdf, last_positive
from thermospec.statistics import pooled_chi2

__all__ = [
    "BLOCKS_FILE",
    "MAX_GAMMA",
    "BlockChunk",
    "BlockExpectation",
    "BlockTally",
    "block_expectation",
    "block_kernel_dense_limit",
    "block_transitions",
    "context_transition_counts",
    "expected_tokens_iid",
    "fixed_context_blocks",
    "modelled_speedup",
    "run_block_checks",
    "run_blocks",
    "run_blocks_reference",
    "summarise_blocks",
    "transition_chi2",
]

BLOCKS_FILE = "m1_blocks.jsonl"
DEFAULT_BLOCK_CHUNK = 1 << 13
TABLE_CACHE_BYTES = 256 * 1024 * 1024
LIST_TABLE_MAX_V = 4096
EXPECTATION_MAX_V = 4096
MAX_GAMMA = 1024

DraftSource = Callable[[int], ContextDraft]
RowSource = Callable[[int], NDArray[np.float64]]


def block_kernel_dense_limit() -> int:
    """Largest V for which `block_expectation` builds its dense V x V matrices."""
    return EXPECTATION_MAX_V


@dataclass(frozen=True, eq=False)
class BlockChunk:
    """Consecutive blocks of a run, as parallel arrays.

    Attributes
    ----------
    start : int
        Index of the first block.
    first_step : ndarray of int64, shape (n,)
        Index in the emitted chain of each block's first emitted token.
    context : ndarray of int64, shape (n,)
        The context each block starts from (the previous emitted token).
    drafted : ndarray of int64, shape (n, γ)
        The γ drafted tokens.
    accepted_length : ndarray of int64, shape (n,)
        Number of drafts accepted, 0 .. γ; the block emits ``accepted_length + 1`` tokens.
    final : ndarray of int64, shape (n,)
        The residual token (rejection) or the bonus token (all accepted) that ends the block.
    """

    start: int
    first_step: NDArray[np.int64]
    context: NDArray[np.int64]
    drafted: NDArray[np.int64]
    accepted_length: NDArray[np.int64]
    final: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.context.shape[0])

    @property
    def gamma(self) -> int:
        """Drafts per block."""
        return int(self.drafted.shape[1])

    def emitted(self, i: int) -> list[int]:
        """The tokens block ``start + i`` emitted: its accepted drafts, then its final token."""
        n = int(self.accepted_length[i])
        return [*self.drafted[i, :n].tolist(), int(self.final[i])]

    def emitted_tokens(self) -> NDArray[np.int64]:
        """All emitted tokens of the chunk, in chain order."""
        g = self.gamma
        keep = np.arange(g + 1)[None, :] <= self.accepted_length[:, None]
        grid = np.concatenate([self.drafted, self.final[:, None]], axis=1)
        grid[np.arange(len(self)), self.accepted_length] = self.final
        tokens: NDArray[np.int64] = grid[keep]
        return tokens


# ---------------------------------------------------------------------------
# the block loop
# ---------------------------------------------------------------------------

_Cdf = tuple[Any, float, int]  # cumulative sums (list or array), total, last positive index


def _cdf_entry(cdf: NDArray[np.float64], as_list: bool) -> _Cdf:
    return (cdf.tolist() if as_list else cdf, float(cdf[-1]), last_positive(cdf))


def _draw(entry: _Cdf, u: float) -> int:
    """`sampling.inverse_cdf` for one uniform (bisect on a list, or on an array at large V)."""
    cdf, total, last = entry
    y = bisect_right(cdf, u * total)
    return last if y > last else y


class _DenseBlockTable:
    """A context's block tables over all V tokens: draft CDF, ``p / q``, residual CDF, target CDF."""

    def __init__(self, p: NDArray[np.float64], draft: ContextDraft, as_list: bool) -> None:
        tables = context_tables(p, draft)
        self.ratio = tables.ratio.tolist() if as_list else tables.ratio
        self.draft = _cdf_entry(tables.draft_cdf, as_list)
        self.residual = _cdf_entry(tables.residual_cdf, as_list)
        self.bonus = _cdf_entry(np.cumsum(p), as_list)

    def draft_token(self, u: float) -> int:
        return _draw(self.draft, u)

    def ratio_at(self, y: int) -> float:
        return float(self.ratio[y])

    def residual_token(self, u: float) -> int:
        return _draw(self.residual, u)

    def bonus_token(self, u: float) -> int:
        return _draw(self.bonus, u)


class _CompactBlockTable:
    """The same four draws on compact tables (`thermospec.compact`): the same tokens, O(K + s) per context."""

    def __init__(self, tables: CompactTables, probs: NDArray[np.float64]) -> None:
        self.tables = tables
        self.lists = compact_lists(tables)
        bonus = np.cumsum(probs)  # the target row's running sum over its support: the dense sums at those tokens
        self.bonus = (bonus.tolist(), float(bonus[-1]), last_positive(bonus))

    def draft_token(self, u: float) -> int:
        ids, id_cdf, cum, eps, total, last, _, _, _, _, _, V = self.lists
        return min(first_above(ids, id_cdf, cum, eps, V, u * total), last)

    def ratio_at(self, y: int) -> float:
        support, ratio = self.lists[6], self.lists[7]
        i = bisect_left(support, y)
        return ratio[i] if i < len(support) and support[i] == y else 0.0

    def residual_token(self, u: float) -> int:
        support, res, res_total, res_last = self.lists[6], self.lists[8], self.lists[9], self.lists[10]
        return support[min(bisect_right(res, u * res_total), res_last)]

    def bonus_token(self, u: float) -> int:
        return self.lists[6][_draw(self.bonus, u)]


_BlockTable = _DenseBlockTable | _CompactBlockTable


class _TableCache:
    """Per-context block tables with a memory bound (least recently used entries go first).

    With `sparse` (large V, `thermospec.runs.sparse_rows`) the tables are compact.
    """

    def __init__(self, row: RowSource, drafts: DraftSource, V: int, max_bytes: int,
                 sparse: SparseRows | None = None) -> None:
        self.row = row
        self.drafts = drafts
        self.sparse = sparse
        self.compact = None if sparse is None else (sparse.tables or compact_source(sparse.support, drafts))
        self.as_list = V <= LIST_TABLE_MAX_V
        if sparse is not None:
            per_entry = 64 * (2 * sparse.max_ids + 4 * sparse.max_support) + 1024
        else:
            per_entry = 4 * V * (32 if self.as_list else 8)
        self.capacity = max(8, max_bytes // per_entry)
        self._tables: OrderedDict[int, _BlockTable] = OrderedDict()

    def __call__(self, x: int) -> _BlockTable:
        found = self._tables.get(x)
        if found is not None:
            self._tables.move_to_end(x)
            return found
        if self.sparse is not None and self.compact is not None:
            tables = self.compact(x)
            found = _CompactBlockTable(tables, self.sparse.support(x)[1])
        else:
            found = _DenseBlockTable(self.row(x), self.drafts(x), self.as_list)
        self._tables[x] = found
        if len(self._tables) > self.capacity:
            self._tables.popitem(last=False)
        return found


def _block(table: Callable[[int], _BlockTable], x: int, u: list[float], gamma: int) -> tuple[list[int], int, int]:
    """One block from context x with its ``2γ + 1`` uniforms: (drafts, accepted length, final token)."""
    ys = []
    c = x
    for i in range(gamma):
        c = table(c).draft_token(u[i])
        ys.append(c)
    c = x
    n_acc = 0
    for i in range(gamma):
        if u[gamma + i] < table(c).ratio_at(ys[i]):
            n_acc += 1
            c = ys[i]
        else:
            break
    entry = table(c)
    return ys, n_acc, entry.residual_token(u[2 * gamma]) if n_acc < gamma else entry.bonus_token(u[2 * gamma])


def fixed_context_blocks(
    row: RowSource, drafts: DraftSource, V: int, x: int, gamma: int, n: int, rng: np.random.Generator,
    sparse: SparseRows | None = None,
) -> BlockChunk:
    """`n` independent blocks, each started at context `x` (same per-block layout as the chain)."""
    table = _TableCache(row, drafts, V, TABLE_CACHE_BYTES, sparse)
    drafted, accepted_length, final = [], [], []
    for u in rng.random((n, 2 * gamma + 1)).tolist():
        ys, n_acc, z = _block(table, x, u, gamma)
        drafted.append(ys)
        accepted_length.append(n_acc)
        final.append(z)
    lengths = np.array(accepted_length, dtype=np.int64)
    return BlockChunk(
        start=0,
        first_step=np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64),
        context=np.full(n, x, dtype=np.int64),
        drafted=np.array(drafted, dtype=np.int64).reshape(n, gamma),
        accepted_length=lengths,
        final=np.array(final, dtype=np.int64),
    )


def block_transitions(chunk: BlockChunk) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Every (previous token, emitted token) pair of the chunk's blocks, each block from its own context.

    Unlike `context_transition_counts` this does not assume the blocks are consecutive.
    """
    lengths = chunk.accepted_length + 1
    tokens = chunk.emitted_tokens()
    prev = np.empty_like(tokens)
    if tokens.size:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        prev[1:] = tokens[:-1]
        prev[starts] = chunk.context
    return prev, tokens


def transition_chi2(
    prev: NDArray[np.int64], emitted: NDArray[np.int64], row: RowSource, V: int
) -> tuple[float, int, float]:
    """Pooled χ² of all transitions against ``p(. | prev)``, summed over previous tokens: (stat, dof, p)."""
    from thermospec.statistics import chi2_sf

    stat, dof = 0.0, 0
    for c in np.unique(prev).tolist():
        observed = np.bincount(emitted[prev == c], minlength=V).astype(np.float64)
        result = pooled_chi2(observed, observed.sum() * row(c))
        stat += result.stat
        dof += result.dof
    return stat, dof, (chi2_sf(stat, dof) if dof > 0 else 1.0)


def run_block_checks(run: Any, check_steps: int) -> list[Any]:
    """The checklist for ``check --gamma G``.

    1. Fixed-context χ²: for each of the 4 most probable contexts, `check_steps`
       independent blocks started there; χ² of every transition they emit (all
       block positions: accepted drafts, residual and bonus tokens) against
       ``p(. | previous token)``, pooled per SPEC §6 and summed over previous
       tokens; pass if at least 3 of 4 have p > 0.05.
    2. Mean accepted length of a run of ``--steps`` tokens within 4 standard
       errors (batch means) of its exact expectation.
    3. The guide's ψ size check, unchanged.
    """
    from thermospec.checks import CheckResult, psi_size_check
    from thermospec.config import Stream, random_stream
    from thermospec.runs import sparse_rows

    config, target = run.config, run.target
    gamma = int(config.gamma)
    contexts = np.argsort(-target.pi, kind="stable")[:4].tolist()
    p_values = []
    for i, x in enumerate(contexts):
        rng = random_stream(config.seed, Stream.CHECK, i, gamma)
        chunk = fixed_context_blocks(target.row, run.proposer.draft, target.V, x, gamma, check_steps, rng,
                                     sparse=sparse_rows(run))
        p_values.append(transition_chi2(*block_transitions(chunk), target.row, target.V)[2])
    passing = sum(p > 0.05 for p in p_values)
    shown = ", ".join(f"x={x}: p={p:.3f}" for x, p in zip(contexts, p_values, strict=True))
    results = [CheckResult(
        name=f"fixed-context χ² of γ={gamma} blocks (n={check_steps} blocks per context)",
        passed=passing >= min(3, len(contexts)),
        detail=f"{passing}/{len(contexts)} with p > 0.05 [{shown}]",
    )]
    tally = BlockTally(target.V, gamma)
    for chunk in run_blocks(target.row, target.pi, run.proposer.draft, gamma, config.steps,
                            random_stream(config.seed, Stream.CHAIN), sparse=sparse_rows(run)):
        tally.update(chunk)
    lengths = tally.accepted_lengths()
    mean, se = float(lengths.mean()), batch_means_se(lengths)
    name = f"mean accepted length = exact expectation ± 4 SE ({tally.blocks} blocks)"
    if target.V > EXPECTATION_MAX_V:
        results.append(CheckResult(name=name, passed=True, skipped=True,
                                   detail=f"skipped: V = {target.V} above the dense limit {EXPECTATION_MAX_V}"))
    else:
        expected = block_expectation(target.row, run.proposer.draft, target.pi, gamma)
        gap = abs(mean - expected.accepted_length)
        se = max(se, length_se_floor(expected.accepted_length, gamma, tally.blocks))
        results.append(CheckResult(
            name=name, passed=gap <= 4 * se,
            detail=f"measured {mean:.4f} ± {se:.4f}, exact {expected.accepted_length:.4f}, "
            f"i.i.d. formula {expected.iid_tokens_per_target_call - 1:.4f}",
        ))
    results.append(psi_size_check(run))
    return results


def run_blocks(
    row: RowSource,
    pi: NDArray[np.float64],
    drafts: DraftSource,
    gamma: int,
    steps: int,
    rng: np.random.Generator,
    chunk: int = DEFAULT_BLOCK_CHUNK,
    table_bytes: int = TABLE_CACHE_BYTES,
    sparse: SparseRows | None = None,
) -> Iterator[BlockChunk]:
    """Run γ-token speculative blocks until at least `steps` tokens are emitted.

    Parameters
    ----------
    row : callable
        ``row(x)`` is the target ``p(. | x)``.
    pi : ndarray of float64, shape (V,)
        Start distribution.
    drafts : callable
        ``drafts(x)`` gives the `ContextDraft` of context x.
    gamma : int
        Drafts per block, >= 1.
    steps : int
        Blocks run until the chain holds at least this many tokens; the last
        block is kept whole, so up to ``gamma`` more tokens may be emitted.
    rng : numpy.random.Generator
        The chain's random stream (layout in the module docstring).
    chunk : int
        Blocks per yielded chunk; memory stays flat in `steps`.
    table_bytes : int
        Memory bound of the per-context table cache.
    sparse : SparseRows, optional
        The target's rows by their supports (`thermospec.runs.sparse_rows`): compact tables,
        O(K + s) per context instead of O(V), the same tokens.

    Yields
    ------
    BlockChunk
    """
    if not 1 <= gamma <= MAX_GAMMA:
        raise ValueError(f"--gamma: must be an integer in 1 .. {MAX_GAMMA}, got {gamma}")
    V = int(pi.shape[0])
    table = _TableCache(row, drafts, V, table_bytes, sparse)
    x = start_token(pi, rng)
    emitted_total = 0
    blocks_done = 0
    width = 2 * gamma + 1
    while emitted_total < steps:
        n = min(chunk, steps - emitted_total)  # each block emits at least one token
        uniforms = rng.random((n, width)).tolist()
        first_step: list[int] = []
        context: list[int] = []
        drafted: list[list[int]] = []
        accepted_length: list[int] = []
        final: list[int] = []
        for u in uniforms:
            if emitted_total >= steps:
                break
            ys, n_acc, z = _block(table, x, u, gamma)
            first_step.append(emitted_total)
            context.append(x)
            drafted.append(ys)
            accepted_length.append(n_acc)
            final.append(z)
            emitted_total += n_acc + 1
            x = z
        yield BlockChunk(
            start=blocks_done,
            first_step=np.array(first_step, dtype=np.int64),
            context=np.array(context, dtype=np.int64),
            drafted=np.array(drafted, dtype=np.int64).reshape(len(context), gamma),
            accepted_length=np.array(accepted_length, dtype=np.int64),
            final=np.array(final, dtype=np.int64),
        )
        blocks_done += len(context)


class _PresetUniforms:
    """Hands out given uniforms through ``random(n)``, so the public per-step API can run on a block's layout."""

    def __init__(self, values: NDArray[np.float64]) -> None:
        self.values = values
        self.used = 0

    def random(self, n: int) -> NDArray[np.float64]:
        out = self.values[self.used : self.used + n]
        if out.shape[0] != n:
            raise ValueError("the block's uniforms are exhausted")
        self.used += n
        return out


def run_blocks_reference(
    row: RowSource,
    pi: NDArray[np.float64],
    drafts: DraftSource,
    gamma: int,
    steps: int,
    rng: np.random.Generator,
) -> BlockChunk:
    """Algorithm 1 written block by block with the public per-step API: the tests pin `run_blocks` to it.

    Each draft is ``SimTSU.draw`` of its context's TSU (whose reported ``log q``
    is checked against F(ψ)); the drafts are verified in order by
    `accept_correct_step` fed ``(u_accept_i, u_final)``, which on a rejection
    returns the residual draw that ends the block; if all are accepted the bonus
    token is drawn from ``p(. | y_γ)`` with ``u_final``.
    """
    x = start_token(pi, rng)
    first_step, context, drafted, accepted_length, final = [], [], [], [], []
    emitted_total = 0
    while emitted_total < steps:
        u = rng.random(2 * gamma + 1)
        ys: list[int] = []
        qs: list[NDArray[np.float64]] = []
        c = x
        for i in range(gamma):
            tsu = drafts(c).tsu
            y, log_q = tsu.draw(cast(np.random.Generator, _PresetUniforms(u[i : i + 1])))
            if log_q != float(np.log(tsu.q[y])):
                raise ValueError(f"TSU reported log q = {log_q!r} for token {y}; F(ψ) says {np.log(tsu.q[y])!r}")
            ys.append(y)
            qs.append(tsu.q)
            c = y
        c = x
        n_acc = 0
        z = -1
        for i in range(gamma):
            feed = _PresetUniforms(np.array([u[gamma + i], u[2 * gamma]]))
            e, accepted = accept_correct_step(row(c), qs[i], ys[i], cast(np.random.Generator, feed))
            if not accepted:
                z = e
                break
            n_acc += 1
            c = ys[i]
        if n_acc == gamma:
            z = int(inverse_cdf(np.cumsum(row(c)), u[2 * gamma :])[0])
        first_step.append(emitted_total)
        context.append(x)
        drafted.append(ys)
        accepted_length.append(n_acc)
        final.append(z)
        emitted_total += n_acc + 1
        x = z
    return BlockChunk(
        start=0,
        first_step=np.array(first_step, dtype=np.int64),
        context=np.array(context, dtype=np.int64),
        drafted=np.array(drafted, dtype=np.int64).reshape(len(context), gamma),
        accepted_length=np.array(accepted_length, dtype=np.int64),
        final=np.array(final, dtype=np.int64),
    )


# ---------------------------------------------------------------------------
# exact expectation and the speed-up model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockExpectation:
    """Exact long-run block statistics of a (target, proposer, γ).

    Attributes
    ----------
    accepted_length : float
        ``E[L]`` over blocks in the stationary block-start law ``rho``.
    tokens_per_target_call : float
        ``1 + E[L]``.
    per_position_accept : list of float
        ``P(draft i accepted | drafts 1 .. i-1 accepted)``, i = 1 .. γ.
    iid_tokens_per_target_call : float
        The i.i.d. formula ``(1 - a^{γ+1}) / (1 - a)``, ``a`` the pi-mean overlap, for contrast.
    iterations : int
        Power iterations used for ``rho``.
    """

    accepted_length: float
    tokens_per_target_call: float
    per_position_accept: list[float]
    iid_tokens_per_target_call: float
    iterations: int


def expected_tokens_iid(alpha: float, gamma: int) -> float:
    """Leviathan et al.'s i.i.d. formula ``(1 - a^{γ+1}) / (1 - a)`` tokens per target call."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def block_expectation(
    row: RowSource,
    drafts: DraftSource,
    pi: NDArray[np.float64],
    gamma: int,
    tol: float = 1e-14,
    max_iter: int = 100_000,
) -> BlockExpectation:
    """The exact expected accepted length along the chain (method in the module docstring).

    Builds the dense ``V x V`` matrices ``M = min(P, Q)`` and ``P``, so it is meant
    for ``V <= block_kernel_dense_limit()``.

    Parameters
    ----------
    row, drafts : callable
        Target rows and per-context drafts.
    pi : ndarray of float64, shape (V,)
        The chain's stationary law; starts the power iteration for ``rho``.
    gamma : int
        Drafts per block, >= 1.
    tol : float
        Stop when the L1 change of ``rho`` in one iteration is below this.
    max_iter : int
        Bound on the iterations.
    """
    V = int(pi.shape[0])
    if V > EXPECTATION_MAX_V:
        raise ValueError(f"block_expectation: V = {V} is above the dense limit {EXPECTATION_MAX_V}")
    P = np.stack([row(x) for x in range(V)])
    M = np.minimum(P, np.stack([drafts(x).tsu.q for x in range(V)]))
    R = P - M

    def step(rho: NDArray[np.float64]) -> NDArray[np.float64]:
        out = np.zeros(V)
        v = rho
        for _ in range(gamma):
            out += v @ R
            v = v @ M
        out += v @ P
        return out

    rho = np.asarray(pi, dtype=np.float64) / float(np.sum(pi))
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        nxt = 0.5 * (rho + step(rho))  # lazy chain: same stationary law, never periodic
        nxt /= nxt.sum()
        change = float(np.abs(nxt - rho).sum())
        rho = nxt
        if change < tol:
            break
    reach = [1.0]
    v = rho
    for _ in range(gamma):
        v = v @ M
        reach.append(float(v.sum()))
    accepted = math.fsum(reach[1:])
    per_position = [reach[i] / reach[i - 1] if reach[i - 1] > 0 else 0.0 for i in range(1, gamma + 1)]
    alpha = float(np.dot(pi, M.sum(axis=1)))
    return BlockExpectation(
        accepted_length=accepted,
        tokens_per_target_call=1.0 + accepted,
        per_position_accept=per_position,
        iid_tokens_per_target_call=expected_tokens_iid(alpha, gamma),
        iterations=iterations,
    )


def modelled_speedup(tokens_per_target_call: float, gamma: int, cost_ratio: float) -> float:
    """Wall-time speed-up over plain decoding: ``tokens per target call / (γ c + 1)``."""
    return tokens_per_target_call / (gamma * cost_ratio + 1.0)


# ---------------------------------------------------------------------------
# tally, summary and telemetry of a block run
# ---------------------------------------------------------------------------


def context_transition_counts(chunk: BlockChunk, contexts: list[int], V: int) -> NDArray[np.int64]:
    """Counts of the tokens emitted right after each of `contexts`, shape ``(len(contexts), V)``.

    Covers every emitted token of the chunk, whatever its position in its block
    (the first token of a block follows the block's context).
    """
    tokens = chunk.emitted_tokens()
    prev = np.empty_like(tokens)
    if tokens.size:
        starts = chunk.first_step - chunk.first_step[0]
        prev[1:] = tokens[:-1]
        prev[starts] = chunk.context
    counts = np.zeros((len(contexts), V), dtype=np.int64)
    for i, x in enumerate(contexts):
        counts[i] = np.bincount(tokens[prev == x], minlength=V)
    return counts


@dataclass
class BlockTally:
    """Running counts of a block run, updated chunk by chunk."""

    vocab_size: int
    gamma: int
    blocks: int = 0
    tokens: int = 0
    emitted_counts: NDArray[np.int64] = field(init=False)
    length_counts: NDArray[np.int64] = field(init=False)
    draft_context_counts: NDArray[np.int64] = field(init=False)
    lengths: list[NDArray[np.int16]] = field(init=False)

    def __post_init__(self) -> None:
        self.emitted_counts = np.zeros(self.vocab_size, dtype=np.int64)
        self.length_counts = np.zeros(self.gamma + 1, dtype=np.int64)
        self.draft_context_counts = np.zeros(self.vocab_size, dtype=np.int64)
        self.lengths = []

    def update(self, chunk: BlockChunk) -> None:
        """Add one chunk of blocks."""
        self.blocks += len(chunk)
        self.tokens += int(chunk.accepted_length.sum()) + len(chunk)
        self.emitted_counts += np.bincount(chunk.emitted_tokens(), minlength=self.vocab_size)
        self.length_counts += np.bincount(chunk.accepted_length, minlength=self.gamma + 1)
        self.draft_context_counts += np.bincount(chunk.context, minlength=self.vocab_size)
        self.lengths.append(chunk.accepted_length.astype(np.int16))  # γ <= MAX_GAMMA fits

    def accepted_lengths(self) -> NDArray[np.float64]:
        """Accepted length of every block so far."""
        if not self.lengths:
            return np.zeros(0)
        return np.concatenate(self.lengths).astype(np.float64)


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: an undefined standard error (a single block) is null."""
    return value if math.isfinite(value) else None


def length_se_floor(expected: float, gamma: int, blocks: int) -> float:
    """A floor for the standard error of a mean accepted length, from the exact expectation.

    An accepted length lies in [0, γ], so its variance is at most
    ``(γ - μ) μ`` (Bhatia and Davis 2000).  When nearly every draft is accepted a
    run may show no variation at all and its batch-means SE is 0; the test then
    uses this bound instead of declaring any deviation significant.
    """
    return math.sqrt(max(gamma - expected, 0.0) * max(expected, 0.0) / max(blocks, 1))


def batch_means_se(values: NDArray[np.float64], batches: int = 50) -> float:
    """Standard error of a mean of correlated values by non-overlapping batch means."""
    n = values.shape[0]
    if n < 2 * batches:
        return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    size = n // batches
    means = values[: size * batches].reshape(batches, size).mean(axis=1)
    return float(np.std(means, ddof=1) / math.sqrt(batches))


def summarise_blocks(
    tally: BlockTally,
    pi: NDArray[np.float64],
    cost_ratio: float,
    expectation: BlockExpectation | None,
) -> dict[str, Any]:
    """The block run's statistics (all recomputable from the block JSONL but the expectation)."""
    g = tally.gamma
    lengths = tally.accepted_lengths()
    mean_len = float(lengths.mean())
    reached = np.cumsum(tally.length_counts[::-1])[::-1]  # reached[i] = #blocks with L >= i
    per_position = [
        float(reached[i + 1] / reached[i]) if reached[i] > 0 else None for i in range(g)
    ]
    tokens_per_call = tally.tokens / tally.blocks
    chi2 = pooled_chi2(tally.emitted_counts.astype(np.float64), tally.tokens * pi)
    summary: dict[str, Any] = {
        "gamma": g,
        "cost_ratio": cost_ratio,
        "blocks": tally.blocks,
        "tokens_emitted": tally.tokens,
        "mean_accepted_length": mean_len,
        "mean_accepted_length_se": _finite_or_none(batch_means_se(lengths)),
        "tokens_per_target_call": tokens_per_call,
        "per_position_accept_rate": per_position,
        "speedup": modelled_speedup(tokens_per_call, g, cost_ratio),
        "chi2_stat": chi2.stat,
        "chi2_dof": chi2.dof,
        "p_value": chi2.p_value,
    }
    if expectation is None:
        summary["expected"] = None
    else:
        summary["expected"] = {
            "accepted_length": expectation.accepted_length,
            "tokens_per_target_call": expectation.tokens_per_target_call,
            "per_position_accept_rate": expectation.per_position_accept,
            "speedup": modelled_speedup(expectation.tokens_per_target_call, g, cost_ratio),
            "iid_formula_tokens_per_target_call": expectation.iid_tokens_per_target_call,
            "method": "stationary law of block starts, products of min(p, q) along the drafted chain",
        }
    return summary


def block_lines(chunk: BlockChunk) -> str:
    """The block JSONL records of a chunk.

    Fields: ``block, first_step, context, drafted, accepted_length, emitted``.
    """
    lines = []
    for i, (b, s, x, ys, n) in enumerate(
        zip(
            range(chunk.start, chunk.start + len(chunk)),
            chunk.first_step.tolist(),
            chunk.context.tolist(),
            chunk.drafted.tolist(),
            chunk.accepted_length.tolist(),
            strict=True,
        )
    ):
        emitted = [*ys[:n], int(chunk.final[i])]
        lines.append(
            f'{{"block":{b},"first_step":{s},"context":{x},"drafted":{json.dumps(ys, separators=(",", ":"))},'
            f'"accepted_length":{n},"emitted":{json.dumps(emitted, separators=(",", ":"))}}}\n'
        )
    return "".join(lines)


def execute_block_run(
    run: Any,
    run_dir: Path,
    gamma: int,
    cost_ratio: float,
    on_chunk: Callable[[BlockChunk], None] | None = None,
) -> dict[str, Any]:
    """Run γ-token blocks for a prepared run; write ``m1_blocks.jsonl`` and ``summary.json``.

    Parameters
    ----------
    run : thermospec.runs.PreparedRun
    run_dir : Path
    gamma, cost_ratio
        Drafts per block and TSU-draft / target-call time ratio.
    """
    from thermospec import __version__
    from thermospec.config import Stream, random_stream
    from thermospec.interrupts import interruption_guard, signal_name
    from thermospec.runs import SUMMARY_FILE, software_versions, sparse_rows, target_description, write_json_atomic

    config, target = run.config, run.target
    started = time.perf_counter()
    tally = BlockTally(target.V, gamma)
    rng = random_stream(config.seed, Stream.CHAIN)
    chunks: Iterable[BlockChunk]
    if getattr(config, "tsu", "sim") == "thrml":  # the TSU must draw every token itself: per-block loop
        chunks = [run_blocks_reference(target.row, target.pi, run.proposer.draft, gamma, config.steps, rng)]
    else:
        chunks = run_blocks(target.row, target.pi, run.proposer.draft, gamma, config.steps, rng,
                            sparse=sparse_rows(run))
    digest = hashlib.sha256()
    out: IO[str]
    metrics = run_dir / BLOCKS_FILE
    # A signal only stops the loop between whole chunks of blocks.
    with interruption_guard() as stop, metrics.open("w", encoding="utf-8", newline="\n", buffering=1 << 20) as out:
        for chunk in chunks:
            text = block_lines(chunk)
            out.write(text)
            digest.update(text.encode("utf-8"))
            tally.update(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
            if stop.requested:
                break
    interrupted = {
        "interrupted": stop.signum is not None,
        "interrupted_by": signal_name(stop.signum) if stop.signum is not None else None,
        "versions": software_versions(),
    }
    if tally.blocks == 0:  # stopped before the first chunk: nothing to aggregate
        empty = {"blocks": 0, "tokens_emitted": 0, "steps": 0, "config": {**config.as_dict(), "K_used": run.K_used},
                 "target": target_description(run), "telemetry": BLOCKS_FILE,
                 "metrics_sha256": digest.hexdigest(), **interrupted}
        write_json_atomic(run_dir / SUMMARY_FILE, empty)
        return empty
    expectation = (
        block_expectation(target.row, run.proposer.draft, target.pi, gamma)
        if target.V <= EXPECTATION_MAX_V
        else None
    )
    stats = summarise_blocks(tally, target.pi, cost_ratio, expectation)
    visited = np.flatnonzero(tally.draft_context_counts).tolist()
    elapsed = time.perf_counter() - started
    summary: dict[str, Any] = {
        **stats,
        "steps": tally.tokens,  # tokens emitted: what a replay of an interrupted run asks for again
        "psi_bytes_max": max(run.proposer.draft(x).psi_bytes for x in visited),
        "elapsed_s": elapsed,
        "tokens_per_s": tally.tokens / elapsed,
        "config": {**config.as_dict(), "K_used": run.K_used},
        "target": target_description(run),
        "telemetry": BLOCKS_FILE,
        "metrics_sha256": digest.hexdigest(),
        "thermospec_version": __version__,
        **interrupted,
    }
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    return summary
