"""The chain's hot loop: per-context tables in bounded memory, a compiled stepper and its fallback.

Every path here performs exactly the step of `thermospec.engine.run_chain_reference`
on the uniforms ``(u_draft, u_accept, u_residual)`` of each step (the rule is written
out in `thermospec.engine.step`), so the compiled kernel (``thermospec._kernels``, a
small C extension built by ``pip install``) and the pure-Python fallback
(`thermospec.engine.step.python_steps`) emit the same tokens for the same uniforms.
The fallback is used when the extension is missing (it is optional at build time)
or when ``THERMOSPEC_KERNEL=python`` is set.

Tool choice (measured, README "Performance"): a C extension through the buffer
protocol costs nothing at import, while a Numba import plus JIT costs more than
the whole default run; NumPy cannot vectorise one chain (each step's context is
the previous output).

Memory: tables live in a fixed number of slots of one array (``3 V`` float64 per
context), at most `DEFAULT_TABLE_BYTES`; when full, the least recently used
context is evicted and rebuilt on its next visit.  At V = 256 every context fits
(then context x always lives in slot x, which spares the kernel a look-up per step).

Given a PCG64 ``numpy.random.Generator``, the compiled kernel draws the uniforms
itself (`pcg64_state`: the very doubles of ``rng.random((n, 3))``); it can also add
each step to a run's counts (`StepCounts`) as it steps.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from thermospec.core.sampling import last_positive
from thermospec.engine.pcg import draws_pcg64, pcg64_state, set_pcg64_state
from thermospec.engine.step import DenseStepTables, StepArrays, python_steps, step_tokens
from thermospec.engine.step_outputs import OutputPool, new_outputs, unrecorded

__all__ = ["DEFAULT_TABLE_BYTES", "FINE_GUIDE", "Backend", "ChainStepper", "OutputPool", "StepArrays", "StepCounts",
           "TableCache", "TableSource", "add_counts", "compiled_module", "compiled_steps", "draws_pcg64",
           "pcg64_state", "resolve_backend", "set_pcg64_state", "unrecorded"]


DEFAULT_TABLE_BYTES = 256 * 1024 * 1024
"""Memory bound of the per-context table cache, in bytes."""


Backend = Literal["auto", "compiled", "python"]


TableSource = Callable[[int], tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]]
"""``source(x)`` gives context x's ``(draft_cdf, ratio, residual_cdf)``, each of shape (V,)."""


StepCounts = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64] | None]
"""int64 counts a step is added to: accepted (1,), contexts (V,), emitted (V,), transitions ``[x * V + y]`` or None."""


def add_counts(counts: StepCounts, arrays: StepArrays, V: int) -> None:
    """Add a chunk's steps to `counts` (what the compiled kernel does as it steps)."""
    accepted, contexts, emitted, transitions = counts
    prev, _, tokens, ok = arrays
    accepted[0] += np.count_nonzero(ok)
    contexts += np.bincount(prev, minlength=V)
    emitted += np.bincount(tokens, minlength=V)
    if transitions is not None:
        transitions += np.bincount(prev * V + tokens, minlength=V * V)


def compiled_module() -> ModuleType | None:
    """The compiled kernel, or None when it is not built or disabled by ``THERMOSPEC_KERNEL=python``."""
    if os.environ.get("THERMOSPEC_KERNEL", "").lower() == "python":
        return None
    try:
        from thermospec.engine import _kernels  # type: ignore[attr-defined]
    except ImportError:
        return None
    module: ModuleType = _kernels
    return module


def resolve_backend(backend: Backend) -> ModuleType | None:
    """The compiled module for `backend`, or None for the Python loop.

    Raises
    ------
    RuntimeError
        If ``backend == "compiled"`` and the extension is not available.
    """
    if backend == "python":
        return None
    module = compiled_module()
    if module is None and backend == "compiled":
        raise RuntimeError("the compiled kernel thermospec._kernels is not built (reinstall with a C compiler)")
    return module


