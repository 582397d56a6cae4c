"""Exact long-run statistics of γ-token blocks (Leviathan et al. 2023) along the bigram chain.

With ``M[c, y] = min(p(y|c), q(y|c))`` (the probability that a draft from context
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

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["BlockExpectation", "block_expectation", "expected_tokens_iid", "modelled_speedup"]


EXPECTATION_MAX_V = 4096


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
    P: NDArray[np.float64],
    Q: NDArray[np.float64],
    pi: NDArray[np.float64],
    gamma: int,
    tol: float = 1e-14,
    max_iter: int = 100_000,
) -> BlockExpectation:
    """The exact expected accepted length along the chain (method in the module docstring).

    Works on dense ``V x V`` matrices, so it is meant for ``V <= EXPECTATION_MAX_V``.

    Parameters
    ----------
    P, Q : ndarray of float64, shape (V, V)
        The target's rows ``p(. | x)`` and the drafts' ``F(ψ(x))``, one context per row.
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
    M = np.minimum(P, Q)
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
