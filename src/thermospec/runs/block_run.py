"""``run --gamma G``: a block run's tally, summary and telemetry (the engine is `engine.blocks`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from thermospec.core.expectation import EXPECTATION_MAX_V, BlockExpectation, block_expectation, modelled_speedup
from thermospec.core.statistics import Chi2Result, pooled_chi2
from thermospec.core.trees import tree_nodes
from thermospec.engine.batch import chain_stream
from thermospec.engine.block_kernel import CraftedBlockChunk
from thermospec.engine.blocks import BLOCKS_FILE, run_blocks, run_blocks_reference
from thermospec.engine.chain import dense_matrices
from thermospec.engine.chunks import BlockChunk
from thermospec.engine.keys import ContextSource
from thermospec.engine.tally import BlockTally
from thermospec.engine.trees import TreeChunk, TreeExpectation, plan_cache, run_trees
from thermospec.runs.crafted_losses import crafted_losses
from thermospec.runs.losses import Visits
from thermospec.runs.parquet_file import RecordParquet, finish_parquet
from thermospec.runs.prepare import PreparedRun, context_source, sparse_rows
from thermospec.runs.schema import block_layout
from thermospec.runs.storage import SUMMARY_FILE, RecordFile, chain_dir, write_json_atomic
from thermospec.runs.telemetry import BLOCKS_PARQUET

__all__ = ["TREE_EXPECTATION_KEYS", "BlockMode", "block_lines", "block_values", "key_kind", "summarise_blocks"]

TREE_EXPECTATION_KEYS = 2000
"""Distinct block starts for which a tree run's summary computes the exact expected accepted length."""


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
    pi: NDArray[np.float64] | None,
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
    chi2 = None if pi is None else pooled_chi2(tally.emitted_counts.astype(np.float64), tally.tokens * pi)
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
        "chi2_stat": None if chi2 is None else chi2.stat,  # N·π is the law of a bigram chain's tokens only
        "chi2_dof": None if chi2 is None else chi2.dof,
        "p_value": None if chi2 is None else chi2.p_value,
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


def key_kind(source: ContextSource) -> Literal["int", "text"]:
    """How a block record writes its first key (`runs.schema.block_layout`): an order-N context as its text, every
    other key (a token id, a trace position) as an integer."""
    return "text" if source.keys_are_text else "int"


def block_values(chunk: BlockChunk, key_json: Callable[[int], str] = str) -> dict[str, list[Any]]:
    """Each block field's values in a chunk (`runs.schema.BLOCK_FIELDS`, and a tree's `TREE_FIELDS`), for both
    the JSONL and the Parquet records; ``context`` is the block's first key as `key_json` writes it, read back."""
    lengths = chunk.accepted_length.tolist()
    drafted = chunk.drafted.tolist()
    values: dict[str, list[Any]] = {
        "first_step": chunk.first_step.tolist(),
        "context": [json.loads(key_json(k)) for k in chunk.context.tolist()],
        "drafted": drafted,
        "accepted_length": lengths,
        "emitted": [[*ys[:n], y] for ys, n, y in zip(drafted, lengths, chunk.final.tolist(), strict=True)],
    }
    if isinstance(chunk, TreeChunk):  # the verified levels' children, the accepted levels' child indices
        g = chunk.gamma
        values["children"] = [level[: min(n + 1, g)] for level, n in zip(chunk.children.tolist(), lengths,
                                                                          strict=True)]
        values["accepted_index"] = [index[:n] for index, n in zip(chunk.accepted_index.tolist(), lengths,
                                                                   strict=True)]
    return values


def block_lines(chunk: BlockChunk, key_json: Callable[[int], str] = str, key: Literal["int", "text"] = "int") -> str:
    """The block JSONL records of a chunk (`runs.schema.block_layout`'s fields: a block's, and a token tree's).

    ``context`` is the block's first key as `key_json` writes it: a token id on a bigram chain or a position on a
    trace (`key` ``"int"``), an order-N context's text (``"text"``).
    """
    layout = block_layout(key, isinstance(chunk, TreeChunk))
    return layout.json_lines(chunk.start, block_values(chunk, key_json))


class _BlockChain:
    """One chain of a block run: its records file, tally and the acceptance over its verified positions."""

    def __init__(self, gamma: int, V: int, folder: Path | None) -> None:
        self.tally = BlockTally(V, gamma)
        self.file = RecordFile(folder / BLOCKS_FILE) if folder is not None else None
        self.verified = self.accepted_drafts = 0
        self.overlap_sum = self.ce_gap_sum = 0.0

    def acceptance(self) -> dict[str, Any]:
        """The guide's acceptance fields over verified positions."""
        accept_rate, mean_overlap = self.accepted_drafts / self.verified, self.overlap_sum / self.verified
        gap = self.ce_gap_sum / self.verified
        return {"verified_positions": self.verified, "accept_rate": accept_rate, "mean_overlap": mean_overlap,
                "accept_overlap_gap": abs(accept_rate - mean_overlap),
                "mean_ce_gap": gap if math.isfinite(gap) else None}


