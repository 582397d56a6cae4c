"""N drafts per target call on per-context tables: a bounded table cache, the compiled stepper and its fallback.

Every verifier's step depends on the context only through tables built once per
context (`core.verifiers.VerifierTables`: recursive rejection's residual after k
rejections is a function of the context, not of the rejected tokens), so a step
is N draft searches, at most N table reads and one residual search, like M1's.
Both paths here perform exactly `engine.drafts.draft_step` on the same ``2N + 1``
uniforms per step (the layout of `engine.drafts`): the compiled kernel
(``_kernels.drafts_chain``) and the pure-Python loop over list tables, used when
the extension is missing or ``THERMOSPEC_KERNEL=python`` is set; the tests pin
both to the per-step reference token for token.

Keys: a step's key chooses its tables and is what the chunk records as ``prev``.
By default the next key is the emitted token (the bigram chain, keys = tokens);
with a next-key table ``next_keys`` (int64, keys × V) it is
``next_keys[key * V + emitted]`` (order-N contexts), the chain kernel's convention;
with a function ``advance(key, emitted)`` (keys met on demand, no table) the
stepper runs the Python loop.

Memory: each key's tables take `draft_slot_bytes` bytes; the cache holds at most
`DEFAULT_TABLE_BYTES` of them (at least one slot), evicting the least recently used.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from thermospec.core.sampling import last_positive
from thermospec.core.verifiers import VerifierTables, table_layout
from thermospec.engine.kernels import (
    DEFAULT_TABLE_BYTES,
    Backend,
    draws_pcg64,
    guide_size,
    guide_table,
    pcg64_state,
    resolve_backend,
    set_pcg64_state,
)

__all__ = [
    "DraftArrays",
    "DraftTableCache",
    "DraftTableSource",
    "DraftsStepper",
    "draft_slot_bytes",
    "drafts_used",
    "guide_rows",
]

DraftTableSource = Callable[[int], tuple[NDArray[np.float64], VerifierTables]]
"""``source(key)``: the key's draft CDF (what its TSU inverts) and its verifier's tables."""

RowTablesSource = Callable[[NDArray[np.int64]], tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]]
"""``rows(keys)``: consecutive keys' draft CDFs (m, V), ratio levels (m, levels, V) and final CDFs (m, V)."""

DraftArrays = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]
"""``(prev, proposed, emitted, index)`` of a chunk: key, first draft, emitted token, accepted draft (−1: none)."""


@dataclass(frozen=True)
class SlotLayout:
    """Sizes of one key's slot: `floats` float64 and `ints` int32 entries (layout in ``_kernels.c``)."""

    V: int
    G: int
    n: int
    levels: int
    selection: bool

    @property
    def walk(self) -> int:
        """Entries of the class walk's ``removal`` and ``up`` (V + 1), 0 when the step selects no class."""
        return self.V + 1 if self.selection and self.n > 1 else 0

    @property
    def floats(self) -> int:
        return (2 + self.levels) * self.V + self.walk

    @property
    def ints(self) -> int:
        return 2 * (self.G + 1) + (2 * self.V + self.walk if self.walk else 0)


def draft_slot_bytes(V: int, n: int, verifier: str, guide: int | None = None) -> int:
    """Bytes of one key's tables for N = n drafts of `verifier` (floats, ints, totals and lasts), with `guide`
    buckets a CDF (default `guide_size`)."""
    levels, selection = table_layout(verifier, n)
    layout = SlotLayout(V, guide_size(V) if guide is None else guide, n, levels, selection)
    return 8 * layout.floats + 4 * layout.ints + 8 * 4 + 8


def drafts_used(index: NDArray[np.int64], n: int, selection: bool) -> NDArray[np.int64]:
    """TSU draws each step needed: N for a selection (it looks at every draft), else ``index + 1`` or N."""
    if selection:
        return np.full(index.shape[0], n, dtype=np.int64)
    return np.where(index < 0, n, index + 1).astype(np.int64)


