"""Compact per-context tables for sparse targets: O(K + s) work per context, never O(V).

A large-vocabulary target row with ``s`` positive entries (`LazySyntheticTarget`)
and a payload with K ids determine the whole step without any array of V
entries:

- the draft CDF of `thermospec.tsu.draft_cdf` is, at token v,
  ``n_tail(v) * eps + C[k(v)]`` with ``k(v)`` the number of ids ``<= v``, ``C``
  the running sum of their probabilities in token order and
  ``n_tail(v) = v + 1 - k(v)``.  Its value at the j-th id (increasing order) is
  ``(ids[j] - j) * eps + C[j + 1]``; a draw searches those K values, then, if
  the token lies in the gap of tail tokens before that id, the integer n with
  ``n * eps + C[J] > u * total`` (a binary search on a formula: no memory);
- ``p / q`` is 0 off the row's support, so the acceptance test needs the ratio
  on the s support tokens only;
- the residual ``p - min(p, q)`` is 0 off the support too: its running sum over
  the support tokens is the dense running sum at those tokens.

Each value above is the same IEEE operation on the same operands as in the
dense tables of `thermospec.engine.context_tables`, so for the same uniforms
the compact step emits exactly the tokens of the dense step (and of
`thermospec.engine.run_chain_reference`); the tests pin all three.  A step costs
O(log K + log s + log V) comparisons on tables of ``K + s`` entries, whatever V.

The compiled stepper (``compact_chain`` of the optional C extension
``thermospec._kernels``) and the pure-Python fallback (`thermospec.engine.step.python_steps`
on `CompactStepTables`) run the same step;
``THERMOSPEC_KERNEL=python`` selects the fallback.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from thermospec.core.payload import Payload
from thermospec.core.proposal import explicit_probabilities
from thermospec.engine.kernels import Backend, OutputPool, StepCounts, compiled_steps, resolve_backend
from thermospec.engine.step import StepArrays, python_steps
from thermospec.targets.bigram import SupportSource
from thermospec.tsu.drafts import ContextDraft

__all__ = [
    "COMPACT_TABLE_BYTES",
    "CompactStepTables",
    "CompactStepper",
    "CompactTables",
    "SparseRows",
    "compact_source",
    "compact_tables",
    "first_above",
]


COMPACT_TABLE_BYTES = 768 * 1024 * 1024
"""Memory bound of the compact table cache: every context of V = 65,536 for any K (s = 256: at most 10.3 KB each)."""


@dataclass(frozen=True, eq=False)
class SparseRows:
    """A target's rows by their supports, for the compact steppers.

    Attributes
    ----------
    support : callable
        ``support(x)``: row x's increasing tokens of positive probability and their probabilities.
    max_support : int
        Upper bound of any row's support size.
    max_ids : int
        Upper bound of any payload's K (at most `max_support`: ids have p > 0).
    tables : callable, optional
        ``tables(x)``: context x's `CompactTables` when the proposer builds them with its
        drafts (`SparseProposer.tables`); otherwise `compact_source` builds them.
    """

    support: SupportSource
    max_support: int
    max_ids: int
    tables: Callable[[int], CompactTables] | None = None


@dataclass(frozen=True, eq=False)
class CompactTables:
    """One context's step tables, O(K + s) entries.

    Attributes
    ----------
    vocab_size : int
        V.
    ids : ndarray of int64, shape (K,)
        The payload's ids in increasing token order.
    id_cdf : ndarray of float64, shape (K,)
        The draft CDF at each id.
    explicit_cum : ndarray of float64, shape (K + 1,)
        ``explicit_cum[j]``: F(ψ) summed over the first j ids in token order (``[0] = 0``).
    eps : float
        F(ψ) of each tail token.
    draft_total : float
        The draft CDF at token V - 1.
    draft_last : int
        First token where the draft CDF reaches its total (draws are capped there).
    support : ndarray of int64, shape (s,)
        The row's tokens of positive probability, increasing.
    q : ndarray of float64, shape (s,)
        F(ψ) on the support (the values of `thermospec.tsu.proposal_distribution` there).
    ratio : ndarray of float64, shape (s,)
        ``p / q`` on the support (0 where q = 0); 0 elsewhere.
    residual_cum : ndarray of float64, shape (s,)
        Running sum of the residual ``p - min(p, q)`` over the support (of p if that is all 0).
    residual_last : int
        Index into `support` where `residual_cum` reaches its total.
    """

    vocab_size: int
    ids: NDArray[np.int64]
    id_cdf: NDArray[np.float64]
    explicit_cum: NDArray[np.float64]
    eps: float
    draft_total: float
    draft_last: int
    support: NDArray[np.int64]
    q: NDArray[np.float64]
    ratio: NDArray[np.float64]
    residual_cum: NDArray[np.float64]
    residual_last: int


def first_above(ids: list[int], id_cdf: list[float], explicit_cum: list[float], eps: float, V: int,
                 t: float) -> int:
    """First token v whose draft CDF exceeds `t` (V if none): ``bisect_right`` over the dense CDF."""
    J = bisect_right(id_cdf, t)
    lo = ids[J - 1] + 1 if J else 0
    hi = ids[J] if len(ids) > J else V
    if eps > 0 and lo < hi:
        base, shift = explicit_cum[J], 1 - J  # tail token v has CDF float(v + shift) * eps + base
        if float(hi - 1 + shift) * eps + base > t:
            a, b = lo, hi - 1
            while a < b:
                m = (a + b) // 2
                if float(m + shift) * eps + base > t:
                    b = m
                else:
                    a = m + 1
            return a
    return hi


def compact_tables(support: NDArray[np.int64], probs: NDArray[np.float64], payload: Payload) -> CompactTables:
    """Build one context's compact tables from its target row's support and its payload.

    Parameters
    ----------
    support : ndarray of int64, shape (s,)
        Increasing tokens of positive target probability.
    probs : ndarray of float64, shape (s,)
        Their probabilities.
    payload : Payload
        The decoded ψ the TSU runs on (F(ψ) is computed from it alone).

    Returns
    -------
    CompactTables
    """
    V, eps = payload.vocab_size, payload.eps
    order = np.argsort(payload.ids, kind="stable")
    ids = np.asarray(payload.ids, dtype=np.int64)[order]
    q_ids = explicit_probabilities(payload)[order]
    K = int(ids.shape[0])
    explicit_cum = np.zeros(K + 1, dtype=np.float64)
    np.cumsum(q_ids, out=explicit_cum[1:])
    id_cdf = (ids - np.arange(K, dtype=np.int64)).astype(np.float64) * eps + explicit_cum[1:]
    draft_total = float(V - K) * eps + float(explicit_cum[K])
    ids_list, cdf_list, cum_list = ids.tolist(), id_cdf.tolist(), explicit_cum.tolist()
    draft_last = first_above(ids_list, cdf_list, cum_list, eps, V, float(np.nextafter(draft_total, -np.inf)))

    support = np.asarray(support, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    sent = np.searchsorted(support, ids)
    if np.any(sent >= support.shape[0]) or np.any(support[np.minimum(sent, support.shape[0] - 1)] != ids):
        raise ValueError("compact tables: every payload id must be in the row's support (ids have p > 0)")
    q = np.full(support.shape[0], eps, dtype=np.float64)
    q[sent] = q_ids
    ratio = np.zeros_like(p)
    with np.errstate(over="ignore"):  # p / (subnormal q) is +inf, as in the dense table
        np.divide(p, q, out=ratio, where=q > 0)
    residual_cum = np.cumsum(p - np.minimum(p, q))
    if not residual_cum[-1] > 0:
        residual_cum = np.cumsum(p)
    residual_last = int(np.searchsorted(residual_cum, residual_cum[-1], side="left"))
    return CompactTables(
        vocab_size=V, ids=ids, id_cdf=id_cdf, explicit_cum=explicit_cum, eps=eps, draft_total=draft_total,
        draft_last=draft_last, support=support, q=q, ratio=ratio, residual_cum=residual_cum,
        residual_last=residual_last,
    )


def compact_source(support: SupportSource, drafts: Callable[[int], ContextDraft]) -> Callable[[int], CompactTables]:
    """``source(x)``: context x's `CompactTables`, for a TSU that samples F(ψ) of its payload.

    Raises
    ------
    TypeError
        If a draft's TSU samples something else (a fault-injected TSU): its draws
        are not a function of the payload, so only the dense path can run it.
    """

    def source(x: int) -> CompactTables:
        draft = drafts(x)
        if not type(draft.tsu).samples_payload:
            raise TypeError(f"context {x}: {type(draft.tsu).__name__} does not sample F(ψ); use the dense tables")
        tokens, probs = support(x)
        return compact_tables(tokens, probs, draft.tsu.payload)

    return source


class CompactStepTables:
    """A context's `CompactTables` as the step of `thermospec.engine.step` reads them (lists: fast per step).

    The same draft, ratio and residual as the dense tables at every token.
    """

    def __init__(self, tables: CompactTables) -> None:
        self.ids: list[int] = tables.ids.tolist()
        self.id_cdf: list[float] = tables.id_cdf.tolist()
        self.explicit_cum: list[float] = tables.explicit_cum.tolist()
        self.eps, self.V = tables.eps, tables.vocab_size
        self.draft_total, self.draft_last = tables.draft_total, tables.draft_last
        self.support: list[int] = tables.support.tolist()
        self.ratio: list[float] = tables.ratio.tolist()
        self.residual_cum: list[float] = tables.residual_cum.tolist()
        self.residual_last = tables.residual_last
        self.residual_total = float(tables.residual_cum[-1])

    def draft_token(self, u: float) -> int:
        """The TSU's draw for uniform `u`: ``min(bisect_right(draft_cdf, u * total), draft_last)``."""
        y = first_above(self.ids, self.id_cdf, self.explicit_cum, self.eps, self.V, u * self.draft_total)
        return min(y, self.draft_last)

    def ratio_at(self, y: int) -> float:
        """``p(y) / q(y)``: 0 off the support."""
        i = bisect_left(self.support, y)
        return self.ratio[i] if i < len(self.support) and self.support[i] == y else 0.0

    def residual_token(self, u: float) -> int:
        """The token emitted after a rejection, for uniform `u`."""
        return self.support[min(bisect_right(self.residual_cum, u * self.residual_total), self.residual_last)]


