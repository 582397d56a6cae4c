"""The exact laws the run-options matrix (`tests/test_matrix.py`) checks a run's records against.

A run's records are walked from their first key with the source's own ``advance``, so every emitted
token is paired with the key it was emitted in (and each record's key field is checked against the walk).
Against those pairs:

* exactness: the pooled per-key χ² against ``p(. | key)`` (`core.statistics.context_chi2`), and the same
  counts against the row of the next visited key (a verifier handed the wrong row), which must fail;
* acceptance, one target call per step: the accepted steps against ``Σ α(key)`` over the steps, α the exact
  acceptance at the key (``Σ min(p, q)`` for one draft, the verifier's for N); given its key a step's
  acceptance is a Bernoulli(α) draw, so the standard error is ``sqrt(Σ α (1 - α))``;
* acceptance, blocks and trees: each block's accepted length against ``E_γ(key)`` of its first key, the
  dynamic program ``E_d(c) = Σ_y a_c(y) (1 + E_{d-1}(c·y))`` written out here (``a_c = min(p, q)`` for one
  draft per level, `VerifierPlan.accepted_law` for N); the differences are martingale differences, so
  their mean is within a few standard errors of 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.core.statistics import Chi2Result, context_chi2
from thermospec.core.verifiers import make_plan
from thermospec.engine.keys import ContextSource, OrderSource
from thermospec.engine.pairs import PairCounts
from thermospec.tsu.drafts import DraftSource

Record = dict[str, Any]


@dataclass
class KeyLaw:
    """Exact per-key acceptance of one verifier on one context source, memoised across the runs that share it.

    Parameters
    ----------
    source : ContextSource
        The keys, their rows and moves.
    drafts : DraftSource
        ψ of each key; its TSU's ``q`` is F(ψ).
    verifier : str
        The N-draft verifier (ignored for one draft).
    n : int
        Drafts per step or per tree level (1: one draft, the M1 rule).
    """

    source: ContextSource
    drafts: DraftSource
    verifier: str
    n: int
    _law: dict[int, NDArray[np.float64]] = field(default_factory=dict, repr=False)
    _length: dict[tuple[int, int], float] = field(default_factory=dict, repr=False)

    def accepted(self, key: int) -> NDArray[np.float64]:
        """``a(y)``: the probability that the step at `key` accepts a draft and it is y (sums to α)."""
        found = self._law.get(key)
        if found is None:
            p, q = self.source.row(key), self.drafts(key).tsu.q
            found = np.minimum(p, q) if self.n == 1 else make_plan(self.verifier, p, q, self.n).accepted_law()
            self._law[key] = found
        return found

    def acceptance(self, key: int) -> float:
        """α(key): the exact acceptance of one step at `key`."""
        return float(self.accepted(key).sum())

    def length(self, key: int, depth: int) -> float:
        """``E_depth(key)``: the exact expected accepted length of a block of `depth` levels from `key`."""
        if depth == 0:
            return 0.0
        found = self._length.get((key, depth))
        if found is None:
            law = self.accepted(key)
            if self.source.token_free:  # teacher-forced: every token leads to the same key
                found = float(law.sum()) * (1.0 + self.length(self.source.advance(key, 0), depth - 1))
            else:
                support = np.flatnonzero(law > 0).tolist()
                found = math.fsum(float(law[y]) * (1.0 + self.length(self.source.advance(key, y), depth - 1))
                                  for y in support)
            self._length[(key, depth)] = found
        return found


def first_key(source: ContextSource, value: Any) -> int:
    """The key a record names: a token id or position as is, an order-N context by its text."""
    if isinstance(source, OrderSource):
        vocabulary = source.target.vocabulary
        return source.target.context_id([vocabulary.index(ch) for ch in str(value)])
    return int(value)


def step_pairs(records: Sequence[Record], source: ContextSource, key_field: str
               ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(key, emitted token) of each one-call step, walking from the first record's key.

    Raises AssertionError where a record's `key_field` is not the walked key.
    """
    keys, tokens = [], []
    key = first_key(source, records[0][key_field])
    for i, record in enumerate(records):
        assert source.key_json(key) == json.dumps(record[key_field]), (i, key_field, record, key)
        token = int(record["emitted_token"])
        keys.append(key)
        tokens.append(token)
        key = source.advance(key, token)
    return np.array(keys, dtype=np.int64), np.array(tokens, dtype=np.int64)


def block_pairs(records: Sequence[Record], source: ContextSource
                ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """(key, token) of every emitted token, and each block's first key and accepted length.

    Raises AssertionError where a block's ``context`` is not the walked key.
    """
    keys, tokens, starts, lengths = [], [], [], []
    key = first_key(source, records[0]["context"])
    for i, record in enumerate(records):
        assert source.key_json(key) == json.dumps(record["context"]), (i, record, key)
        starts.append(key)
        lengths.append(int(record["accepted_length"]))
        for token in record["emitted"]:
            keys.append(key)
            tokens.append(int(token))
            key = source.advance(key, int(token))
    return (np.array(keys, dtype=np.int64), np.array(tokens, dtype=np.int64), np.array(starts, dtype=np.int64),
            np.array(lengths, dtype=np.int64))


def exactness(keys: NDArray[np.int64], tokens: NDArray[np.int64], source: ContextSource
              ) -> tuple[Chi2Result, Chi2Result]:
    """The pooled per-key χ² against the right rows, and of the same counts against the next visited key's row."""
    pairs = PairCounts(source.V)
    pairs.add(keys, tokens)
    right = context_chi2(pairs.contexts(), source.row)
    seen = np.unique(keys).tolist()
    other = {k: seen[(i + 1) % len(seen)] for i, k in enumerate(seen)}
    wrong = context_chi2(pairs.contexts(), lambda k: source.row(other[k]))
    return right, wrong


@dataclass(frozen=True)
class Deviation:
    """A measured total against its exact expectation: ``z = (measured - expected) / se``."""

    measured: float
    expected: float
    se: float

    @property
    def z(self) -> float:
        """The deviation in standard errors (0 when both agree to rounding and the SE is 0)."""
        gap = self.measured - self.expected
        return 0.0 if abs(gap) < 1e-9 else gap / self.se if self.se > 0 else math.inf


def step_acceptance(keys: NDArray[np.int64], accepted: Sequence[bool], law: KeyLaw) -> Deviation:
    """Mean acceptance of the steps against the mean of α over their keys (each key weighted by its visits)."""
    alpha = np.array([law.acceptance(k) for k in keys.tolist()], dtype=np.float64)
    n = alpha.size
    return Deviation(measured=float(np.sum(accepted)) / n, expected=float(alpha.mean()),
                     se=float(np.sqrt(np.sum(alpha * (1.0 - alpha)))) / n)


def block_length(starts: NDArray[np.int64], lengths: NDArray[np.int64], law: KeyLaw, gamma: int) -> Deviation:
    """Mean accepted length of the blocks against the mean of ``E_γ`` over their first keys."""
    exact = np.array([law.length(k, gamma) for k in starts.tolist()], dtype=np.float64)
    diff = lengths - exact
    return Deviation(measured=float(lengths.mean()), expected=float(exact.mean()),
                     se=float(diff.std(ddof=1) / np.sqrt(diff.size)))

