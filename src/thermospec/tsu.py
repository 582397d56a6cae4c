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
compact one over the K ids (`thermospec.compact`) give the same doubles, and
the same uniform draws the same token on both.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from thermospec.payload import Payload, decode_payload
from thermospec.sampling import inverse_cdf

__all__ = ["SimTSU", "draft_cdf", "explicit_probabilities", "proposal_distribution"]


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
    q = np.full(payload.vocab_size, payload.eps, dtype=np.float64)
    q[payload.ids] = explicit_probabilities(payload)
    return q


def draft_cdf(payload: Payload) -> NDArray[np.float64]:
    """The cumulative F(ψ) that every draw inverts: ``n_tail(v) * eps + explicit_cumsum(v)``.

    ``n_tail(v)`` counts the tail tokens ``<= v`` and ``explicit_cumsum(v)`` adds
    the explicit probabilities of the ids ``<= v`` in token order (a running sum
    over V entries that are 0 off the ids, so the same partial sums as over the
    K ids alone).  Equal to ``cumsum(q)`` up to rounding; unlike it, the value at
    any token is available in O(log K) from the ids (`thermospec.compact`).

    Parameters
    ----------
    payload : Payload

    Returns
    -------
    ndarray of float64, shape (V,)
        Non-decreasing (both terms are, and rounding is monotone).
    """
    V = payload.vocab_size
    is_id = np.zeros(V, dtype=np.bool_)
    is_id[payload.ids] = True
    explicit = np.zeros(V, dtype=np.float64)
    explicit[payload.ids] = explicit_probabilities(payload)
    n_tail = np.cumsum(~is_id, dtype=np.int64).astype(np.float64)
    cdf: NDArray[np.float64] = n_tail * payload.eps + np.cumsum(explicit)
    return cdf


class SimTSU:
    """Software stand-in for a TSU: samples F(ψ) and reports the exact ``log q``.

    Parameters
    ----------
    payload : Payload or bytes
        The ψ payload; bytes are decoded and validated first.

    Attributes
    ----------
    payload : Payload
        The decoded payload.
    q : ndarray of float64, shape (V,)
        The whole distribution F(ψ), read-only, for the host's residual step.

    Notes
    -----
    Each draw consumes exactly one float64 uniform of the generator and inverts
    the cumulative distribution of `q` (`draft_cdf`, `thermospec.sampling.inverse_cdf`).

    Examples
    --------
    >>> import numpy as np
    >>> from thermospec import SimTSU, craft_payload
    >>> tsu = SimTSU(craft_payload(np.array([0.5, 0.3, 0.2]), K=2, tau=1.0))
    >>> tokens, log_q = tsu.sample(np.random.default_rng(0), 4)
    >>> bool(np.allclose(log_q, np.log(tsu.q[tokens])))
    True
    """

    samples_payload: ClassVar[bool] = True
    """Whether draws are exactly the inverse-CDF draws of F(ψ) (`draft_cdf`): table-driven paths rely on it."""

    def __init__(self, payload: Payload | bytes) -> None:
        if isinstance(payload, bytes | bytearray | memoryview):
            payload = decode_payload(bytes(payload))
        self.payload = payload
        q = proposal_distribution(payload)
        q.flags.writeable = False
        self.q: NDArray[np.float64] = q
        cdf = draft_cdf(payload)
        cdf.flags.writeable = False
        self.cdf: NDArray[np.float64] = cdf

    def sample(
        self, rng: np.random.Generator, n: int
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Draw `n` tokens from F(ψ).

        Returns
        -------
        tokens : ndarray of int64, shape (n,)
        log_q : ndarray of float64, shape (n,)
            Natural log of F(ψ) at each drawn token.
        """
        tokens = inverse_cdf(self.cdf, rng.random(n))
        return tokens, self.report_log_q(tokens)

    def report_log_q(self, tokens: NDArray[np.int64]) -> NDArray[np.float64]:
        """The ``log q`` this TSU reports with each drawn token: ``log F(ψ)[y]``.

        The host checks every report against F(ψ) (`thermospec.engine.ReportVerifier`);
        a faulty TSU that misreports overrides this method.
        """
        with np.errstate(divide="ignore"):  # -inf, silently, for a token F(ψ) gives probability 0
            log_q: NDArray[np.float64] = np.log(self.q[tokens])
        return log_q

    def draw(self, rng: np.random.Generator) -> tuple[int, float]:
        """Draw one token from F(ψ); return it with its exact ``log q``."""
        tokens, log_q = self.sample(rng, 1)
        return int(tokens[0]), float(log_q[0])