class _SlotCache:
    """Compact tables in fixed slots of flat arrays (the compiled stepper's layout), least recently used evicted.

    Slot i holds, with Km = `max_k` and Sm = `max_s`:
    ``floats[i] = [id_cdf (Km) | explicit_cum (Km + 1) | id_ratio (Km) | ratio (Sm) | residual_cum (Sm)]``
    (``id_ratio[j]`` is `ratio` at ``ids[j]``: a draft that lands on an id needs no support search),
    ``tokens[i] = [ids (Km) | support (Sm)]`` (int32),
    ``scalars[i] = [eps, draft_total, residual_total]``, ``counts[i] = [K, s, draft_last, residual_last]``.
    """

    def __init__(self, V: int, source: Callable[[int], CompactTables], max_k: int, max_s: int,
                 max_bytes: int) -> None:
        self.V, self.source, self.max_k, self.max_s = V, source, max_k, max_s
        self.float_width = 3 * max_k + 1 + 2 * max_s
        self.token_width = max_k + max_s
        slot_bytes = 8 * self.float_width + 4 * self.token_width + 8 * 3 + 8 * 4 + 16
        self.slots = max(1, min(V, max_bytes // slot_bytes))
        self.floats = np.zeros((self.slots, self.float_width), dtype=np.float64)
        self.tokens = np.zeros((self.slots, self.token_width), dtype=np.int32)
        self.scalars = np.zeros((self.slots, 3), dtype=np.float64)
        self.counts = np.zeros((self.slots, 4), dtype=np.int64)
        self.slot_of = np.full(V, -1, dtype=np.int64)
        self.context_of = np.full(self.slots, -1, dtype=np.int64)
        self.last_used = np.full(self.slots, -1, dtype=np.int64)
        self.filled = 0
        self.builds = 0

    def load(self, x: int) -> int:
        """Make sure context `x` has a slot; return it."""
        slot = int(self.slot_of[x])
        if slot >= 0:
            return slot
        tb = self.source(x)
        K, s = int(tb.ids.shape[0]), int(tb.support.shape[0])
        if self.max_k < K or s > self.max_s:
            raise ValueError(f"context {x}: {K} ids, {s} support tokens exceed the slots ({self.max_k}, {self.max_s})")
        if self.filled < self.slots:
            slot = self.filled
            self.filled += 1
        else:
            slot = int(np.argmin(self.last_used))
            self.slot_of[self.context_of[slot]] = -1
        km, sm = self.max_k, self.max_s
        row = self.floats[slot]
        row[:K] = tb.id_cdf
        row[km:km + K + 1] = tb.explicit_cum
        row[2 * km + 1:2 * km + 1 + K] = tb.ratio[np.searchsorted(tb.support, tb.ids)]  # ids are in the support
        row[3 * km + 1:3 * km + 1 + s] = tb.ratio
        row[3 * km + 1 + sm:3 * km + 1 + sm + s] = tb.residual_cum
        self.tokens[slot, :K] = tb.ids
        self.tokens[slot, km:km + s] = tb.support
        self.scalars[slot] = (tb.eps, tb.draft_total, float(tb.residual_cum[-1]))
        self.counts[slot] = (K, s, tb.draft_last, tb.residual_last)
        self.slot_of[x] = slot
        self.context_of[slot] = x
        self.last_used[slot] = -1
        self.builds += 1
        return slot


class CompactStepper:
    """Runs one chain chunk by chunk on compact tables (compiled, or the pure-Python fallback).

    The same interface as `thermospec.engine.kernels.ChainStepper`, and the same tokens.

    Parameters
    ----------
    V : int
        Vocabulary size.
    source : callable
        ``source(x)`` gives context x's `CompactTables`.
    max_k, max_s : int
        Upper bounds of the ids and support sizes of any context.
    backend : {"auto", "compiled", "python"}
    max_bytes : int
        Memory bound of the table cache.
    """

    def __init__(self, V: int, source: Callable[[int], CompactTables], max_k: int, max_s: int,
                 backend: Backend = "auto", max_bytes: int = COMPACT_TABLE_BYTES) -> None:
        self.module = resolve_backend(backend)
        self.V = V
        self.clock = 0
        self.pool = OutputPool()
        self.cache = _SlotCache(V, source, max_k, max_s, max_bytes) if self.module is not None else None
        self.source = source
        self.lists: OrderedDict[int, CompactStepTables] = OrderedDict()
        self.max_lists = max(1, max_bytes // (64 * (2 * max_k + 3 * max_s) + 1024))
        self._uniforms = np.empty((0, 3), dtype=np.float64)

    @property
    def backend(self) -> str:
        """"compiled" or "python"."""
        return "python" if self.module is None else "compiled"

    def _list_tables(self, x: int) -> CompactStepTables:
        found = self.lists.get(x)
        if found is not None:
            self.lists.move_to_end(x)
            return found
        found = self.lists[x] = CompactStepTables(self.source(x))
        if len(self.lists) > self.max_lists:
            self.lists.popitem(last=False)
        return found

    counts_in_kernel = False
    """The compact kernel keeps no counts: the run counts each chunk (`engine.chain.Stepper`)."""

    def preload_for(self, steps: int) -> bool:
        """Never: the compact tables are built as contexts are met, and every chunk is recorded."""
        return False

    def draw_steps(self, rng: np.random.Generator, n: int, x: int, counts: StepCounts | None = None,
                   record: bool = True) -> tuple[StepArrays, int]:
        """Run `n` steps on the uniforms ``rng.random((n, 3))`` (drawn into a buffer kept between chunks).

        Raises
        ------
        ValueError
            Given `counts`: this stepper keeps none (`counts_in_kernel` is False).
        """
        if counts is not None:
            raise ValueError("draw_steps: the compact stepper keeps no counts (counts_in_kernel is False)")
        if self._uniforms.shape[0] < n:
            self._uniforms = np.empty((n, 3), dtype=np.float64)
        uniforms = self._uniforms[:n]
        rng.random(out=uniforms)
        return self.steps(uniforms, x)

    def steps(self, u: NDArray[np.float64], x: int) -> tuple[StepArrays, int]:
        """Run one chunk: row t of `u` holds step t's three uniforms; start from context `x`."""
        if self.module is None or self.cache is None:
            arrays, x = python_steps(self._list_tables, u, x)
            self.clock += u.shape[0]
            return arrays, x
        module, c, clock = self.module, self.cache, self.clock

        def chain(u: NDArray[np.float64], out: StepArrays, t: int, x: int) -> tuple[int, int]:
            step: tuple[int, int] = module.compact_chain(
                c.floats, c.tokens, c.scalars, c.counts, c.slot_of, c.last_used, u, *out, self.V, c.max_k, c.max_s,
                t, u.shape[0], x, clock,
            )
            return step

        arrays, x = compiled_steps(u, x, c.load, chain, u.shape[0], self.pool.take(u.shape[0]))
        self.clock += u.shape[0]
        return arrays, x
