"""Synthetic bigram targets: rows drawn from a symmetric Dirichlet (SPEC §5), lazily above 4,096 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import _lru_cache_wrapper, lru_cache, partial

import numpy as np
from numpy.typing import NDArray

from thermospec.targets.bigram import DenseTarget, stationary_distribution

__all__ = ["DENSE_VOCAB_MAX", "LazySyntheticTarget", "lazy_synthetic_target", "synthetic_target"]


def synthetic_target(vocab: int, c: float, rng: np.random.Generator) -> DenseTarget:
    """Synthetic bigram: each row ``p(. | x) ~ Dirichlet(c / V, ..., c / V)``.

    The table is dense, so V is at most `DENSE_VOCAB_MAX`; above it use
    `lazy_synthetic_target` (sparse Dirichlet rows generated on demand, pi by
    sparse power iteration), since a dense table and its solve do not scale.

    Parameters
    ----------
    vocab : int
        V >= 2.
    c : float
        Total concentration, > 0.  Small `c` gives peaked rows; entries may
        underflow to exactly 0, which is legal.
    rng : numpy.random.Generator
        The target's own random stream.
    """
    if vocab < 2:
        raise ValueError(f"--vocab: must be >= 2, got {vocab}")
    if not (np.isfinite(c) and c > 0):
        raise ValueError(f"--c: must be a finite number > 0, got {c}")
    if vocab > DENSE_VOCAB_MAX:
        raise ValueError(f"--vocab: a dense table holds at most {DENSE_VOCAB_MAX} tokens, got {vocab}")
    P = rng.dirichlet(np.full(vocab, c / vocab), size=vocab)
    P /= P.sum(axis=1, keepdims=True)
    pi, unique = stationary_distribution(P)
    return DenseTarget(P=P, pi=pi, stationary_unique=unique, source="synthetic")


DENSE_VOCAB_MAX = 4096
"""Largest synthetic V held as a dense table; above it rows are generated lazily (`LazySyntheticTarget`)."""
LAZY_SUPPORT = 256
"""Atoms per lazy synthetic row."""
LAZY_BLOCK = 64
"""Contexts generated together from one random stream (a row is rebuilt from its block)."""
ROW_CACHE_BYTES = 256 * 1024 * 1024
"""Memory bound of a lazy target's cache of blocks of atoms (all of V = 65,536 fit: 12 bytes per atom, 201 MB)."""
_Block = tuple[NDArray[np.int32], NDArray[np.float64]]


