"""Token trees: γ-token blocks with N drafts per position (``run --gamma G --drafts N``, SPEC §8).

A block starts at key ``x``.  Before the target call the TSU drafts a full tree
of depth γ: every node's N children are drawn i.i.d. from ψ of the node's key
(the root's key is x; a child's key is ``source.advance(parent key, child
token)``), ``N + N² + … + N^γ`` draws in all.  One target call then verifies
the tree top-down with the N-draft verifier (`core.verifiers`): at the current
node (first the root) the verifier, given the node's N children, either accepts
one of them — the block descends into that child — or emits a token from its
residual and the block ends.  If all γ levels accept, a bonus token is drawn from
the row of the key after the last accepted token.  This is SpecInfer's
multi-step speculative sampling (Miao et al. 2023): the accepted child's
children were drafted independently of everything the verifier looked at, so
each level is an exact N-draft step at its key, and every emitted token follows
``p(. | key)``.

Random stream layout (per block): first one uniform per tree node in
breadth-first order (``N + N² + … + N^γ``: node ``j ≥ 1``'s draw uses uniform
``j − 1``; the children of node ``i`` are nodes ``N·i + 1 … N·i + N``, the root
being node 0), then ``N`` verifier uniforms per level (``u_1 … u_N``), then one
final uniform that draws the residual token of the rejecting level or the bonus
token.  All are consumed whatever happens.  With N = 1 this is exactly the
γ-block layout (``2γ + 1``), and every verifier is M1's step, so a tree of N = 1
emits the γ-block run's tokens (tested).  Only the nodes on the verified path
are actually drawn (the others' uniforms are skipped): the tokens are those of
drawing every node, and the draws a chip makes are counted in full.

`run_trees` runs the blocks on the compiled kernel (`engine.tree_kernel`) when the TSU is the
simulator, else the per-block loop (plain Python over the verifier plans, cached per key, each
draw the TSU's own with its report checked); `TreeExpectation` is the exact expected accepted length of a
block from a key, by dynamic programming over the accepted-token law of each
level's verifier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import cast

import numpy as np
from numpy.typing import NDArray

from thermospec.core.sampling import inverse_cdf
from thermospec.core.trees import MAX_TREE_NODES, tree_nodes
from thermospec.core.verifiers import VerifierPlan
from thermospec.engine.chain import ReportError
from thermospec.engine.chunks import TreeChunk
from thermospec.engine.drafts import plan_source
from thermospec.engine.keys import ContextSource, memoised_advance
from thermospec.engine.tree_kernel import compiled_trees
from thermospec.tsu.drafts import DraftSource

__all__ = ["TreeChunk", "TreeExpectation", "fixed_key_trees", "plan_cache", "run_trees"]

DEFAULT_TREE_CHUNK = 1 << 8
"""Blocks per chunk: a chunk is the unit a signal keeps or drops, so a Python-speed loop keeps it short."""


def plan_cache(source: ContextSource, drafts: DraftSource, verifier: str, n: int) -> Callable[[int], VerifierPlan]:
    """Each key's verifier plan for N drafts from ψ of that key (`engine.drafts.plan_source`: built once, kept
    within its byte bound)."""
    return plan_source(source.row, drafts, verifier, n)


def _checked_draw(drafts: DraftSource, key: int, u: float, step: int) -> int:
    """The TSU of `key` draws with uniform `u`; its reported ``log q`` is checked against F(ψ)."""
    tsu = drafts(key).tsu
    y, log_q = tsu.draw(cast(np.random.Generator, _Preset(u)))
    with np.errstate(divide="ignore"):
        expected = float(np.log(tsu.q[y]))
    if log_q != expected or not tsu.q[y] > 0:
        raise ReportError(step, key, y, log_q, expected)
    return y


class _Preset:
    """One given uniform through ``random(1)``, so a TSU's own `draw` runs on the tree's layout."""

    def __init__(self, u: float) -> None:
        self.u = u

    def random(self, n: int | None = None) -> NDArray[np.float64]:
        return np.array([self.u], dtype=np.float64)


def run_trees(
    source: ContextSource,
    drafts: DraftSource,
    verifier: str,
    n: int,
    gamma: int,
    steps: int,
    rng: np.random.Generator,
    chunk: int = DEFAULT_TREE_CHUNK,
) -> Iterator[TreeChunk]:
    """Token-tree blocks until at least `steps` tokens are emitted (layout in the module docstring).

    Raises
    ------
    ValueError
        A tree of more than `MAX_TREE_NODES` nodes.
    ReportError
        A draw whose reported ``log q`` is not ``log F(ψ)``.
    """
    nodes = tree_nodes(gamma, n)
    if nodes > MAX_TREE_NODES:
        raise ValueError(f"--gamma {gamma} --drafts {n}: a tree of {nodes:,} drafted nodes per block; at most "
                         f"{MAX_TREE_NODES:,} (N + N^2 + ... + N^γ)")
    plans = plan_cache(source, drafts, verifier, n)
    x = source.start(rng)
    compiled = compiled_trees(source, drafts, plans, verifier, n, gamma, steps, x, rng, chunk)
    if compiled is not None:
        yield from compiled
        return
    advance = memoised_advance(source)
    width = nodes + gamma * n + 1
    emitted_total = blocks_done = 0
    while emitted_total < steps:
        m = min(chunk, steps - emitted_total)
        uniforms = rng.random((m, width))
        rows: list[tuple[int, int, list[int], list[int], int, int, list[list[int]], list[int]]] = []
        for u in uniforms:
            if emitted_total >= steps:
                break
            block = _tree_block(u.tolist(), x, source, drafts, plans, advance, n, gamma, nodes, emitted_total)
            path, keys, accepted, final, children, index, x = block
            rows.append((emitted_total, keys[0], path, keys, accepted, final, children, index))
            emitted_total += accepted + 1
        yield _tree_chunk(blocks_done, rows, gamma, n)
        blocks_done += len(rows)


def fixed_key_trees(source: ContextSource, drafts: DraftSource, verifier: str, n: int, gamma: int, x: int,
                    count: int, rng: np.random.Generator) -> TreeChunk:
    """`count` independent tree blocks, each started at key `x` (the same per-block layout as `run_trees`)."""
    nodes = tree_nodes(gamma, n)
    plans = plan_cache(source, drafts, verifier, n)
    advance = memoised_advance(source)
    rows = []
    for i, u in enumerate(rng.random((count, nodes + gamma * n + 1)).tolist()):
        path, keys, accepted, final, children, index, _ = _tree_block(u, x, source, drafts, plans, advance, n, gamma,
                                                                      nodes, i)
        rows.append((i, x, path, keys, accepted, final, children, index))
    return _tree_chunk(0, rows, gamma, n)


def _tree_block(u: list[float], x: int, source: ContextSource, drafts: DraftSource,
                plans: Callable[[int], VerifierPlan], advance: Callable[[int, int], int], n: int, gamma: int,
                nodes: int, step: int) -> tuple[list[int], list[int], int, int, list[list[int]], list[int], int]:
    """One tree block from key x: (path, its keys, accepted length, final token, children, indexes, next key)."""
    verify = u[nodes : nodes + gamma * n]
    final_u = u[-1]
    node, key = 0, x
    path: list[int] = []
    keys: list[int] = []
    children: list[list[int]] = []
    index: list[int] = []
    for level in range(gamma):
        first = n * node + 1  # the node's children, in breadth-first order
        ys = [_checked_draw(drafts, key, u[first + i - 1], step) for i in range(n)]
        emitted, accepted = plans(key).step(ys, np.array([*verify[level * n : (level + 1) * n], final_u]))
        children.append(ys)
        keys.append(key)
        if accepted is None:
            path.append(ys[0])
            index.append(-1)
            return path, keys, level, emitted, children, index, advance(key, emitted)
        path.append(emitted)
        index.append(accepted)
        node, key = first + accepted, advance(key, emitted)
    bonus = int(inverse_cdf(np.cumsum(source.row(key)), np.array([final_u]))[0])
    return path, keys, gamma, bonus, children, index, advance(key, bonus)


def _tree_chunk(start: int, rows: list[tuple[int, int, list[int], list[int], int, int, list[list[int]], list[int]]],
                gamma: int, n: int) -> TreeChunk:
    m = len(rows)
    children = np.full((m, gamma, n), -1, dtype=np.int64)
    index = np.full((m, gamma), -1, dtype=np.int64)
    for b, row in enumerate(rows):
        for level, ys in enumerate(row[6]):
            children[b, level] = ys
        index[b, : len(row[7])] = row[7]

    def column(i: int) -> NDArray[np.int64]:
        return np.array([r[i] for r in rows], dtype=np.int64)

    def padded(i: int) -> NDArray[np.int64]:
        grid = np.zeros((m, gamma), dtype=np.int64)
        for b, r in enumerate(rows):
            values = r[i]
            assert isinstance(values, list)
            grid[b, : len(values)] = values
            grid[b, len(values):] = values[-1]  # below the rejecting level: never verified, never emitted
        return grid

    return TreeChunk(start=start, first_step=column(0), context=column(1), drafted=padded(2), draft_keys=padded(3),
                     accepted_length=column(4), final=column(5), children=children, accepted_index=index)


class TreeExpectation:
    """The exact expected accepted length of a tree block from a key, ``E_γ(key)``, memoised across keys.

    ``E_d(c) = Σ_y a_c(y) (1 + E_{d-1}(c·y))``, ``E_0 = 0``: ``a_c`` is the accepted-token law of c's
    verifier (`VerifierPlan.accepted_law`) and ``c·y`` the key after y.  On a teacher-forced source (`token_free`) every
    token leads to the same key, so ``E_d(c) = α_c (1 + E_{d-1}(c·y))`` with α the verifier's acceptance.
    Calling it returns None once more than `max_states` (key, depth) values would be needed.
    """

    def __init__(self, source: ContextSource, plans: Callable[[int], VerifierPlan], gamma: int,
                 max_states: int = 20_000) -> None:
        self.source, self.plans, self.gamma, self.max_states = source, plans, gamma, max_states
        self._memo: dict[tuple[int, int], float] = {}

    def __call__(self, key: int) -> float | None:
        try:
            return self._value(key, self.gamma)
        except OverflowError:
            return None

    def _value(self, c: int, depth: int) -> float:
        if depth == 0:
            return 0.0
        found = self._memo.get((c, depth))
        if found is not None:
            return found
        if len(self._memo) >= self.max_states:
            raise OverflowError
        source = self.source
        if depth == 1:  # the last level: its expected accepted length is the verifier's acceptance
            result = self.plans(c).acceptance
        elif source.token_free:
            result = self.plans(c).acceptance * (1.0 + self._value(source.advance(c, 0), depth - 1))
        else:
            law = self.plans(c).accepted_law()
            support = np.flatnonzero(law > 0).tolist()
            result = float(law[support].sum()) + math.fsum(
                float(law[y]) * self._value(source.advance(c, y), depth - 1) for y in support)
        self._memo[(c, depth)] = result
        return result
