"""What a bigram target is (`BigramTarget`, the protocol every target implements), the dense one, and pi.

A target gives the engine and the drafts what they need and nothing else: the
vocabulary size ``V``, ``row(x) = p(. | x)``, ``support(x)`` (the row's positive
entries), the stationary law ``pi``, and where it came from.  Two capabilities
let a run choose how to draft and step without asking which class it has:
`rows_stored` (``row(x)`` reads a stored table, so every context's ψ can be
crafted up front) and `widest_support` (rows much narrower than V are drafted
and stepped from their supports, in O(s log s) per context).

SPEC §5's targets as tables are `DenseTarget`s; `stationary_distribution` computes their pi.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["BigramTarget", "DenseTarget", "RowSource", "SupportSource", "stationary_distribution"]


class BigramTarget(Protocol):
    """A bigram chain ``p(y_t | x_{t-1})`` over tokens ``0 .. V-1``: what every target provides."""

    @property
    def V(self) -> int:
        """Vocabulary size."""
        ...

    @property
    def pi(self) -> NDArray[np.float64]:
        """Stationary distribution (or the long-run average from a uniform start, SPEC §5)."""
        ...

    @property
    def stationary_unique(self) -> bool:
        """Whether `pi` is the chain's unique stationary distribution."""
        ...

    @property
    def source(self) -> str:
        """Where the target came from, as the summary records it (``"synthetic"``, ``"corpus"`` ...)."""
        ...

    @property
    def vocabulary(self) -> tuple[str, ...] | None:
        """The text of each token id, where there is one (a character corpus)."""
        ...

    @property
    def corpus_sha256(self) -> str | None:
        """SHA-256 of the corpus bytes, for a corpus target."""
        ...

    @property
    def rows_stored(self) -> bool:
        """True if `row` reads a stored ``V x V`` table; False if rows are built on demand."""
        ...

    def row(self, x: int) -> NDArray[np.float64]:
        """The target row ``p(. | x)``, dense, float64."""
        ...

    def support(self, x: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Row x by its support: the increasing tokens of ``p(. | x) > 0`` and their probabilities."""
        ...

    def widest_support(self) -> int:
        """The largest number of positive entries of any row."""
        ...


@dataclass(frozen=True, eq=False)
class DenseTarget:
    """A bigram chain held as its table: row ``x`` of `P` is the target ``p(. | x)``.

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

    @property
    def rows_stored(self) -> bool:
        """Rows are read from `P`."""
        return True

    def row(self, x: int) -> NDArray[np.float64]:
        """The target row ``p(. | x)``, a view of `P`."""
        row: NDArray[np.float64] = self.P[x]
        return row

    def support(self, x: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Row x by its support: the increasing tokens of ``p(. | x) > 0`` and their probabilities."""
        p = self.P[x]
        tokens = np.flatnonzero(p).astype(np.int64)
        return tokens, p[tokens]

    def widest_support(self) -> int:
        """The largest number of positive entries of any row of `P`."""
        return int(np.count_nonzero(self.P, axis=1).max())


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
    """Stationary distribution of a bigram chain, the same bits on every machine load.

    LAPACK's blocked solve rounds differently with the number of BLAS threads,
    and π decides the run's first token: the solve runs on one BLAS thread
    (also the fastest for these sizes: a 256 x 256 solve is under a millisecond).
    See `_stationary_distribution` for the maths.

    Raises
    ------
    ValueError
        When the solve is singular in float64 (rows so peaked that leaving a class rounds to 0).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        try:
            return _stationary_distribution(P)
        except np.linalg.LinAlgError:  # a class left with probability below float64's resolution
            raise ValueError("the chain's stationary distribution cannot be computed: some tokens are left with a "
                             "probability float64 cannot tell from 0 (the linear system is singular)") from None


def _stationary_distribution(P: NDArray[np.float64]) -> tuple[NDArray[np.float64], bool]:
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


RowSource = Callable[[int], NDArray[np.float64]]
SupportSource = Callable[[int], tuple[NDArray[np.int64], NDArray[np.float64]]]
"""``support(x)`` gives row x's increasing tokens of positive probability and their probabilities."""
