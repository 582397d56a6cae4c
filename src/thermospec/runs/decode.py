"""One round of decoding with a model pair and the TSU: ψ from the draft model, drafts, one target call.

A round at the committed ids ``x`` has ``L`` levels and ``N`` drafts per node
(``L = 1`` without ``--gamma``; ``N = 1`` without ``--drafts``).  The draft model's
row at each node of the tree (the root is ``x``) gives ψ (`craft_payload`); the
TSU draws the node's N children from F(ψ) (`SimTSU`), ``N + N² + … + N^L`` draws;
the draft model scores level after level of the tree (one batched forward pass
per level beyond the root).  The target then scores the whole tree in one
forward pass: its ``N^L`` root-to-leaf paths as one batch (the exact fallback of
a tree attention mask, which not every model family supports; with ``N = 1`` the
batch is the block).  Verification walks down from the root, as
`thermospec.engine.trees` does on tables: at each node one N-draft step
(`accept_correct_step` for one draft, `thermospec.core.verifiers` for N), down
into the accepted child, else the residual's token ends the round; with
``--gamma`` a full acceptance adds a bonus token from the target's row after the
last accepted one.  Without ``--gamma`` a round is M1's step: one level, no bonus,
and the target is called for the root's row only.

Without a draft model the target's own row gives ψ (M1's semantics): the root's
row is then one target call, which an M1 round verifies with; with ``--gamma 1``
the block is scored by a second call.  Both are counted as target calls.

Uniform layout of a round (one stream per round, `random_stream(seed, CHAIN, round)`):
one uniform per drafted node in breadth-first order, then N per level for the
verifier, then one for the residual or bonus token: ``nodes + L·N + 1``, all drawn
whatever happens (`engine.trees`' layout; with N = 1 the γ-block's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from thermospec.core.acceptance import accept_correct_step
from thermospec.core.metrics import overlap_mass
from thermospec.core.payload import EpsSpec, craft_payload, encode_payload
from thermospec.core.sampling import inverse_cdf
from thermospec.core.streams import Stream, random_stream
from thermospec.core.verifiers import make_plan
from thermospec.targets.hf_models import CausalLM
from thermospec.tsu.sim import SimTSU

__all__ = ["Round", "RoundSettings", "decode_round", "round_levels"]


@dataclass(frozen=True)
class RoundSettings:
    """What shapes every round: ψ's parameters, the tree's depth and width, the verifier, the seed."""

    K: int
    tau: float
    eps: EpsSpec
    gamma: int | None
    drafts: int
    verifier: str
    seed: int


@dataclass
class Round:
    """What one round did (a JSONL record) and what it cost."""

    index: int
    prefix_length: int
    levels: int
    children: list[list[int]] = field(default_factory=list)
    accepted: int = 0
    emitted: list[int] = field(default_factory=list)
    psi_bytes: int = 0
    tsu_draws: int = 0
    overlap: list[float] = field(default_factory=list)
    expected: list[float] = field(default_factory=list)
    draft_overlap: list[float] = field(default_factory=list)
    target_calls: int = 0
    draft_calls: int = 0
    tsu_seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """The round's JSONL record."""
        return {
            "round": self.index, "prefix_length": self.prefix_length, "block_length": self.levels,
            "drafts": self.children, "accepted": self.accepted, "emitted": self.emitted,
            "psi_bytes": self.psi_bytes, "tsu_draws": self.tsu_draws, "target_calls": self.target_calls,
            "overlap": [round(v, 9) for v in self.overlap], "expected_acceptance": [round(v, 9) for v in self.expected],
            "draft_overlap": [round(v, 9) for v in self.draft_overlap],
        }


class _Preset:
    """Given uniforms through ``random(n)``, so `SimTSU.sample` and `accept_correct_step` run on the layout."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def random(self, n: int | None = None) -> NDArray[np.float64]:
        return np.array(self.values, dtype=np.float64)


def round_levels(settings: RoundSettings, committed: int, context: int | None, remaining: int) -> int:
    """Levels of the next round: γ (1 without it), no deeper than the tokens left or the model's context."""
    levels = settings.gamma or 1
    if settings.gamma is not None:
        levels = min(levels, max(1, remaining - 1))  # a full block emits levels + 1 tokens
    if context is not None:
        levels = min(levels, max(1, context - committed))
    return levels