def slot_bytes(V: int, G: int | None = None) -> int:
    """Bytes of one context's tables: three float64 arrays and two int32 guides of G buckets (default `guide_size`)."""
    return 3 * 8 * V + 2 * 4 * ((guide_size(V) if G is None else G) + 1)


def guide_size(V: int, per_token: int = 1) -> int:
    """Number of guide buckets: the power of two at or above ``per_token * V`` (at least 2)."""
    return max(2, 1 << (per_token * V - 1).bit_length())


FINE_GUIDE = 4
"""Guide buckets per token of a bigram cache that holds every context in an eighth of its memory bound:
its draws then mostly find their token in the guide alone (~90 % of the draft draws on Tiny Shakespeare,
against ~75 % at 1 bucket per token), so fewer searches and mispredicted branches per step."""


def guide_table(cdf: NDArray[np.float64], G: int) -> NDArray[np.int32]:
    """``guide[k] = bisect_right(cdf, (k / G) * cdf[-1])`` for k = 0 .. G.

    For ``u`` in [k / G, (k + 1) / G) the inverse-CDF draw ``bisect_right(cdf, u * cdf[-1])``
    lies in ``[guide[k], guide[k + 1]]`` (k / G is exact for a power of two G, and
    rounding a product is monotone), so the kernel searches only that bracket.
    """
    points = (np.arange(G + 1, dtype=np.float64) / G) * cdf[-1]
    guide: NDArray[np.int32] = np.searchsorted(cdf, points, side="right").astype(np.int32)
    return guide


