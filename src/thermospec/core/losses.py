"""Where the one-draft acceptance goes: the draft model, the top-K cut and the 8-bit codes.

With ``p`` the target row, ``d`` the row ψ is crafted from (``d = p`` without a
draft model), ``q = F(ψ)`` and ``d_K`` the proposal ψ would program if its codes
were exact (`exact_codes_proposal`)::

    loss_draft_model  = 1 - sum min(p, d)
    loss_top_k        = sum min(p, d) - sum min(p, d_K)
    loss_quantisation = sum min(p, d_K) - sum min(p, q)

The three add up to ``1 - sum min(p, q)``, the one-draft rejection probability.
Each is signed: a flattened tail or ``τ != 1`` can overlap ``p`` more than ``d``
does.  ``d_K`` keeps everything ψ sends but the codes: the same ids, ε (hence the
tail mass T) and τ, with ``w_i = exp((log d_i - log d_top) / τ)`` in place of
``exp(-codes_i * δ / τ)``, normalised as F(ψ) is (`thermospec.core.proposal`).

Overlaps are summed as `thermospec.core.metrics.overlap_mass` sums them (dense
rows), or over the target's support (sparse rows): the same numbers up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from thermospec.core.metrics import overlap_mass
from thermospec.core.payload import Payload
from thermospec.core.proposal import explicit_probabilities, proposal_distribution

__all__ = [
    "AcceptanceLosses",
    "acceptance_losses",
    "acceptance_losses_from_support",
    "draft_overlap",
    "exact_codes_explicit",
    "exact_codes_proposal",
]


@dataclass(frozen=True)
class AcceptanceLosses:
    """The three overlaps of one step; the losses are their differences.

    Attributes
    ----------
    draft_overlap : float
        ``sum min(p, d)``: what a draft model's exact row would be accepted with (1 when ``d = p``).
    top_k_overlap : float
        ``sum min(p, d_K)``: the same with ψ's ids, ε and τ but exact codes.
    overlap : float
        ``sum min(p, F(ψ))``: the one-draft acceptance probability.
    """

    draft_overlap: float
    top_k_overlap: float
    overlap: float

    @property
    def loss_draft_model(self) -> float:
        """``1 - sum min(p, d)``; 0 when ψ is crafted from the target's own row."""
        return 1.0 - self.draft_overlap

    @property
    def loss_top_k(self) -> float:
        """``sum min(p, d) - sum min(p, d_K)``: what the top-K cut, the flat tail and τ cost (signed)."""
        return self.draft_overlap - self.top_k_overlap

    @property
    def loss_quantisation(self) -> float:
        """``sum min(p, d_K) - sum min(p, F(ψ))``: what the 8-bit codes cost (signed)."""
        return self.top_k_overlap - self.overlap

    @property
    def total(self) -> float:
        """The sum of the three losses, ``1 - sum min(p, F(ψ))`` up to rounding."""
        return self.loss_draft_model + self.loss_top_k + self.loss_quantisation


