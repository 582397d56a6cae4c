"""Bigram targets ``p(y_t | x_{t-1})`` and their stationary distribution (SPEC §5).

Two sources: a synthetic table whose rows are drawn from a symmetric Dirichlet,
and the character bigram counts of a UTF-8 corpus with Laplace (+1) smoothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BigramTarget",
    "CorpusError",
    "corpus_target",
    "stationary_distribution",
    "synthetic_target",
]


class CorpusError(ValueError):
    """A corpus file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True, eq=False)
class BigramTarget:
    """A bigram chain: row ``x`` of `P` is the target ``p(. | x)``.

    Attributes
    ----------
    P : ndarray of float64, shape (V, V)
        Row-stochastic transition table.
    pi : ndarray of float64, shape (V,)
        Stationary distribution (``pi = pi P``), or the long-run average from a
        uniform start when the chain has no unique stationary distribution.
    stationary_unique : bool
        Whether `pi` is the chain's unique stationary distribution.
    source : str
        ``"synthetic"`` or ``"corpus"``.
    vocabulary : tuple of str or None
        For a corpus, the character of each token id (sorted code points).
    corpus_sha256 : str or None
        SHA-256 of the corpus bytes.
    """

    P: NDArray[np.float64]
    pi: NDArray[np.float64]
    stationary_unique: bool
    source: str
    vocabulary: tuple[str, ...] | None = None
    corpus_sha256: str | None = None

    @property
    def V(self) -> int:
        """Vocabulary size."""
        return int(self.P.shape[0])

    def row(self, x: int) -> NDArray[np.float64]:
        """The target row ``p(. | x)``: the only access the engine and proposer need."""
        row: NDArray[np.float64] = self.P[x]
        return row


def synthetic_target(vocab: int, c: float, rng: np.random.Generator) -> BigramTarget:
    """Synthetic bigram: each row ``p(. | x) ~ Dirichlet(c / V, ..., c / V)``.

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
    P = rng.dirichlet(np.full(vocab, c / vocab), size=vocab)
    P /= P.sum(axis=1, keepdims=True)
    pi, unique = stationary_distribution(P)
    return BigramTarget(P=P, pi=pi, stationary_unique=unique, source="synthetic")


def read_corpus(path: str | Path) -> tuple[str, str]:
    """Read a UTF-8 corpus; return its text and the SHA-256 of its bytes.

    Raises
    ------
    CorpusError
        Missing, a folder, unreadable, not UTF-8, empty, or fewer than 2 distinct characters.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CorpusError(f"{path}: is a folder, not a text file") from None
    except OSError as exc:
        raise CorpusError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not raw:
        raise CorpusError(f"{path}: is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{path}: is not UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})"
        ) from None
    return text, hashlib.sha256(raw).hexdigest()


def corpus_target(path: str | Path) -> BigramTarget:
    """Character bigram target of a UTF-8 corpus, Laplace-smoothed (+1 on every cell).

    The vocabulary is the corpus' distinct characters (Unicode code points), sorted.
    """
    text, sha256 = read_corpus(path)
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    alphabet = np.unique(codepoints)
    V = int(alphabet.size)
    if V < 2:
        raise CorpusError(f"{path}: has {V} distinct character, a bigram target needs at least 2")
    tokens = np.searchsorted(alphabet, codepoints).astype(np.int64)
    counts = np.bincount(tokens[:-1] * V + tokens[1:], minlength=V * V).reshape(V, V)
    smoothed = counts.astype(np.float64) + 1.0
    P = smoothed / smoothed.sum(axis=1, keepdims=True)
    pi, unique = stationary_distribution(P)
    vocabulary = tuple(chr(int(cp)) for cp in alphabet)
    return BigramTarget(
        P=P, pi=pi, stationary_unique=unique, source="corpus",
        vocabulary=vocabulary, corpus_sha256=sha256,
    )


def _solve_stationary(P: NDArray[np.float64]) -> NDArray[np.float64]:
    """Stationary distribution of an irreducible stochastic matrix: ``pi (P - I) = 0, sum pi = 1``."""
    V = P.shape[0]
    A = P.T - np.eye(V)
    A[-1, :] = 1.0
    b = np.zeros(V)
    b[-1] = 1.0
    pi = np.linalg.solve(A, b)
    np.clip(pi, 0.0, None, out=pi)
    normalised: NDArray[np.float64] = pi / pi.sum()
    return normalised


def stationary_distribution(P: NDArray[np.float64]) -> tuple[NDArray[np.float64], bool]:
    """Stationary distribution of a bigram chain.

    Parameters
    ----------
    P : ndarray of float64, shape (V, V)
        Row-stochastic transition table.

    Returns
    -------
    pi : ndarray of float64, shape (V,)
        ``pi = pi P``.  When the chain has more than one closed class (no unique
        stationary distribution), the long-run average ``lim (1/n) sum_k u P^k``
        from the uniform start ``u``, computed exactly from the absorption
        probabilities into each closed class.
    unique : bool
        Whether the chain has a unique stationary distribution.
    """
    if np.all(P > 0):  # irreducible: the common case, no graph analysis needed
        return _solve_stationary(P), True
    from scipy.sparse.csgraph import connected_components  # only chains with zeros pay this import

    V = P.shape[0]
    edges = P > 0
    _, label = connected_components(edges, directed=True, connection="strong")
    leaving = edges & (label[:, None] != label[None, :])
    open_classes = np.unique(label[np.nonzero(leaving)[0]])
    closed = [c for c in np.unique(label) if c not in set(open_classes.tolist())]
    pi = np.zeros(V)
    if len(closed) == 1:
        members = np.flatnonzero(label == closed[0])
        pi[members] = _solve_stationary(P[np.ix_(members, members)])
        return pi, True
    # Several closed classes: weight each class' stationary law by the probability
    # that the chain started uniformly ends up in it.
    transient = np.flatnonzero(np.isin(label, open_classes))
    u = np.full(V, 1.0 / V)
    if transient.size:
        Q = P[np.ix_(transient, transient)]
        visits = np.linalg.solve((np.eye(transient.size) - Q).T, u[transient])
        entered = visits @ P[transient, :]
    else:
        entered = np.zeros(V)
    for c in closed:
        members = np.flatnonzero(label == c)
        weight = float(u[members].sum() + entered[members].sum())
        pi[members] = weight * _solve_stationary(P[np.ix_(members, members)])
    return pi / pi.sum(), False