class TableCache:
    """Per-context tables in fixed slots of one array, bounded in memory, least recently used evicted.

    Parameters
    ----------
    V : int
        Vocabulary size (the table length, and the number of contexts unless `contexts` says otherwise).
    source : callable
        ``source(x)`` gives context x's ``(draft_cdf, ratio, residual_cdf)``.
    max_bytes : int
        Upper bound of the table array; at least one slot is always kept.
    contexts : int, optional
        Number of contexts (keys ``0 .. contexts - 1``; default V): the states of a move table.

    Attributes
    ----------
    tables : ndarray of float64, shape (slots, 3, V)
        ``[draft_cdf, ratio, residual_cdf]`` of the context in each slot.
    totals : ndarray of float64, shape (slots, 2)
        Last entry of each cdf.
    lasts : ndarray of int64, shape (slots, 2)
        Index of the last token of positive weight of each cdf.
    G : int
        Guide buckets: ``guide_size(V, FINE_GUIDE)`` for a bigram cache (V contexts) holding every
        context with them in an eighth of `max_bytes`, a quarter of ``guide_size(V)`` for a move table's states
        (their rows far apart: filling and fetching the bytes bound a step, not its search), else
        ``guide_size(V)`` (a draw's answer does not depend on G, only its search).
    guides : ndarray of int32, shape (slots, 2, G + 1)
        `guide_table` of each cdf.
    slot_of : ndarray of int64, shape (contexts,)
        Slot of each context, -1 when not loaded.
    last_used : ndarray of int64, shape (slots,)
        Step clock of each slot's last use (written by the steppers when slots may be evicted, i.e.
        not with `identity`).
    identity : bool
        Every context has a slot of its own (slots >= contexts): context x is loaded into slot x.
    """

    def __init__(self, V: int, source: TableSource, max_bytes: int = DEFAULT_TABLE_BYTES,
                 contexts: int | None = None) -> None:
        self.V = V
        self.contexts = V if contexts is None else contexts
        self.source = source
        fine = guide_size(V, FINE_GUIDE)
        coarse = guide_size(V) if self.contexts == V else max(2, guide_size(V) // 4)
        self.G = fine if self.contexts == V and V * slot_bytes(V, fine) <= max_bytes // 8 else coarse
        self.slots = max(1, min(self.contexts, max_bytes // slot_bytes(V, self.G)))
        self.tables = np.zeros((self.slots, 3, V), dtype=np.float64)
        self.totals = np.zeros((self.slots, 2), dtype=np.float64)
        self.lasts = np.zeros((self.slots, 2), dtype=np.int64)
        self.guides = np.zeros((self.slots, 2, self.G + 1), dtype=np.int32)
        self.slot_of = np.full(self.contexts, -1, dtype=np.int64)
        self.context_of = np.full(self.slots, -1, dtype=np.int64)
        self.last_used = np.full(self.slots, -1, dtype=np.int64)
        self.filled = 0
        self.builds = 0
        self.identity = self.slots >= self.contexts
        module = compiled_module()
        self._finish = getattr(module, "finish", None) if module is not None else None

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache's arrays."""
        arrays = (self.tables, self.totals, self.lasts, self.guides, self.slot_of, self.context_of, self.last_used)
        return sum(a.nbytes for a in arrays)

    def load(self, x: int) -> int:
        """Make sure context `x` has a table; return its slot."""
        slot = int(self.slot_of[x])
        if slot >= 0:
            return slot
        draft_cdf, ratio, residual_cdf = self.source(x)
        if self.identity:
            slot = x
            self.filled += 1
        elif self.filled < self.slots:
            slot = self.filled
            self.filled += 1
        else:
            slot = int(np.argmin(self.last_used))
            self.slot_of[self.context_of[slot]] = -1
        self.tables[slot, 0] = draft_cdf
        self.tables[slot, 1] = ratio
        self.tables[slot, 2] = residual_cdf
        if self._finish is not None:  # the same totals, lasts and guides, in one compiled call
            self._finish(self.tables, self.totals, self.lasts, self.guides, self.V, self.G, slot)
        else:
            self.totals[slot] = (draft_cdf[-1], residual_cdf[-1])
            self.lasts[slot] = (last_positive(draft_cdf), last_positive(residual_cdf))
            self.guides[slot, 0] = guide_table(draft_cdf, self.G)
            self.guides[slot, 1] = guide_table(residual_cdf, self.G)
        self.slot_of[x] = slot
        self.context_of[slot] = x
        self.last_used[slot] = -1
        self.builds += 1
        return slot

    def load_rows(self, keys: NDArray[np.int64], draft_cdf: NDArray[np.float64], ratio: NDArray[np.float64],
                  residual_cdf: NDArray[np.float64]) -> None:
        """Load many contexts' tables at once (rows of each array, one per key): what `load` does per key.

        Raises
        ------
        ValueError
            Without a slot per context (`identity`) or the compiled kernel's ``finish``.
        """
        if not self.identity or self._finish is None:
            raise ValueError("load_rows: needs a slot per context and the compiled kernel")
        consecutive = bool(keys.shape[0]) and np.array_equal(keys, np.arange(keys[0], keys[0] + keys.shape[0]))
        at: slice | NDArray[np.int64] = slice(int(keys[0]), int(keys[0]) + keys.shape[0]) if consecutive else keys
        self.tables[at, 0], self.tables[at, 1], self.tables[at, 2] = draft_cdf, ratio, residual_cdf  # slices: no gather
        self.filled += int(np.count_nonzero(self.slot_of[keys] < 0))
        if consecutive:
            self._finish(self.tables, self.totals, self.lasts, self.guides, self.V, self.G, int(keys[0]),
                         keys.shape[0])  # consecutive slots (every block `craft_states` loads): one call
        else:
            for slot in keys.tolist():
                self._finish(self.tables, self.totals, self.lasts, self.guides, self.V, self.G, slot)
        self.slot_of[keys] = keys
        self.context_of[keys] = keys
        self.last_used[keys] = -1
        self.builds += keys.shape[0]

    def load_all(self) -> bool:
        """Load every context if they all fit; return whether they do."""
        if self.slots < self.contexts:
            return False
        for x in range(self.contexts):
            self.load(x)
        return True

    @property
    def resident(self) -> bool:
        """Every context is loaded, in its own slot (the kernel then never stops for a table)."""
        return self.identity and self.filled == self.contexts


def _list_tables(source: TableSource, max_entries: int) -> Callable[[int], DenseStepTables]:
    """The fallback's tables as Python lists (`bisect` on a list beats a NumPy call per step), LRU-bounded."""

    @functools.lru_cache(maxsize=max(1, max_entries))
    def get(x: int) -> DenseStepTables:
        return DenseStepTables(*source(x))

    return get


PRELOAD_STEPS = 1024
"""Steps per context a run must have for `run_chain` (``record=False``) to build every context's tables
first: a table costs about a thousand steps' time, so the unvisited contexts' ones then cost little."""


class ChainStepper:
    """Runs one chain chunk by chunk on the compiled kernel or the Python fallback.

    Parameters
    ----------
    V : int
        Vocabulary size.
    source : callable
        ``source(x)`` gives context x's ``(draft_cdf, ratio, residual_cdf)``.
    backend : {"auto", "compiled", "python"}
        "auto" uses the compiled kernel when it is built.
    max_bytes : int
        Memory bound of the table cache.
    moves : ndarray of int32, shape (contexts * V,), optional
        A move table (order-N contexts, `thermospec.targets.order.ContextMoves`): after emitting y
        in context x the chain moves to context ``moves[x * V + y]``, and the contexts (the keys of
        `source`, the ``prev`` of each step) are ``0 .. contexts - 1``.  None: the next context is y.
    """

    def __init__(
        self, V: int, source: TableSource, backend: Backend = "auto", max_bytes: int = DEFAULT_TABLE_BYTES,
        moves: NDArray[np.int32] | None = None,
    ) -> None:
        self.V = V
        self.module = resolve_backend(backend)
        self.clock = 0
        self.pool = OutputPool()
        if moves is not None and (moves.dtype != np.int32 or moves.ndim != 1 or moves.shape[0] % V
                                  or not moves.flags.c_contiguous):
            raise ValueError(f"moves: need a contiguous int32 array of contexts x {V} entries")
        self.moves = moves
        self.contexts = V if moves is None else moves.shape[0] // V
        if self.module is not None:
            self.cache: TableCache | None = TableCache(V, source, max_bytes, self.contexts)
            self.lists: Callable[[int], DenseStepTables] | None = None
        else:
            self.cache = None
            self.lists = _list_tables(source, max(1, max_bytes // slot_bytes(V)))

    @property
    def backend(self) -> str:
        """"compiled" or "python"."""
        return "python" if self.module is None else "compiled"

    def steps(self, u: NDArray[np.float64], x: int, counts: StepCounts | None = None) -> tuple[StepArrays, int]:
        """Run one chunk: row t of `u` holds step t's three uniforms; start from context `x`.

        With `counts`, each step is also added to them.

        Returns
        -------
        (prev, proposed, emitted, accepted), x
            The chunk's arrays and the context after its last step.
        """
        return self._run(u, u.shape[0], x, None, counts)

    def draw_steps(self, rng: np.random.Generator, n: int, x: int, counts: StepCounts | None = None,
                   record: bool = True) -> tuple[StepArrays, int]:
        """Run `n` steps on the uniforms ``rng.random((n, 3))``, as `steps` does, leaving `rng` where that would.

        The compiled kernel draws them itself from a PCG64 generator (no array of uniforms);
        otherwise they are drawn here.  ``record=False`` asks for the counts only: when
        `counts_only` holds, the kernel then writes no step array and the arrays returned are
        `unrecorded` (only their length means anything); otherwise the steps are recorded.
        """
        if not draws_pcg64(self.module, rng):
            return self.steps(rng.random((n, 3)), x, counts)
        with rng.bit_generator.lock:
            state = pcg64_state(rng)
            if not record and counts is not None and self.counts_only():
                assert self.module is not None and self.cache is not None
                cache = self.cache
                _, x = self.module.chain(cache.tables, cache.totals, cache.lasts, cache.slot_of, cache.guides,
                                         cache.last_used, _NO_UNIFORMS, *_NO_STEPS, self.V, cache.G, 0, n, x,
                                         self.clock, state, counts, True, None, False)
                self.clock += n
                result = unrecorded(n), x
            else:
                result = self._run(_NO_UNIFORMS, n, x, state, counts)
            set_pcg64_state(rng, state)
        return result

    counts_in_kernel = True
    """`draw_steps` adds each step to the counts it is given (the compiled kernel as it steps)."""

    def preload_for(self, steps: int) -> bool:
        """Build every context's tables first if they fit and `steps` pays (`PRELOAD_STEPS` each): `counts_only`."""
        cache = self.cache
        return (cache is not None and self.moves is None and cache.identity and steps >= PRELOAD_STEPS * cache.contexts
                and cache.load_all() and self.counts_only())

    def counts_only(self) -> bool:
        """Whether the compiled kernel can step keeping counts only: every context loaded (`TableCache.resident`).

        Then ``draw_steps(..., record=False)`` runs the kernel's plain loop, which writes no step array.
        """
        return self.cache is not None and self.moves is None and self.cache.resident

    def _run(self, u: NDArray[np.float64], n: int, x: int, rng: NDArray[np.uint64] | None,
             counts: StepCounts | None) -> tuple[StepArrays, int]:
        if self.moves is not None and counts is not None:
            raise ValueError("counts are over tokens: not with a move table (count the chunk's contexts)")
        if self.lists is not None and self.moves is not None:
            arrays, x = moving_steps(self.lists, u, x, self.moves, self.V)
            self.clock += n
            return arrays, x
        if self.lists is not None:
            arrays, x = python_steps(self.lists, u, x)
            if counts is not None:
                add_counts(counts, arrays, self.V)
            self.clock += n
            return arrays, x
        assert self.module is not None and self.cache is not None
        module, cache, clock = self.module, self.cache, self.clock

        def chain(u: NDArray[np.float64], out: StepArrays, t: int, x: int) -> tuple[int, int]:
            step: tuple[int, int] = module.chain(
                cache.tables, cache.totals, cache.lasts, cache.slot_of, cache.guides, cache.last_used, u, *out,
                self.V, cache.G, t, n, x, clock, rng, counts, cache.identity, self.moves,
            )
            return step

        arrays, x = compiled_steps(u, x, cache.load, chain, n, self.pool.take(n))
        self.clock += n
        return arrays, x


_NO_UNIFORMS = np.empty((0, 3), dtype=np.float64)
_NO_STEPS = new_outputs(0)


def moving_steps(tables: Callable[[int], DenseStepTables], u: NDArray[np.float64], x: int,
                 moves: NDArray[np.int32], V: int) -> tuple[StepArrays, int]:
    """`python_steps` with a move table: after emitting y in context x the next context is ``moves[x * V + y]``.

    The fallback of the compiled kernels' move tables; ``prev`` holds each step's context.
    """
    n = u.shape[0]
    prev, proposed, emitted, accepted = [0] * n, [0] * n, [0] * n, [False] * n
    for t, (u_draft, u_accept, u_residual) in enumerate(u.tolist()):
        prev[t] = x
        proposed[t], y, accepted[t] = step_tokens(tables(x), u_draft, u_accept, u_residual)
        emitted[t] = y
        x = int(moves[x * V + y])
    arrays = (np.array(prev, dtype=np.int64), np.array(proposed, dtype=np.int64),
              np.array(emitted, dtype=np.int64), np.array(accepted, dtype=np.bool_))
    return arrays, x


def compiled_steps(
    u: NDArray[np.float64], x: int, load: Callable[[int], int],
    chain: Callable[[NDArray[np.float64], StepArrays, int, int], tuple[int, int]], n: int | None = None,
    out: StepArrays | None = None,
) -> tuple[StepArrays, int]:
    """Run one chunk on a compiled stepper that stops at a context without tables.

    The chunk has `n` steps (default: one per row of `u`).  ``chain(u, out, t, x)`` runs steps
    t.. into the arrays `out` from context x and returns ``(t, x)`` where it stopped; `load` (x)
    gives x its tables; repeated until the chunk is done.  The steps are written into `out`
    (an `OutputPool`'s arrays of n entries) or fresh arrays.
    """
    u = np.ascontiguousarray(u, dtype=np.float64)
    n = u.shape[0] if n is None else n
    if out is None:
        out = new_outputs(n)
    t = 0
    while t < n:
        load(x)
        t, x = chain(u, out, t, x)
    return out, x
