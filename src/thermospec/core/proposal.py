"""The Thermodynamic Sampling Unit: F(ψ) and its software stand-in `SimTSU`.

A TSU receives only the payload bytes, so everything here is computed from
the decoded payload (float32 fields widened to float64), never from the target
row.  With ``T = (V - K) * eps`` and ``w_i = exp(-codes_i * delta / tau)``::

    q(ids_i) = (1 - T) * w_i / sum_j w_j        q(v) = eps  for v not in ids

Draws invert the cumulative distribution in token order, with the tail part
counted rather than summed (`draft_cdf`)::

    cdf(v) = n_tail(v) * eps + (sum of q over the ids <= v, added in token order)

where ``n_tail(v)`` is the number of tail tokens ``<= v``.  Each value is one
product and one sum of exactly known terms, so a table over all V tokens and a
compact one over the K ids (`thermospec.engine.compact`) give the same doubles, and
the same uniform draws the same token on both.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from thermospec.core.payload import Payload

__all__ = ["draft_cdf", "explicit_probabilities", "proposal_distribution", "proposal_tables"]


def explicit_probabilities(payload: Payload) -> NDArray[np.float64]:
    """F(ψ) on the K ids, in the payload's order: ``(1 - T) * w_i / sum_j w_j``.

    Parameters
    ----------
    payload : Payload

    Returns
    -------
    ndarray of float64, shape (K,)
    """
    # Widen the uint8 codes before negating: -codes on uint8 wraps around.
    logits = -payload.codes.astype(np.float64) * payload.delta / payload.tau
    w = np.exp(logits - logits.max())
    explicit: NDArray[np.float64] = (1.0 - payload.tail_mass) * (w / w.sum())
    return explicit


def proposal_distribution(payload: Payload) -> NDArray[np.float64]:
    """F(ψ): the distribution a TSU programmed with `payload` samples from (SPEC §3).

    Parameters
    ----------
    payload : Payload

    Returns
    -------
    ndarray of float64, shape (V,)
        ``q``, non-negative and summing to 1 up to rounding.
    """
    return _spread(payload, explicit_probabilities(payload))


def _spread(payload: Payload, explicit: NDArray[np.float64]) -> NDArray[np.float64]:
    """F(ψ) over the vocabulary from the explicit probabilities on the ids."""
    q = np.full(payload.vocab_size, payload.eps, dtype=np.float64)
    q[payload.ids] = explicit
    return q


def draft_cdf(payload: Payload) -> NDArray[np.float64]:
    """The cumulative F(ψ) that every draw inverts: ``n_tail(v) * eps + explicit_cumsum(v)``.

    ``n_tail(v)`` counts the tail tokens ``<= v`` and ``explicit_cumsum(v)`` adds
    the explicit probabilities of the ids ``<= v`` in token order (a running sum
    over V entries that are 0 off the ids, so the same partial sums as over the
    K ids alone).  Equal to ``cumsum(q)`` up to rounding; unlike it, the value at
    any token is available in O(log K) from the ids (`thermospec.engine.compact`).

    Parameters
    ----------
    payload : Payload

    Returns
    -------
    ndarray of float64, shape (V,)
        Non-decreasing (both terms are, and rounding is monotone).
    """
    return _cumulative(payload, explicit_probabilities(payload))


def _cumulative(payload: Payload, explicit_on_ids: NDArray[np.float64]) -> NDArray[np.float64]:
    """`draft_cdf` from the explicit probabilities on the ids."""
    V = payload.vocab_size
    is_id = np.zeros(V, dtype=np.bool_)
    is_id[payload.ids] = True
    explicit = np.zeros(V, dtype=np.float64)
    explicit[payload.ids] = explicit_on_ids
    n_tail = np.cumsum(~is_id, dtype=np.int64).astype(np.float64)
    cdf: NDArray[np.float64] = n_tail * payload.eps + np.cumsum(explicit)
    return cdf


def proposal_tables(payload: Payload) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(proposal_distribution(payload), draft_cdf(payload))``, the explicit probabilities computed once."""
    explicit = explicit_probabilities(payload)
    return _spread(payload, explicit), _cumulative(payload, explicit)
