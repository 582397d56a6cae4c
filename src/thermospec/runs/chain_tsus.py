"""Each chain's own TSUs when the TSU draws for itself (``--tsu thrml --chains B``).

Tables of F(ψ) let B chains share one set of drafts, since a table draw is a
function of the chain's own uniform.  A THRML TSU draws from its own sampler
state (each context's buffered draws), so chains sharing it would take each
other's draws and chain 0 would no longer be the single-chain run.  Chain 0
therefore keeps the run's proposer (the single-chain run's draws, token for
token) and chain b ≥ 1 gets a proposer of the same payloads whose THRML keys
come from its own seed, ``SeedSequence([seed, b])``'s first 32-bit word
(`chain_seed`), sharing the compiled sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from thermospec.engine.batch import chain_stream
from thermospec.runs.prepare import PreparedRun
from thermospec.tsu.drafts import DraftSource
from thermospec.tsu.thrml import ThrmlProposer

__all__ = ["chain_drafts", "chain_seed", "reference_chains"]

C = TypeVar("C")


def chain_seed(seed: int, b: int) -> int:
    """The THRML seed of chain b ≥ 1 (chain 0 samples with the run's seed)."""
    return int(np.random.SeedSequence([seed, b]).generate_state(1)[0])


def chain_drafts(run: PreparedRun, chains: int) -> list[DraftSource] | None:
    """Each chain's drafts when the run's TSUs are THRML's (module docstring), else None (shared tables)."""
    proposer = run.proposer
    if not isinstance(proposer, ThrmlProposer):
        return None
    found: list[DraftSource] = [proposer.draft]
    for b in range(1, chains):
        own = ThrmlProposer(proposer.base, run.target.V, chain_seed(run.config.seed, b))
        own.sampler = proposer.sampler  # the same compiled program; the keys are the chain's own
        found.append(own.draft)
    return found


def reference_chains(run: PreparedRun, chains: int, chain: Callable[[DraftSource, np.random.Generator], C]
                     ) -> list[C]:
    """Each chain's whole run on the per-step reference, chain b with its own drafts and ``chain_stream(seed, b)``.

    `chain(drafts, rng)` runs one chain (one chunk: a TSU that draws for itself runs in one, as the single-chain
    run does).
    """
    drafts = chain_drafts(run, chains) or [run.proposer.draft] * chains
    return [chain(drafts[b], chain_stream(run.config.seed, b)) for b in range(chains)]