def _draw(row: NDArray[np.float64], settings: RoundSettings, uniforms: list[float],
          out: Round) -> tuple[list[int], NDArray[np.float64]]:
    """ψ crafted from `row`; the TSU draws one child per uniform; returns the children and F(ψ)."""
    payload = craft_payload(row, settings.K, settings.tau, settings.eps)
    data = encode_payload(payload)
    started = time.perf_counter()
    tsu = SimTSU(data)  # the chip sees the bytes only
    tokens, _ = tsu.sample(cast(np.random.Generator, _Preset(uniforms)), len(uniforms))
    out.tsu_seconds += time.perf_counter() - started
    out.psi_bytes += len(data)
    out.tsu_draws += len(uniforms)
    return [int(t) for t in tokens], tsu.q


def decode_round(index: int, committed: list[int], target: CausalLM, draft: CausalLM | None,
                 settings: RoundSettings, levels: int) -> Round:
    """One round at `committed` (module docstring); the emitted tokens are in ``Round.emitted``."""
    n, bonus = settings.drafts, settings.gamma is not None
    nodes = sum(n ** level for level in range(1, levels + 1))
    u = random_stream(settings.seed, Stream.CHAIN, index).random(nodes + levels * n + 1).tolist()
    verify, final = u[nodes : nodes + levels * n], u[-1]
    out = Round(index, len(committed), levels)
    drafter = draft or target
    calls_before = (target.calls, draft.calls if draft else 0)
    # Draft the tree level by level: node j's children are nodes n·j + 1 … n·j + n (breadth first).
    paths: list[list[int]] = [[]]
    children: list[int] = []
    q_of: list[NDArray[np.float64]] = []
    d_of: list[NDArray[np.float64]] = []
    root_row: NDArray[np.float64] | None = None
    for level in range(levels):
        rows = drafter.rows(committed, paths)[:, -1] if level else drafter.rows(committed)[:, 0]
        if level == 0:
            root_row = rows[0]
        first = len(children)
        next_paths: list[list[int]] = []
        for j, row in enumerate(rows):
            ys, q = _draw(row, settings, u[first + j * n : first + (j + 1) * n], out)
            children.extend(ys)
            q_of.append(q)
            d_of.append(row)
            next_paths.extend([*paths[j], y] for y in ys)
        paths = next_paths
    # One target call scores the tree: every root-to-leaf path in one batch (the root's row only in M1).
    if draft is None and not bonus:
        assert root_row is not None
        p_rows = root_row[None, None, :]
    else:
        p_rows = target.rows(committed, paths if bonus else [[]])
    leaf_start = sum(n ** level for level in range(levels))  # the first node at depth `levels`

    def target_row(node: int, depth: int) -> NDArray[np.float64]:
        while node < leaf_start:  # the leftmost leaf below the node shares its prefix
            node = n * node + 1
        row: NDArray[np.float64] = p_rows[node - leaf_start if bonus else 0, depth]
        return row

    node = 0
    for level in range(levels):
        kids = children[n * node : n * node + n]  # node j's children, 0-based among drafted nodes
        p, q, d = target_row(node, level), q_of[node], d_of[node]
        out.children.append(kids)
        out.overlap.append(overlap_mass(p, q))
        out.draft_overlap.append(overlap_mass(p, d))
        if n == 1:
            token, ok = accept_correct_step(p, q, kids[0], cast(np.random.Generator, _Preset([verify[level], final])))
            choice: int | None = 0 if ok else None
            out.expected.append(out.overlap[-1])
        else:
            plan = make_plan(settings.verifier, p, q, n)
            token, choice = plan.step(kids, np.array([*verify[level * n : (level + 1) * n], final]))
            out.expected.append(plan.acceptance)
        out.emitted.append(token)
        if choice is None:
            break
        out.accepted += 1
        node = n * node + 1 + choice
    else:
        if bonus:
            out.emitted.append(int(inverse_cdf(np.cumsum(target_row(node, levels)), np.array([final]))[0]))
    out.target_calls = target.calls - calls_before[0]
    out.draft_calls = (draft.calls - calls_before[1]) if draft else 0
    return out
