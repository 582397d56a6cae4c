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
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.core.losses import exact_codes_explicit
from thermospec.core.payload import EpsSpec
from thermospec.core.proposal import explicit_probabilities
from thermospec.tsu.drafts import Proposer
from thermospec.tsu.row_drafts import top_k

__all__ = ["LOSS_KEYS", "Visits", "acceptance_losses_of", "block_losses", "row_losses", "visits_of"]

LOSS_KEYS = ("loss_draft_model", "loss_top_k", "loss_quantisation")


@dataclass(frozen=True)
class Visits:
    """The keys a run's verifier ran at and how often (every chain's), as a mode reports them.

    Attributes
    ----------
    keys : ndarray of int64
    counts : ndarray of float64
    rows : callable, optional
        The target's rows of an array of keys, when the mode has them faster than one by one.
    losses : callable, optional
        The three losses of an array of keys, shape (keys, 3), when the mode has them already
        (`row_losses` of their rows, ψ crafted from the target's rows): then neither rows nor drafts are read.
    """

    keys: NDArray[np.int64]
    counts: NDArray[np.float64]
    rows: Callable[[NDArray[np.int64]], NDArray[np.float64]] | None = None
    losses: Callable[[NDArray[np.int64]], NDArray[np.float64]] | None = None


def visits_of(counts: NDArray[Any]) -> Visits:
    """The visits of a per-key count array (keys 0 .. len - 1, unvisited ones left out)."""
    keys = np.flatnonzero(counts)
    return Visits(keys, counts[keys].astype(np.float64))

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


BLOCK_BYTES = 1 << 25
"""About how many bytes of rows are taken at once (32 MiB: 16 rows of V = 262,144, 64,000 of V = 65)."""


def block_losses(P: NDArray[np.float64], D: NDArray[np.float64] | None, K: int, tau: float, eps: EpsSpec
                 ) -> NDArray[np.float64] | None:
    """The three losses of m keys at once, shape (m, 3), with ψ crafted from `D` (None: from `P`) as
    `thermospec.core.payload.craft_payload` crafts it (`thermospec.tsu.row_drafts` is pinned to it);
    None when a row has a zero or a field is out of range (then key by key)."""
    m, V = P.shape
    fields = top_k(P if D is None else D, K, tau, eps)
    if fields is None:
        return None
    k, ell, delta, codes, tau32, eps32 = fields.k, fields.ell, fields.delta, fields.codes, fields.tau, fields.eps
    explicit_mass = (1.0 - (V - k) * eps32)[:, None]
    logits = -codes * delta[:, None] / tau32
    quantised = np.exp(logits - logits.max(axis=1, keepdims=True))
    quantised *= explicit_mass / quantised.sum(axis=1, keepdims=True)
    exact = np.exp(ell / tau32 - (ell / tau32).max(axis=1, keepdims=True))
    exact *= explicit_mass / exact.sum(axis=1, keepdims=True)
    p_ids = fields.top if D is None else P.reshape(-1)[fields.at].reshape(m, k)  # P at ψ's ids
    quantisation = np.minimum(p_ids, exact).sum(axis=1) - np.minimum(p_ids, quantised).sum(axis=1)
    overlap = (np.minimum(P, eps32[:, None]).sum(axis=1) - np.minimum(p_ids, eps32[:, None]).sum(axis=1)
               + np.minimum(p_ids, quantised).sum(axis=1))
    draft_model = np.zeros(m) if D is None else 1.0 - np.minimum(P, D).sum(axis=1)
    out: NDArray[np.float64] = np.stack([draft_model, 1.0 - overlap - draft_model - quantisation, quantisation],
                                        axis=1)
    return out


BLOCK_ROWS = 1 << 12
"""Rows per `row_losses` block (4,096: its temporaries stay in cache at small V)."""


def row_losses(rows: Callable[[NDArray[np.int64]], NDArray[np.float64]], keys: NDArray[np.int64], K: int, tau: float,
               eps: EpsSpec) -> NDArray[np.float64] | None:
    """The losses of `keys` (shape (keys, 3)) with ψ crafted from their own `rows` (no draft model, one K),
    `BLOCK_ROWS` rows at a time: bit for bit `_blocked`'s, each row's losses being its own whatever its
    block; None where a block has a row `block_losses` leaves to the per-key path."""
    parts: list[NDArray[np.float64]] = []
    for first in range(0, keys.shape[0], BLOCK_ROWS):
        block = block_losses(rows(keys[first:first + BLOCK_ROWS]), None, K, tau, eps)
        if block is None:
            return None
        parts.append(block)
    return np.concatenate(parts) if parts else np.zeros((0, 3))


