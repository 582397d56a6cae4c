"""A K sweep on a BPE token target: acceptance and overlap against the payload size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thermospec.core.payload import EpsSpec
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import run_chain
from thermospec.targets.bpe import TokenBigramTarget
from thermospec.tsu.bounded import BoundedProposer
from thermospec.tsu.drafts import draft_for_row

__all__ = ["KSweepRow", "k_sweep"]


@dataclass(frozen=True)
class KSweepRow:
    """One line of the K sweep on a token target.

    Attributes
    ----------
    K : int
        Top-K ids per payload.
    psi_bytes : int
        Payload size (the same for every context at this K and V).
    topk_mass, overlap_mass : float
        pi-weighted means over *all* contexts (exact, not sampled).
    ce_gap_nats : float or None
        pi-weighted mean KL(p || q); None if infinite somewhere.
    accept_rate : float
        Measured on a chain of `steps` steps.
    steps : int
    """

    K: int
    psi_bytes: int
    topk_mass: float
    overlap_mass: float
    ce_gap_nats: float | None
    accept_rate: float
    steps: int


def k_sweep(
    target: TokenBigramTarget,
    Ks: list[int],
    steps: int,
    seed: int,
    tau: float = 1.0,
    eps: EpsSpec = "auto",
) -> list[KSweepRow]:
    """Acceptance and overlap vs K: exact pi-weighted metrics over every context, and a measured chain.

    Each K's chain uses ``random_stream(seed, Stream.CHAIN)``, as a ``run`` with that K would.
    """
    import math


    V = target.V
    sums = {k: [0.0, 0.0, 0.0] for k in Ks}
    sizes = dict.fromkeys(Ks, 0)
    for x in range(V):
        p = target.row(x)
        w = float(target.pi[x])
        for k in Ks:
            d = draft_for_row(p, x, k, tau, eps)
            sums[k][0] += w * d.topk_mass
            sums[k][1] += w * d.overlap_mass
            sums[k][2] += w * d.ce_gap_nats
            sizes[k] = max(sizes[k], d.psi_bytes)
    rows = []
    for k in Ks:
        proposer = BoundedProposer(target.row, k, tau, eps, V)
        accepted = 0
        for chunk in run_chain(target.row, target.pi, proposer.draft, steps, random_stream(seed, Stream.CHAIN)):
            accepted += int(np.count_nonzero(chunk.accepted))
        topk, overlap, gap = sums[k]
        rows.append(KSweepRow(K=k, psi_bytes=sizes[k], topk_mass=topk, overlap_mass=overlap,
                              ce_gap_nats=gap if math.isfinite(gap) else None,
                              accept_rate=accepted / steps, steps=steps))
    return rows