@dataclass(frozen=True, eq=False)
class LazySyntheticTarget:
    """A synthetic bigram target for large V whose rows are generated on demand, never as a V x V table.

    Row x is a Dirichlet mixture of ``s`` atoms on uniformly drawn tokens::

        p(. | x) = sum_{j < s} w_j delta_{t_j},   w ~ Dirichlet(c/s, ..., c/s),   t_j iid uniform on V,

    atoms that land on the same token adding up.  The atoms of contexts
    ``[k B, (k + 1) B)`` (B = `LAZY_BLOCK`) come from one stream keyed by
    (`key`, k), with `key` drawn from the run's target stream: a row depends
    only on (seed, V, c, x), and rebuilding it costs one block.  This is the
    sparse analogue of SPEC §5's Dirichlet(c/V) row (which has V atoms, one per
    token): at V = 65,536 a dense Dirichlet row costs V gamma draws and its
    stationary law a V x V solve, out of reach.

    pi is computed once, at construction, by power iteration of the lazy chain
    ``(I + P) / 2`` (same stationary laws, aperiodic) on the sparse ``V x s``
    atoms, from the uniform start: it converges to the unique stationary law,
    or, when the chain has several closed classes, to the long-run average from
    the uniform start, as SPEC §5 asks.  The atoms are held only during that
    computation (``12 V s`` bytes); afterwards the target keeps pi and a bounded
    cache of blocks of atoms (a dense row is built from them in O(V)).

    Attributes
    ----------
    vocab_size, c, key, support
        V, the concentration, the row-stream key and s.
    pi_iterations : int
        Power iterations used for `pi`.
    pi_residual : float
        ``|| pi P - pi ||_1`` at the end of the iteration.
    """

    pi: NDArray[np.float64]
    stationary_unique: bool
    vocab_size: int
    c: float
    key: int
    atoms: int = LAZY_SUPPORT
    source: str = "synthetic (lazy rows)"
    vocabulary: tuple[str, ...] | None = None
    corpus_sha256: str | None = None
    pi_iterations: int = 0
    pi_residual: float = 0.0
    block_capacity: int = 1
    _blocks: _lru_cache_wrapper[_Block] = field(init=False, repr=False, compare=False)

    @property
    def V(self) -> int:
        """Vocabulary size."""
        return self.vocab_size

    def __post_init__(self) -> None:
        build = partial(_lazy_block, self.key, V=self.vocab_size, c=self.c, s=self.atoms)
        object.__setattr__(self, "_blocks", lru_cache(maxsize=self.block_capacity)(build))

    def block(self, k: int) -> _Block:
        """Atoms ``(tokens, weights)``, each of shape (rows, s), of contexts ``[k B, (k + 1) B)``."""
        return self._blocks(k)

    def cached_blocks(self) -> int:
        """How many blocks of atoms the cache holds (at most `block_capacity`)."""
        return int(self._blocks.cache_info().currsize)

    def row(self, x: int) -> NDArray[np.float64]:
        """The target row ``p(. | x)``, dense (O(V)), built from its block's atoms."""
        if not 0 <= x < self.vocab_size:
            raise IndexError(f"context {x} is outside the vocabulary [0, {self.vocab_size})")
        tokens, weights = self.block(x // LAZY_BLOCK)
        p = np.zeros(self.vocab_size, dtype=np.float64)
        np.add.at(p, tokens[x % LAZY_BLOCK], weights[x % LAZY_BLOCK])
        return p

    @property
    def rows_stored(self) -> bool:
        """Rows are built on demand from their atoms."""
        return False

    def widest_support(self) -> int:
        """At most `atoms` tokens per row (fewer where atoms share a token)."""
        return min(self.atoms, self.vocab_size)

    def support(self, x: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Row x by its support: the increasing tokens of ``p(. | x) > 0`` and their probabilities.

        O(s log s), never O(V); the values are those of `row` (atoms on one token
        are added in the same order), so ``row(x)[tokens] == probs`` exactly.
        """
        if not 0 <= x < self.vocab_size:
            raise IndexError(f"context {x} is outside the vocabulary [0, {self.vocab_size})")
        tokens, weights = self.block(x // LAZY_BLOCK)
        support, slot = np.unique(tokens[x % LAZY_BLOCK], return_inverse=True)
        probs = np.zeros(support.shape[0], dtype=np.float64)
        np.add.at(probs, slot, weights[x % LAZY_BLOCK])
        positive = probs > 0
        return support[positive].astype(np.int64), probs[positive]


def _lazy_block(key: int, k: int, V: int, c: float, s: int) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
    rows = min(LAZY_BLOCK, V - k * LAZY_BLOCK)
    if rows <= 0 or k < 0:
        raise IndexError(f"block {k} is outside the vocabulary of {V} contexts")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(key, spawn_key=(k,))))
    tokens = rng.integers(0, V, size=(rows, s), dtype=np.int64)
    weights = rng.dirichlet(np.full(s, c / s), size=rows)
    totals = weights.sum(axis=1, keepdims=True)
    empty = totals[:, 0] <= 0  # every weight underflowed: put the row's mass on its first atom
    weights[empty, 0] = 1.0
    totals[empty] = 1.0
    weights /= totals
    return tokens.astype(np.int32), weights  # drawn as int64 (the stream's values), kept in 4 bytes (V <= 65,536)


def lazy_synthetic_target(
    vocab: int, c: float, rng: np.random.Generator, support: int = LAZY_SUPPORT,
    row_cache_bytes: int = ROW_CACHE_BYTES, tol: float = 1e-13, max_iterations: int = 20_000,
) -> LazySyntheticTarget:
    """Build a `LazySyntheticTarget`: draw its row-stream key from `rng` and compute pi (see the class)."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.csgraph import connected_components

    key = int(rng.integers(0, 2**63 - 1))
    s = min(support, vocab)
    tokens = np.empty((vocab, s), dtype=np.int32)
    weights = np.empty((vocab, s), dtype=np.float64)
    for k in range((vocab + LAZY_BLOCK - 1) // LAZY_BLOCK):
        t, w = _lazy_block(key, k, vocab, c, s)
        tokens[k * LAZY_BLOCK: k * LAZY_BLOCK + t.shape[0]] = t
        weights[k * LAZY_BLOCK: k * LAZY_BLOCK + t.shape[0]] = w
    # The atoms in compressed-column form *are* P transposed (column x holds row x's atoms;
    # duplicate tokens add up in the product): no copy of the V x s arrays.
    indptr = np.arange(0, vocab * s + 1, s, dtype=np.int64 if vocab * s >= 2**31 else np.int32)
    PT = csc_matrix((weights.ravel(), tokens.ravel(), indptr), shape=(vocab, vocab))
    pi = np.full(vocab, 1.0 / vocab)
    residual = np.inf
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        step = np.asarray(PT @ pi, dtype=np.float64)
        residual = float(np.abs(step - pi).sum())
        pi = 0.5 * (pi + step)
        pi /= pi.sum()
        if residual < tol:
            break
    # Uniqueness: exactly one closed class (strong components of P are those of P transposed).
    graph = PT.tocsr()
    graph.sum_duplicates()  # csgraph needs canonical indices (it stalls on duplicates)
    _, label = connected_components(graph, directed=True, connection="strong")
    del graph
    leaving = np.zeros(int(label.max()) + 1, dtype=np.bool_)
    for start in range(0, vocab, LAZY_BLOCK):
        rows = slice(start, min(vocab, start + LAZY_BLOCK))
        source = label[np.arange(rows.start, rows.stop)][:, None]
        moves = (label[tokens[rows]] != source) & (weights[rows] > 0)
        leaving[np.broadcast_to(source, moves.shape)[moves]] = True
    unique = int(np.count_nonzero(~leaving)) == 1
    return LazySyntheticTarget(
        pi=pi, stationary_unique=unique, vocab_size=vocab, c=c, key=key, atoms=s,
        pi_iterations=iterations, pi_residual=residual,
        block_capacity=max(1, row_cache_bytes // (LAZY_BLOCK * s * 12)),
    )