def _kept(proposer: Proposer, keys: NDArray[np.int64]) -> list[tuple[float, float, float]]:
    """The losses of `keys` from their kept drafts: payload fields gathered, then the K ids of all at once."""
    drafts = [proposer.draft(k) for k in keys.tolist()]
    out: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * len(drafts)
    by_K: dict[int, list[int]] = {}
    for i, draft in enumerate(drafts):
        by_K.setdefault(draft.payload.K, []).append(i)
    for members in by_K.values():
        payloads = [drafts[i].payload for i in members]
        ids = np.stack([payload.ids for payload in payloads])
        p_ids = np.stack([proposer.row(int(keys[i]))[ids[j]] for j, i in enumerate(members)])
        draft_row = proposer.draft_row
        d_ids = p_ids if draft_row is None else np.stack([draft_row(int(keys[i]))[ids[j]]
                                                          for j, i in enumerate(members)])
        explicit_mass = np.array([1.0 - payload.tail_mass for payload in payloads])[:, None]
        tau = np.array([payload.tau for payload in payloads])[:, None]
        logits = -np.stack([payload.codes for payload in payloads]).astype(np.float64) * np.array(
            [payload.delta for payload in payloads])[:, None] / tau  # widened before negating (uint8 codes)
        quantised = np.exp(logits - logits.max(axis=1, keepdims=True))
        quantised *= explicit_mass / quantised.sum(axis=1, keepdims=True)
        ell = np.log(d_ids)
        ell = (ell - ell[:, :1]) / tau
        exact = np.exp(ell - ell.max(axis=1, keepdims=True))
        exact *= explicit_mass / exact.sum(axis=1, keepdims=True)
        quantisation = (np.minimum(p_ids, exact).sum(axis=1) - np.minimum(p_ids, quantised).sum(axis=1)).tolist()
        for j, i in enumerate(members):
            draft_model = 1.0 - drafts[i].draft_overlap
            out[i] = (draft_model, (1.0 - drafts[i].overlap_mass) - draft_model - quantisation[j], quantisation[j])
    return out


def _blocked(proposer: Proposer, keys: NDArray[np.int64], rows: Callable[[NDArray[np.int64]], NDArray[np.float64]]
             ) -> NDArray[np.float64]:
    """The losses of `keys` on their rows, shape (keys, 3), `BLOCK_BYTES` at a time (key by key where a block
    cannot be)."""
    parts: list[NDArray[np.float64]] = []
    block_rows = max(1, BLOCK_BYTES // (8 * proposer.draft(int(keys[0])).payload.vocab_size)) if keys.size else 1
    for first in range(0, keys.shape[0], block_rows):
        block = keys[first:first + block_rows]
        draft_row = proposer.draft_row
        D = None if draft_row is None else np.stack([draft_row(k) for k in block.tolist()])
        found = block_losses(rows(block), D, proposer.K, proposer.tau, proposer.eps)
        if found is None:
            found = np.array([_key_losses(proposer, int(k)) for k in block.tolist()], dtype=np.float64).reshape(-1, 3)
        parts.append(found)
    return np.concatenate(parts) if parts else np.zeros((0, 3))


def acceptance_losses_of(proposer: Proposer, visits: Visits, mean_overlap: float | None, drafts: int
                         ) -> dict[str, Any]:
    """The summary keys of the loss split over the verified positions.

    Parameters
    ----------
    proposer : Proposer
        The run's drafts (their one-draft metrics, the rows ψ was crafted from).
    visits : Visits
        The keys the verifier ran at and how often.  Key by key on the run's drafts (O(K) a key
        once its row is read); where the mode gives the rows at once (``visits.rows``: order-N
        contexts, whose drafts were crafted in blocks and not kept), `BLOCK_BYTES` of rows at a
        time (`block_losses`, crafting ψ again).
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
    keys, rows = visits.keys, visits.rows
    total = float(np.sum(visits.counts))
    if total <= 0:
        return dict.fromkeys(LOSS_KEYS) | ({"gain_drafts": None} if drafts > 1 else {})
    if visits.losses is not None:  # the mode's own, ψ crafted from the target's rows
        per = visits.losses(keys)
    elif rows is None or proposer.K_of is not None:  # on the drafts the run kept: O(K) a key, once its row is read
        per = np.array(_kept(proposer, keys), dtype=np.float64).reshape(-1, 3)
    else:
        per = _blocked(proposer, keys, rows)
    weights = visits.counts.astype(np.float64)  # each product rounds as a Python float's would; fsum is exact
    means = [math.fsum((weights * per[:, i]).tolist()) / total for i in range(3)]
    out: dict[str, Any] = dict(zip(LOSS_KEYS, means, strict=True))
    if drafts > 1:
        one_draft = 1.0 - math.fsum(means)
        out["gain_drafts"] = None if mean_overlap is None else mean_overlap - one_draft
    return out
