"""Where the acceptance goes, in every summary (issue 17): the draft model, the top-K cut, the 8-bit codes.

Per verified position, with ``p`` the target's row, ``d`` the row ψ was crafted from (``d = p``
without a draft source) and ``d_K`` the proposal ψ would program with exact codes
(`thermospec.core.losses`)::

    loss_draft_model  = 1 - sum min(p, d)
    loss_top_k        = sum min(p, d) - sum min(p, d_K)
    loss_quantisation = sum min(p, d_K) - sum min(p, F(ψ))

averaged over the run's verified positions as ``mean_overlap`` is; they add up to
``1 - sum min(p, F(ψ))``, the one-draft loss.  ``d_K`` and F(ψ) share ψ's ids, ε and τ, so
they put the same mass ε on every other token and differ on the K ids only:
``loss_quantisation`` needs ``p`` and ``d`` at the ids (O(K) a key), ``loss_draft_model`` the
draft's ``draft_overlap`` (kept when ψ was crafted) and ``loss_top_k`` is the rest of the
one-draft loss.  With N drafts or token trees ``gain_drafts`` = ``mean_overlap`` minus the
one-draft overlap says what the extra drafts win.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.core.losses import exact_codes_explicit
from thermospec.core.proposal import explicit_probabilities
from thermospec.tsu.drafts import Proposer

__all__ = ["LOSS_KEYS", "acceptance_losses_of"]

LOSS_KEYS = ("loss_draft_model", "loss_top_k", "loss_quantisation")

Row = Callable[[int], NDArray[np.float64]]


def _key_losses(proposer: Proposer, key: int) -> tuple[float, float, float]:
    """``(loss_draft_model, loss_top_k, loss_quantisation)`` of one key's one-draft step."""
    draft = proposer.draft(key)
    payload = draft.payload
    ids = payload.ids
    p_ids = proposer.row(key)[ids]
    d_ids = p_ids if proposer.draft_row is None else proposer.draft_row(key)[ids]
    exact = exact_codes_explicit(payload, d_ids)
    quantised = explicit_probabilities(payload)
    quantisation = float(np.minimum(p_ids, exact).sum() - np.minimum(p_ids, quantised).sum())
    draft_model = 1.0 - draft.draft_overlap
    return draft_model, (1.0 - draft.overlap_mass) - draft_model - quantisation, quantisation


def acceptance_losses_of(proposer: Proposer, keys: NDArray[np.int64], visits: NDArray[np.float64],
                         mean_overlap: float | None, drafts: int) -> dict[str, Any]:
    """The summary keys of the loss split over the verified positions (`keys` visited `visits` times each).

    Parameters
    ----------
    proposer : Proposer
        The run's drafts (their one-draft metrics, the rows ψ was crafted from).
    keys, visits
        The keys the verifier ran at and how often.
    mean_overlap : float or None
        The summary's ``mean_overlap`` (the N-draft verifier's acceptance with ``drafts`` > 1).
    drafts : int
        Drafts per verified position (``gain_drafts`` is added when > 1).

    Returns
    -------
    dict
        ``loss_draft_model``, ``loss_top_k``, ``loss_quantisation`` (null without a verified
        position) and, with N drafts, ``gain_drafts``.
    """
    total = float(np.sum(visits))
    if total <= 0:
        return dict.fromkeys(LOSS_KEYS) | ({"gain_drafts": None} if drafts > 1 else {})
    per = [_key_losses(proposer, int(k)) for k in keys.tolist()]
    weights = [float(n) for n in visits.tolist()]
    means = [math.fsum(w * losses[i] for w, losses in zip(weights, per, strict=True)) / total for i in range(3)]
    out: dict[str, Any] = dict(zip(LOSS_KEYS, means, strict=True))
    if drafts > 1:
        one_draft = 1.0 - math.fsum(means)
        out["gain_drafts"] = None if mean_overlap is None else mean_overlap - one_draft
    return out