def guide_rows(cdf: NDArray[np.float64], G: int) -> NDArray[np.int32]:
    """`guide_table` of each row of `cdf` (shape (m, V), each row nondecreasing), the same entries.

    ``guide[k]`` counts the entries ``<= (k / G) * total``: each entry's count of the points below it
    (estimated from its ratio to the total, then corrected against the very points `guide_table`
    computes) says from which bucket on it is counted.
    """
    m = cdf.shape[0]
    points = ((np.arange(G + 1, dtype=np.float64) / G)[None, :] * cdf[:, -1:]).reshape(-1)
    base = np.arange(0, m * (G + 1), G + 1, dtype=np.int64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        guess = np.floor(cdf * (G / cdf[:, -1:]))
    below = np.clip(np.nan_to_num(guess, nan=0.0, posinf=G + 1, neginf=0.0), 0, G + 1).astype(np.int64)
    while True:  # the point at `below` is below the entry: count it
        up = (below <= G) & (points[base + np.minimum(below, G)] < cdf)
        if not up.any():
            break
        below += up
    while True:  # the point before `below` is not below the entry: do not count it
        down = (below > 0) & (points[base + np.maximum(below - 1, 0)] >= cdf)
        if not down.any():
            break
        below -= down
    counts = np.bincount((below + np.arange(0, m * (G + 2), G + 2)[:, None]).reshape(-1), minlength=m * (G + 2))
    guide: NDArray[np.int32] = np.cumsum(counts.reshape(m, G + 2), axis=1)[:, : G + 1].astype(np.int32)
    return guide


def last_positives(cdf: NDArray[np.float64]) -> NDArray[np.int64]:
    """`last_positive` of each row of `cdf` (nondecreasing rows): how many entries lie below the row's last."""
    found: NDArray[np.int64] = np.count_nonzero(cdf < cdf[:, -1:], axis=1).astype(np.int64)
    return found


class DraftTableCache:
    """The keys' tables in fixed slots (the kernel's layout), at most `max_bytes`, least recently used evicted.

    Parameters
    ----------
    keys, V : int
        Number of keys and vocabulary size.
    n : int
        Drafts per step.
    verifier : str
        The verifier (`core.verifiers.VERIFIERS`); fixes the slot layout.
    source : DraftTableSource
    max_bytes : int
    guide : int, optional
        Guide buckets of each CDF, a power of two (default `guide_size`; a draw's answer does not depend on it,
        only its search: a move table's many states take a quarter, as `kernels.TableCache` does).
    """

    def __init__(self, keys: int, V: int, n: int, verifier: str, source: DraftTableSource,
                 max_bytes: int = DEFAULT_TABLE_BYTES, guide: int | None = None) -> None:
        levels, selection = table_layout(verifier, n)
        G = guide_size(V) if guide is None else guide
        if G < 2 or G & (G - 1):
            raise ValueError(f"guide: must be a power of two >= 2, got {G}")
        self.layout = SlotLayout(V, G, n, levels, selection)
        self.keys, self.source = keys, source
        self.slots = max(1, min(keys, max_bytes // draft_slot_bytes(V, n, verifier, G)))
        self.floats = np.zeros((self.slots, self.layout.floats), dtype=np.float64)
        self.ints = np.zeros((self.slots, self.layout.ints), dtype=np.int32)
        self.totals = np.zeros((self.slots, 2), dtype=np.float64)
        self.lasts = np.zeros((self.slots, 2), dtype=np.int64)
        self.slot_of = np.full(keys, -1, dtype=np.int64)
        self.key_of = np.full(self.slots, -1, dtype=np.int64)
        self.last_used = np.full(self.slots, -1, dtype=np.int64)
        self.filled = 0
        self._rows: tuple[RowTablesSource, int] | None = None

    def load_blocks(self, rows: RowTablesSource, block: int) -> bool:
        """From now on, load the whole block of `block` consecutive keys around a key met (`load_rows` of `rows`),
        when every key has a slot of its own and the layout has no class walk; whether it will."""
        if not self.identity or self.layout.walk or block < 1:
            return False
        self._rows = (rows, block)
        return True

    def load(self, key: int) -> int:
        """Make sure `key` has its tables in a slot; return the slot."""
        slot = int(self.slot_of[key])
        if slot >= 0:
            return slot
        if self._rows is not None:  # the key's block, at once
            rows, block = self._rows
            first = key - key % block
            keys = np.arange(first, min(first + block, self.keys), dtype=np.int64)
            keys = keys[self.slot_of[keys] < 0]
            self.load_rows(keys, *rows(keys))
            return key
        draft_cdf, tables = self.source(key)
        lay = self.layout
        V, G = lay.V, lay.G
        if tables.ratios.shape != (lay.levels, V) or tables.selection != lay.selection:
            raise ValueError(f"tables of key {key}: {tables.ratios.shape[0]} ratio levels, selection "
                             f"{tables.selection}; the layout needs {lay.levels} and {lay.selection}")
        if self.identity:  # a slot per key: key k's is slot k (`load_rows` loads them so too)
            slot = key
            self.filled += 1
        elif self.filled < self.slots:
            slot = self.filled
            self.filled += 1
        else:
            slot = int(np.argmin(self.last_used))
            self.slot_of[self.key_of[slot]] = -1
        f, g = self.floats[slot], self.ints[slot]
        f[:V] = draft_cdf
        f[V : (1 + lay.levels) * V] = tables.ratios.reshape(-1)
        f[(1 + lay.levels) * V : (2 + lay.levels) * V] = tables.final_cdf
        g[: G + 1] = guide_table(draft_cdf, G)
        g[G + 1 : 2 * (G + 1)] = guide_table(tables.final_cdf, G)
        if lay.walk:
            M = tables.removal.shape[0] - 1
            f[(2 + lay.levels) * V :] = 0.0
            f[(2 + lay.levels) * V : (2 + lay.levels) * V + M + 1] = tables.removal
            base = 2 * (G + 1)
            g[base : base + V] = tables.rank
            g[base + V : base + V + M] = tables.node_at
            g[base + 2 * V : base + 2 * V + M + 1] = tables.up
        self.totals[slot] = (draft_cdf[-1], tables.final_cdf[-1])
        self.lasts[slot] = (last_positive(draft_cdf), last_positive(tables.final_cdf))
        self.slot_of[key] = slot
        self.key_of[slot] = key
        self.last_used[slot] = -1
        return slot

    @property
    def identity(self) -> bool:
        """Every key has a slot of its own (`load_rows` may load key k into slot k)."""
        return self.slots >= self.keys

    def load_rows(self, keys: NDArray[np.int64], draft_cdf: NDArray[np.float64], ratios: NDArray[np.float64],
                  final_cdf: NDArray[np.float64]) -> None:
        """Load many keys' tables at once, key k into slot k: what `load` writes for each (no class walk).

        `draft_cdf` and `final_cdf` have shape (m, V), `ratios` (m, levels, V).

        Raises
        ------
        ValueError
            Without a slot per key, or for a layout with a class walk.
        """
        lay = self.layout
        V, G, m = lay.V, lay.G, keys.shape[0]
        if not self.identity or lay.walk or ratios.shape != (m, lay.levels, V):
            raise ValueError("load_rows: needs a slot per key, no class walk and (m, levels, V) ratios")
        self.filled += int(np.count_nonzero(self.slot_of[keys] < 0))
        consecutive = bool(m) and np.array_equal(keys, np.arange(keys[0], keys[0] + m))
        at: slice | NDArray[np.int64] = slice(int(keys[0]), int(keys[0]) + m) if consecutive else keys
        f, g = self.floats[at], self.ints[at]  # slices (every block `CraftedDrafts.load_all` loads): views
        f[:, :V] = draft_cdf
        f[:, V : (1 + lay.levels) * V] = ratios.reshape(m, -1)
        f[:, (1 + lay.levels) * V : (2 + lay.levels) * V] = final_cdf
        g[:, : G + 1] = guide_rows(draft_cdf, G)
        g[:, G + 1 : 2 * (G + 1)] = guide_rows(final_cdf, G)
        if not consecutive:  # a gather's copy: write it back
            self.floats[keys], self.ints[keys] = f, g
        self.totals[keys, 0], self.totals[keys, 1] = draft_cdf[:, -1], final_cdf[:, -1]
        self.lasts[keys, 0], self.lasts[keys, 1] = last_positives(draft_cdf), last_positives(final_cdf)
        self.slot_of[keys] = keys
        self.key_of[keys] = keys
        self.last_used[keys] = -1


@dataclass(frozen=True, eq=False)
class ListTables:
    """One key's tables as Python lists, for the fallback (`bisect` on a list beats a NumPy call per step)."""

    draft_cdf: list[float]
    draft_total: float
    draft_last: int
    ratios: list[list[float]]
    final_cdf: list[float]
    final_total: float
    final_last: int
    tables: VerifierTables

    @classmethod
    def of(cls, draft_cdf: NDArray[np.float64], tables: VerifierTables) -> ListTables:
        return cls(draft_cdf.tolist(), float(draft_cdf[-1]), last_positive(draft_cdf),
                   [r.tolist() for r in tables.ratios], tables.final_cdf.tolist(), float(tables.final_cdf[-1]),
                   last_positive(tables.final_cdf), tables)

    def step(self, u: list[float], n: int) -> tuple[int, int, int]:
        """``(emitted, first draft, index)`` from the 2N + 1 uniforms of one step (`engine.drafts` layout)."""
        cdf, total, last = self.draft_cdf, self.draft_total, self.draft_last
        ys = [min(bisect_right(cdf, w * total), last) for w in u[:n]]
        v = u[n:]
        levels = len(self.ratios)
        if not self.tables.selection:
            for i, y in enumerate(ys):
                if v[i] < self.ratios[min(i, levels - 1)][y]:
                    return y, ys[0], i
        else:
            chosen = 0
            if n > 1:
                rank = self.tables.rank
                starts = [self.tables.class_start(int(rank[y]), v[1]) for y in ys]
                chosen = starts.index(min(starts))
            if v[0] < self.ratios[0][ys[chosen]]:
                return ys[chosen], ys[0], chosen
        return min(bisect_right(self.final_cdf, v[n] * self.final_total), self.final_last), ys[0], -1


class DraftsStepper:
    """Steps one chain with N drafts per step on the keys' tables, compiled or in Python (same tokens).

    Parameters
    ----------
    keys, V, n, verifier, source, max_bytes
        As `DraftTableCache`.
    backend : {"auto", "compiled", "python"}
    next_keys : ndarray of int64, shape (keys * V,), optional
        The next-key table (module docstring); None: the next key is the emitted token (keys = V).
    advance : callable, optional
        ``advance(key, emitted)``, the next key, in place of a table: the Python loop runs, on keys
        ``0 .. keys - 1`` met on demand.
    guide : int, optional
        The cache's guide buckets (`DraftTableCache`).
    """

    def __init__(self, keys: int, V: int, n: int, verifier: str, source: DraftTableSource,
                 backend: Backend = "auto", max_bytes: int = DEFAULT_TABLE_BYTES,
                 next_keys: NDArray[np.int64] | None = None,
                 advance: Callable[[int, int], int] | None = None, guide: int | None = None) -> None:
        if advance is not None and next_keys is not None:
            raise ValueError("next_keys and advance: give at most one")
        if next_keys is None and advance is None and keys < V:
            raise ValueError(f"keys: the next key is the emitted token, so keys ({keys}) must be >= V ({V})")
        if next_keys is not None and next_keys.shape != (keys * V,):
            raise ValueError(f"next_keys: must have keys * V = {keys * V} entries, got {next_keys.shape}")
        self.keys, self.V, self.n = keys, V, n
        self.levels, self.selection = table_layout(verifier, n)
        self.next_keys = None if next_keys is None else np.ascontiguousarray(next_keys, dtype=np.int64)
        self.advance = advance
        self.module = None if advance is not None else resolve_backend(backend)
        self.cache = (DraftTableCache(keys, V, n, verifier, source, max_bytes, guide) if self.module is not None
                      else None)
        slots = max(1, max_bytes // draft_slot_bytes(V, n, verifier))

        @functools.lru_cache(maxsize=slots)
        def lists(key: int) -> ListTables:
            return ListTables.of(*source(key))

        self._lists = lists
        self.clock = 0

    @property
    def backend(self) -> str:
        """``"compiled"`` or ``"python"``."""
        return "python" if self.module is None else "compiled"

    @property
    def per_step(self) -> int:
        """Uniforms a step consumes: 2N + 1."""
        return 2 * self.n + 1

    def steps(self, u: NDArray[np.float64], x: int) -> tuple[DraftArrays, int]:
        """Steps from key x on given uniforms, shape (m, 2N + 1); returns the arrays and the next key."""
        u = np.ascontiguousarray(u, dtype=np.float64)
        if u.ndim != 2 or u.shape[1] != self.per_step:
            raise ValueError(f"u: must have shape (m, {self.per_step}), got {u.shape}")
        return self._run(u, u.shape[0], x, None)

    def draw_steps(self, rng: np.random.Generator, m: int, x: int) -> tuple[DraftArrays, int]:
        """`m` steps from key x on `rng`'s next ``m (2N + 1)`` uniforms (the very doubles of ``rng.random``)."""
        if self.module is not None and draws_pcg64(self.module, rng):
            words = pcg64_state(rng)
            result = self._run(np.zeros(0), m, x, words)
            set_pcg64_state(rng, words)
            return result
        return self._run(rng.random((m, self.per_step)), m, x, None)

    def _run(self, u: NDArray[np.float64], m: int, x: int, words: NDArray[np.uint64] | None
             ) -> tuple[DraftArrays, int]:
        out = tuple(np.empty(m, dtype=np.int64) for _ in range(4))
        prev, proposed, emitted, index = out
        if self.cache is None or self.module is None:
            x = self._python(u, out, x)
        else:
            c = self.cache
            t = 0
            while True:
                t, x = self.module.drafts_chain(
                    c.floats, c.ints, c.totals, c.lasts, c.slot_of, c.last_used, u, prev, proposed, emitted,
                    index, self.V, c.layout.G, self.n, self.levels, self.selection, t, m, x, self.clock,
                    words, self.next_keys)
                if t >= m:
                    break
                c.load(x)
        self.clock += m
        return (prev, proposed, emitted, index), x

    def _python(self, u: NDArray[np.float64], out: tuple[NDArray[np.int64], ...], x: int) -> int:
        prev, proposed, emitted, index = out
        n, V, nxt, advance = self.n, self.V, self.next_keys, self.advance
        steps = u.tolist()
        for t, us in enumerate(steps):
            e, y, i = self._lists(x).step(us, n)
            prev[t], proposed[t], emitted[t], index[t] = x, y, e, i
            x = advance(x, e) if advance is not None else e if nxt is None else int(nxt[x * V + e])
            if not 0 <= x < self.keys:
                raise ValueError(f"next_keys: key {x} is outside the {self.keys} keys")
        return x