class BlockMode:
    """``run --gamma G [--drafts N] [--chains B]``: γ-token blocks, or token trees with N > 1, over the run's
    context source, in one chain or B chains in lock step.

    One record per block in ``m1_blocks.jsonl`` (``--telemetry jsonl``) or none
    (``--telemetry none``); with B chains, chain b's records and summary are in
    ``chain_<b>/`` (chain b on its own stream, chain 0 the single-chain run byte
    for byte) and ``summary.json`` pools them.  With ``--tsu thrml`` the TSU must
    draw every token itself: the per-block reference loop runs, in one chunk
    (trees always draw with the TSU's own `draw`).

    Besides the block statistics, the summary carries the guide's ``accept_rate``
    and ``mean_overlap`` over the *verified* positions (each level up to and
    including a block's first rejection), a position's overlap being the exact
    acceptance at the key it was verified in (``Σ min(p, F(ψ))`` for one draft,
    the verifier's for N): so ``accept_rate ≈ mean_overlap`` is the same check as M1's.
    """

    counted_by_engine = False
    """The blocks are counted as they are recorded (`Mode.counted_by_engine`)."""

    def __init__(self, run: PreparedRun, run_dir: Path, telemetry: str = "jsonl", chains: int = 1) -> None:
        config = run.config
        assert config.gamma is not None, "BlockMode needs --gamma"
        self.run, self.gamma, self.n, self.run_dir = run, config.gamma, config.drafts, run_dir
        self.source = context_source(run)
        self.plans = plan_cache(self.source, run.proposer.draft, config.verifier, self.n) if self.n > 1 else None
        self.telemetry = {"jsonl": BLOCKS_FILE, "parquet": BLOCKS_PARQUET}.get(telemetry, telemetry)
        if chains > 1 and telemetry != "none":  # per-chain summaries (and JSONL records) in chain_<b>/
            for b in range(chains):
                chain_dir(run_dir, b).mkdir(exist_ok=True)
        folders: list[Path | None] = [None] * chains
        if telemetry == "jsonl":
            folders = [run_dir] if chains == 1 else [chain_dir(run_dir, b) for b in range(chains)]
        self.chains = [_BlockChain(self.gamma, run.target.V, folder) for folder in folders]
        self.layout = block_layout(key_kind(self.source), self.n > 1)
        self._parquet = (RecordParquet(run_dir / BLOCKS_PARQUET, self.layout, chains > 1, empty_file=False)
                         if telemetry == "parquet" else None)
        self._overlap: dict[int, float] = {}
        self._visits: dict[int, int] = {}  # verified positions per key, every chain
        self._expectation = TreeExpectation(self.source, self.plans, self.gamma) if self.plans is not None else None
        self._ce_gap: dict[int, float] = {}  # KL(p ‖ F(ψ)) at each key, as M1's ce_gap_nats
        self._psi_bytes = 0  # the largest ψ of the keys met
        self._crafted: CraftedBlockChunk | None = None  # a chunk of states crafted at once: their metrics, by state

    def chunks(self) -> Iterator[tuple[BlockChunk | None, ...]]:
        """Each chain's next chunk, in lock step (None for a chain that has finished)."""
        return itertools.zip_longest(*[self._chain(b) for b in range(len(self.chains))])

    def _chain(self, b: int) -> Iterator[BlockChunk]:
        config, drafts = self.run.config, self.run.proposer.draft
        rng = chain_stream(config.seed, b)
        if self.n > 1:
            return run_trees(self.source, drafts, config.verifier, self.n, self.gamma, config.steps, rng)
        if config.tsu == "thrml":
            return iter([run_blocks_reference(self.source, drafts, self.gamma, config.steps, rng)])
        return run_blocks(self.source, drafts, self.gamma, config.steps, rng, sparse=sparse_rows(self.run),
                          psi=self.run.proposer.psi_spec)

    def _acceptance(self, key: int) -> float:
        """The exact acceptance at a key: the verifier's with N drafts, else ``Σ min(p, F(ψ))``."""
        if self.plans is not None:
            return self.plans(key).acceptance
        return self.run.proposer.draft(key).overlap_mass

    def record(self, chunks: tuple[BlockChunk | None, ...]) -> int:
        units = 0
        for b, (chain, chunk) in enumerate(zip(self.chains, chunks, strict=True)):
            if chunk is not None:
                values = (block_values(chunk, self.source.key_json)
                          if self._parquet is not None or chain.file is not None else None)
                if self._parquet is not None and values is not None:
                    self._parquet.write(chunk.start, values, b)
                units += self._record(chain, chunk, values)
        return units

    def _record(self, chain: _BlockChain, chunk: BlockChunk, values: dict[str, list[Any]] | None) -> int:
        if chain.file is not None and values is not None:
            chain.file.write(self.layout.json_lines(chunk.start, values))
        chain.tally.update(chunk)
        keys = chunk.draft_keys[chunk.verified()]
        self._learn([key for key in np.unique(keys).tolist() if key not in self._overlap], chunk)
        verified, times = np.unique(keys, return_counts=True)
        for key, n in zip(verified.tolist(), times.tolist(), strict=True):
            self._visits[key] = self._visits.get(key, 0) + n
        chain.overlap_sum += math.fsum([self._overlap[k] for k in keys.tolist()])
        chain.ce_gap_sum += math.fsum([self._ce_gap[k] for k in keys.tolist()])
        chain.verified += int(keys.shape[0])
        chain.accepted_drafts += int(chunk.accepted_length.sum())
        return len(chunk) + int(chunk.accepted_length.sum())

    def _learn(self, keys: list[int], chunk: BlockChunk) -> None:
        """Keep the acceptance, KL gap and ψ size of keys met for the first time: from the chunk's states crafted
        at once (bit for bit their drafts'), else from each key's draft."""
        if not keys:
            return
        if isinstance(chunk, CraftedBlockChunk) and self.plans is None:
            metrics = chunk.metrics
            states = chunk.moves.states_of(np.array(keys, dtype=np.int64))
            if bool(np.all(states >= 0)):
                self._overlap.update(zip(keys, metrics.overlap_mass[states].tolist(), strict=True))
                self._ce_gap.update(zip(keys, metrics.ce_gap_nats[states].tolist(), strict=True))
                self._psi_bytes = max(self._psi_bytes, metrics.psi_bytes)
                self._crafted = chunk
                return
        for key in keys:
            draft = self.run.proposer.draft(key)
            self._overlap[key] = self._acceptance(key)
            self._ce_gap[key] = draft.ce_gap_nats
            self._psi_bytes = max(self._psi_bytes, draft.psi_bytes)

    def close(self) -> str | None:
        for chain in self.chains:
            if chain.file is not None:
                chain.file.close()
        if self._parquet is not None and self._parquet.started:
            finish_parquet(self._parquet)
        only = self.chains[0].file
        return only.hexdigest() if len(self.chains) == 1 and only is not None else None

    def tokens(self) -> int:
        return sum(chain.tally.tokens for chain in self.chains)

    def key_visits(self) -> Visits:
        """The keys the verifier ran at (every chain's verified positions) and how often."""
        keys = np.array(sorted(self._visits), dtype=np.int64)
        counts = np.array([self._visits[k] for k in keys.tolist()], dtype=np.float64)
        crafted, psi = self._crafted, self.run.proposer.psi_spec
        if crafted is None or psi is None:
            return Visits(keys, counts)
        losses = crafted_losses(crafted.moves, crafted.metrics, psi, keys)  # no draft kept: none crafted again
        return Visits(keys, counts) if losses is None else Visits(keys, counts, losses=lambda _: losses)

    def complete(self) -> bool:
        return all(chain.tally.tokens >= self.run.config.steps for chain in self.chains)

    def statistics(self) -> dict[str, Any]:
        if len(self.chains) == 1:
            return self._chain_statistics(self.chains[0])
        per_chain = [self._chain_statistics(chain) for chain in self.chains]
        for b, stats in enumerate(per_chain):
            if self.telemetry != "none":
                write_json_atomic(chain_dir(self.run_dir, b) / SUMMARY_FILE,
                                  {**stats, "chain": b, "interrupted": not self.chains[b].tally.tokens
                                   >= self.run.config.steps})
        return self._pooled(per_chain)

    def _pooled(self, per_chain: list[dict[str, Any]]) -> dict[str, Any]:
        """The chains' counts added up, and the spread of their acceptance."""
        blocks = sum(chain.tally.blocks for chain in self.chains)
        tokens = self.tokens()
        if not blocks:
            return {"blocks": 0, "tokens_emitted": 0, "steps": 0, "chains": len(self.chains)}
        pooled = _BlockChain(self.gamma, self.run.target.V, None)
        pooled.verified = sum(c.verified for c in self.chains)
        pooled.accepted_drafts = sum(c.accepted_drafts for c in self.chains)
        pooled.overlap_sum = math.fsum(c.overlap_sum for c in self.chains)
        pooled.ce_gap_sum = math.fsum(c.ce_gap_sum for c in self.chains)
        rates = [s["accept_rate"] for s in per_chain if "accept_rate" in s]
        lengths = np.concatenate([c.tally.accepted_lengths() for c in self.chains])
        cost_ratio = self.run.config.cost_ratio
        chi2 = self._pooled_chi2()
        return {
            "gamma": self.gamma,
            "cost_ratio": cost_ratio,
            "chains": len(self.chains),
            "blocks": blocks,
            "tokens_emitted": tokens,
            "mean_accepted_length": (tokens - blocks) / blocks,
            "mean_accepted_length_se": _finite_or_none(batch_means_se(lengths)),
            "tokens_per_target_call": tokens / blocks,
            "speedup": modelled_speedup(tokens / blocks, self.gamma, cost_ratio),
            "chi2_stat": None if chi2 is None else chi2.stat,
            "chi2_dof": None if chi2 is None else chi2.dof,
            "p_value": None if chi2 is None else chi2.p_value,
            **pooled.acceptance(),
            "accept_rate_min": min(rates),
            "accept_rate_max": max(rates),
            "steps": tokens,
            "psi_bytes_max": max(s["psi_bytes_max"] for s in per_chain if "psi_bytes_max" in s),
            "expected": per_chain[0].get("expected"),  # the stationary expectation: the same for every chain
            **(self._pooled_tree(per_chain, blocks, tokens) if self.n > 1 else {}),
        }

    def _pooled_chi2(self) -> Chi2Result | None:
        """χ² of every chain's emitted tokens together against ``N·π`` (M1's pooled test, `runs.counted`), on a
        bigram chain's keys only (None elsewhere, as each chain's own summary)."""
        if not self.source.keys_are_tokens:
            return None
        counts = np.sum([chain.tally.emitted_counts for chain in self.chains], axis=0).astype(np.float64)
        return pooled_chi2(counts, self.tokens() * self.run.target.pi)

    def _pooled_tree(self, per_chain: list[dict[str, Any]], blocks: int, tokens: int) -> dict[str, Any]:
        """A tree's size and draws over every chain, and the chains' expectations weighted by their blocks."""
        given = [(s["blocks"], s.get("expected_accepted_length_given_starts")) for s in per_chain if s["blocks"]]
        expected = (math.fsum(b * float(v) for b, v in given if v is not None) / blocks
                    if all(v is not None for _, v in given) else None)
        nodes = tree_nodes(self.gamma, self.n)
        return {"drafts": self.n, "verifier": self.run.config.verifier, "tree_nodes_per_block": nodes,
                "psi_per_block": nodes // self.n, "tsu_draws_per_token": nodes * blocks / tokens,
                "expected_accepted_length_given_starts": expected}

    def _chain_statistics(self, chain: _BlockChain) -> dict[str, Any]:
        if chain.tally.blocks == 0:  # stopped before the first chunk: nothing to aggregate
            return {"blocks": 0, "tokens_emitted": 0, "steps": 0}
        target, drafts = self.run.target, self.run.proposer.draft
        is_chain = self.source.keys_are_tokens  # the bigram chain: π is its law and the exact expectation applies
        expectation = (
            block_expectation(*dense_matrices(target.row, drafts, target.V), target.pi, self.gamma)
            if is_chain and target.V <= EXPECTATION_MAX_V and self.n == 1
            else None
        )
        summary = summarise_blocks(chain.tally, target.pi if is_chain else None, self.run.config.cost_ratio,
                                   expectation)
        return {
            **summary,
            "steps": chain.tally.tokens,  # tokens emitted: what a replay of an interrupted run asks for again
            "psi_bytes_max": self._psi_bytes,
            **chain.acceptance(),
            **(self._tree_statistics(chain) if self.plans is not None else {}),
        }

    def _tree_statistics(self, chain: _BlockChain) -> dict[str, Any]:
        """What a token tree adds: its size, TSU draws per token, and the exact expected accepted length."""
        assert self.plans is not None
        nodes = tree_nodes(self.gamma, self.n)
        starts = chain.tally.draft_context_counts
        visited = np.flatnonzero(starts).tolist()
        expected = None
        # An interrupted run stops at once: its summary leaves the exact expectation out (null).
        if len(visited) <= TREE_EXPECTATION_KEYS and chain.tally.tokens >= self.run.config.steps:
            assert self._expectation is not None
            values = [self._expectation(key) for key in visited]
            if all(v is not None for v in values):
                expected = math.fsum(float(starts[k]) * float(v) for k, v in zip(visited, values, strict=True)
                                     if v is not None) / chain.tally.blocks
        return {
            "drafts": self.n,
            "verifier": self.run.config.verifier,
            "tree_nodes_per_block": nodes,
            "psi_per_block": nodes // self.n,  # every internal node's key gets a ψ: 1 + N + ... + N^(γ-1)
            "tsu_draws_per_token": nodes * chain.tally.blocks / chain.tally.tokens,
            "expected_accepted_length_given_starts": expected,
        }

    def extras(self) -> dict[str, Any]:
        return {}