def draft_overlap(p: NDArray[np.float64], d: NDArray[np.float64]) -> float:
    """``sum min(p, d)``: the probability that a draft from the draft model's row ``d`` is accepted.

    Exactly 1 when ``d`` equals ``p`` (``sum p`` is 1 up to rounding): a run without
    a draft model has ``loss_draft_model = 0``, not a rounding error.
    """
    p = np.asarray(p, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    return 1.0 if np.array_equal(p, d) else overlap_mass(p, d)


def exact_codes_explicit(payload: Payload, d_top: NDArray[np.float64]) -> NDArray[np.float64]:
    """``d_K`` on the payload's K ids: `explicit_probabilities` with exact log-probabilities for the codes.

    Parameters
    ----------
    payload : Payload
        The ψ crafted from ``d``.
    d_top : ndarray of float64, shape (K,)
        ``d`` at ``payload.ids``, in the payload's order (all > 0: ψ sends no token of
        probability 0).

    Returns
    -------
    ndarray of float64, shape (K,)
        ``(1 - T) * w_i / sum_j w_j`` with ``w_i = exp((log d_i - log d_top) / τ)``.
    """
    d_top = np.asarray(d_top, dtype=np.float64)
    if d_top.shape != payload.ids.shape or np.any(d_top <= 0):
        raise ValueError(f"d_top: need {payload.K} positive probabilities at the payload's ids, got {d_top.shape}")
    logd = np.log(d_top)
    logits = (logd - logd[0]) / payload.tau
    w = np.exp(logits - logits.max())
    explicit: NDArray[np.float64] = (1.0 - payload.tail_mass) * (w / w.sum())
    return explicit


def exact_codes_proposal(payload: Payload, d: NDArray[np.float64]) -> NDArray[np.float64]:
    """``d_K`` over the vocabulary: `proposal_distribution` with ``d``'s exact log-probabilities as codes.

    Parameters
    ----------
    payload : Payload
        The ψ crafted from ``d``.
    d : ndarray of float64, shape (V,)
        The row ψ was crafted from.

    Returns
    -------
    ndarray of float64, shape (V,)
        ``eps`` off the ids, `exact_codes_explicit` on them.
    """
    d = np.asarray(d, dtype=np.float64)
    if d.shape != (payload.vocab_size,):
        raise ValueError(f"d: need a row of V = {payload.vocab_size} probabilities, got shape {d.shape}")
    q = np.full(payload.vocab_size, payload.eps, dtype=np.float64)
    q[payload.ids] = exact_codes_explicit(payload, d[payload.ids])
    return q


def acceptance_losses(p: NDArray[np.float64], d: NDArray[np.float64], payload: Payload) -> AcceptanceLosses:
    """The three overlaps (hence losses) of one step with dense rows.

    Parameters
    ----------
    p : ndarray of float64, shape (V,)
        The target row the drafts are verified against.
    d : ndarray of float64, shape (V,)
        The row ψ was crafted from (``p`` itself without a draft model).
    payload : Payload
        ψ as the TSU decodes it (`craft_payload` of ``d``).

    Returns
    -------
    AcceptanceLosses

    Examples
    --------
    >>> import numpy as np
    >>> from thermospec.core.payload import craft_payload
    >>> p = np.array([0.5, 0.3, 0.15, 0.05])
    >>> losses = acceptance_losses(p, p, craft_payload(p, K=2, tau=1.0))
    >>> losses.loss_draft_model, round(losses.loss_top_k, 4)
    (0.0, 0.05)
    """
    p = np.asarray(p, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    for name, row in (("p", p), ("d", d)):
        if row.shape != (payload.vocab_size,):
            raise ValueError(f"{name}: need a row of V = {payload.vocab_size} probabilities, got shape {row.shape}")
    return AcceptanceLosses(
        draft_overlap=draft_overlap(p, d),
        top_k_overlap=overlap_mass(p, exact_codes_proposal(payload, d)),
        overlap=overlap_mass(p, proposal_distribution(payload)),
    )


def _values_at(
    tokens: NDArray[np.int64], support: NDArray[np.int64], values: NDArray[np.float64], default: float
) -> NDArray[np.float64]:
    """``values`` looked up at ``tokens`` in a strictly increasing ``support``, ``default`` where absent."""
    out = np.full(tokens.shape, default, dtype=np.float64)
    if support.size:
        where = np.minimum(np.searchsorted(support, tokens), support.size - 1)
        found = support[where] == tokens
        out[found] = values[where[found]]
    return out


def acceptance_losses_from_support(
    p_tokens: NDArray[np.int64], p_probs: NDArray[np.float64],
    d_tokens: NDArray[np.int64], d_probs: NDArray[np.float64], payload: Payload,
) -> AcceptanceLosses:
    """`acceptance_losses` for rows given by their supports, in O((s_p + s_d) log s_d + K log K).

    Parameters
    ----------
    p_tokens, p_probs : ndarray, shape (s_p,)
        The target row's tokens of positive probability (strictly increasing) and their probabilities.
    d_tokens, d_probs : ndarray, shape (s_d,)
        The same for the row ψ was crafted from.
    payload : Payload
        ψ crafted from ``d`` (`craft_payload_from_support`).

    Returns
    -------
    AcceptanceLosses
        The dense function's numbers up to rounding (only ``p``'s support adds to an overlap).
    """
    p_tokens = np.asarray(p_tokens, dtype=np.int64)
    p_probs = np.asarray(p_probs, dtype=np.float64)
    d_tokens = np.asarray(d_tokens, dtype=np.int64)
    d_probs = np.asarray(d_probs, dtype=np.float64)
    if p_tokens.shape != p_probs.shape or d_tokens.shape != d_probs.shape:
        raise ValueError("support: need as many tokens as probabilities for p and for d")
    order = np.argsort(payload.ids)
    ids_sorted = payload.ids[order]
    d_at_ids = _values_at(payload.ids, d_tokens, d_probs, 0.0)
    quantised = explicit_probabilities(payload)[order]
    exact = exact_codes_explicit(payload, d_at_ids)[order]
    d_at_p = _values_at(p_tokens, d_tokens, d_probs, 0.0)
    q_at_p = _values_at(p_tokens, ids_sorted, quantised, payload.eps)
    dk_at_p = _values_at(p_tokens, ids_sorted, exact, payload.eps)
    return AcceptanceLosses(
        draft_overlap=draft_overlap(p_probs, d_at_p),
        top_k_overlap=overlap_mass(p_probs, dk_at_p),
        overlap=overlap_mass(p_probs, q_at_p),
    )
