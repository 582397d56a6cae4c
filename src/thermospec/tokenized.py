"""Token-level corpora: a byte-level BPE tokenizer trained on the corpus, and its sparse bigram target.

``--tokenizer bpe:N`` trains a byte-level BPE tokenizer of (at most) N tokens on
the corpus itself with the Hugging Face ``tokenizers`` library (locally, no
download), encodes the corpus, and builds the token bigram target with Laplace
smoothing (+1 on every cell, as the character target) *without a dense V x V
table*:

    p(y | x) = (C[x, y] + 1) / (n_x + V),     n_x = sum_y C[x, y],

with ``C`` the sparse matrix of observed bigram counts.  A row is built on demand
(O(V) memory); the stationary law solves ``pi = pi P`` by power iteration on the
sparse counts plus the rank-one smoothing term::

    (pi P)[y] = sum_x w_x C[x, y] + sum_x w_x,     w_x = pi_x / (n_x + V),

each iteration one sparse product.  Every entry of P is positive, so the chain
is irreducible and aperiodic: pi is unique and the iteration converges.

The proposer of such a target keeps compact ψ drafts (payload and metrics, no
V-sized array: `CompactTSU`) in a memory-bounded cache (`BoundedProposer`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.payload import EpsSpec, Payload, decode_payload
from thermospec.proposer import ContextDraft, Proposer, draft_for_row
from thermospec.targets import BigramTarget, CorpusError, read_corpus
from thermospec.tsu import SimTSU, draft_cdf, proposal_distribution

__all__ = [
    "MAX_BPE_VOCAB",
    "MIN_BPE_VOCAB",
    "BoundedProposer",
    "CompactTSU",
    "KSweepRow",
    "TokenBigramTarget",
    "bpe_target",
    "encode_corpus",
    "k_sweep",
    "parse_tokenizer",
    "sparse_stationary",
    "token_bigram_target",
    "train_bpe",
]

MIN_BPE_VOCAB = 256
MAX_BPE_VOCAB = 65_536
DRAFT_CACHE_BYTES = 128 * 1024 * 1024


def parse_tokenizer(spec: str) -> int:
    """The N of a ``bpe:N`` tokenizer spec.

    Raises
    ------
    ValueError
        The spec is not ``bpe:N`` with ``256 <= N <= 65536``; the message names ``--tokenizer``.
    """
    kind, _, size = spec.partition(":")
    if kind != "bpe" or not size.isdigit():
        raise ValueError(f"--tokenizer: must be bpe:N (e.g. bpe:4096), got {spec!r}")
    n = int(size)
    if not MIN_BPE_VOCAB <= n <= MAX_BPE_VOCAB:
        raise ValueError(
            f"--tokenizer: N must be in {MIN_BPE_VOCAB} .. {MAX_BPE_VOCAB} (byte-level: 256 base tokens), got {n}"
        )
    return n


def train_bpe(text: str, vocab_size: int) -> Any:
    """Train a byte-level BPE tokenizer of at most `vocab_size` tokens on `text`.

    The 256 byte tokens are always in the vocabulary (``initial_alphabet``), so
    any text encodes; no special tokens.  Training is local and, for the same
    text and size, gives the same merges.

    Returns
    -------
    tokenizers.Tokenizer
    """
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError(
            "--tokenizer: bpe needs the Hugging Face tokenizers library: pip install 'thermospec[bpe]'"
        ) from None
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
            show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    return tokenizer


def encode_corpus(tokenizer: Any, text: str) -> NDArray[np.int64]:
    """Token ids of the whole corpus, in order."""
    ids: NDArray[np.int64] = np.asarray(tokenizer.encode(text).ids, dtype=np.int64)
    return ids


def sparse_stationary(
    counts: Any, row_totals: NDArray[np.float64], tol: float = 1e-14, max_iter: int = 100_000
) -> tuple[NDArray[np.float64], int]:
    """Stationary law of the Laplace-smoothed chain ``P = diag(1/(n + V)) (C + 1 1^T)``.

    Parameters
    ----------
    counts : scipy.sparse.csr_matrix, shape (V, V)
        Observed bigram counts ``C``.
    row_totals : ndarray of float64, shape (V,)
        ``n_x = sum_y C[x, y]``.
    tol : float
        Stop when the L1 change in one iteration is below this.
    max_iter : int
        Bound on the iterations.

    Returns
    -------
    pi : ndarray of float64, shape (V,)
    iterations : int
    """
    V = int(row_totals.shape[0])
    transposed = counts.T.tocsr()
    scale = 1.0 / (row_totals + V)
    pi = np.full(V, 1.0 / V)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        w = pi * scale
        nxt = np.asarray(transposed @ w, dtype=np.float64) + float(w.sum())
        nxt /= nxt.sum()
        change = float(np.abs(nxt - pi).sum())
        pi = nxt
        if change < tol:
            break
    return pi, iterations


@dataclass(frozen=True, eq=False)
class TokenBigramTarget(BigramTarget):
    """Laplace-smoothed token bigram target held as sparse counts; rows are built on demand.

    It is a `BigramTarget` for the run machinery, but its dense table `P` is an
    empty placeholder: use `row`, `pi` and `V`.

    Attributes
    ----------
    counts : scipy.sparse.csr_matrix, shape (V, V)
        Observed bigram counts (int64).
    row_totals : ndarray of float64, shape (V,)
        Row sums of `counts`.
    vocab_size : int
        V, the tokenizer's vocabulary size.
    n_tokens : int
        Length of the encoded corpus.
    pi_iterations : int
        Power iterations used for `pi`.
    tokenizer_json : str
        The trained tokenizer, serialised (``tokenizers.Tokenizer.from_str`` reads it back).
    """

    counts: Any = None
    row_totals: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    vocab_size: int = 0
    n_tokens: int = 0
    pi_iterations: int = 0
    tokenizer_json: str = ""

    @property
    def V(self) -> int:
        """Vocabulary size."""
        return self.vocab_size

    def row(self, x: int) -> NDArray[np.float64]:
        """``p(. | x) = (C[x, .] + 1) / (n_x + V)``, built in O(V)."""
        V = self.vocab_size
        denominator = float(self.row_totals[x]) + V
        p = np.full(V, 1.0 / denominator)
        start, stop = int(self.counts.indptr[x]), int(self.counts.indptr[x + 1])
        columns = self.counts.indices[start:stop]
        p[columns] = (self.counts.data[start:stop].astype(np.float64) + 1.0) / denominator
        return p

    def dense_bytes(self) -> int:
        """What a dense float64 V x V table would cost, for comparison."""
        return 8 * self.vocab_size * self.vocab_size

    def sparse_bytes(self) -> int:
        """What the sparse counts cost."""
        c = self.counts
        return int(c.data.nbytes + c.indices.nbytes + c.indptr.nbytes + self.row_totals.nbytes)


def token_bigram_target(
    tokens: NDArray[np.int64], V: int, source: str = "bpe", corpus_sha256: str | None = None,
    tokenizer_json: str = "",
) -> TokenBigramTarget:
    """Sparse Laplace-smoothed bigram target of a token sequence over a vocabulary of V ids."""
    from scipy.sparse import csr_matrix

    if tokens.shape[0] < 2:
        raise ValueError("a token bigram target needs at least 2 tokens")
    pairs = tokens[:-1] * V + tokens[1:]
    codes, freq = np.unique(pairs, return_counts=True)
    counts = csr_matrix((freq.astype(np.int64), (codes // V, codes % V)), shape=(V, V))
    counts.sum_duplicates()
    row_totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    pi, iterations = sparse_stationary(counts, row_totals)
    return TokenBigramTarget(
        P=np.zeros((0, 0)), pi=pi, stationary_unique=True, source=source, vocabulary=None,
        corpus_sha256=corpus_sha256, counts=counts, row_totals=row_totals, vocab_size=V,
        n_tokens=int(tokens.shape[0]), pi_iterations=iterations, tokenizer_json=tokenizer_json,
    )


def bpe_target(path: str, vocab_size: int) -> TokenBigramTarget:
    """Train BPE of `vocab_size` tokens on the corpus at `path` and build its sparse bigram target.

    V is the trained vocabulary's size (at most `vocab_size`: a small corpus may
    run out of merges).

    Raises
    ------
    CorpusError
        The corpus cannot be read (see `targets.read_corpus`) or encodes to fewer than 2 tokens.
    """
    text, sha256 = read_corpus(path)
    tokenizer = train_bpe(text, vocab_size)
    tokens = encode_corpus(tokenizer, text)
    if tokens.shape[0] < 2:
        raise CorpusError(f"{path}: encodes to {tokens.shape[0]} BPE token, a bigram target needs at least 2")
    V = int(tokenizer.get_vocab_size())
    return token_bigram_target(
        tokens, V, source=f"corpus, byte-level BPE ({V} tokens)", corpus_sha256=sha256,
        tokenizer_json=tokenizer.to_str(),
    )


def tokenizer_fingerprint(target: TokenBigramTarget) -> str:
    """SHA-256 of the serialised tokenizer, for the summary."""
    return hashlib.sha256(target.tokenizer_json.encode("utf-8")).hexdigest()


_RECENT_ARRAYS: OrderedDict[SimTSU, tuple[NDArray[np.float64], NDArray[np.float64]]] = OrderedDict()
_RECENT_ARRAYS_MAX = 32


class CompactTSU(SimTSU):
    """A `SimTSU` that recomputes F(ψ) and its CDF from the decoded payload on access.

    At V = 16,384 a stored q and CDF cost 256 KB per context; this keeps only the
    payload (a few hundred bytes), so the drafts of every context fit in memory.
    The values are exactly `SimTSU`'s (same function of the same payload).
    """

    def __init__(self, payload: Payload | bytes) -> None:  # deliberately no super(): no stored arrays
        if isinstance(payload, bytes | bytearray | memoryview):
            payload = decode_payload(bytes(payload))
        self.payload = payload

    def _arrays(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        found = _RECENT_ARRAYS.get(self)
        if found is None:
            q = proposal_distribution(self.payload)
            cdf = draft_cdf(self.payload)
            q.flags.writeable = False
            cdf.flags.writeable = False
            found = _RECENT_ARRAYS[self] = (q, cdf)
            if len(_RECENT_ARRAYS) > _RECENT_ARRAYS_MAX:
                _RECENT_ARRAYS.popitem(last=False)
        else:
            _RECENT_ARRAYS.move_to_end(self)
        return found

    @property
    def q(self) -> NDArray[np.float64]:
        """F(ψ), recomputed (the last few contexts' arrays are kept)."""
        return self._arrays()[0]

    @q.setter
    def q(self, value: NDArray[np.float64]) -> None:
        raise AttributeError("CompactTSU.q is computed from the payload")

    @property
    def cdf(self) -> NDArray[np.float64]:
        """Cumulative F(ψ), recomputed."""
        return self._arrays()[1]

    @cdf.setter
    def cdf(self, value: NDArray[np.float64]) -> None:
        raise AttributeError("CompactTSU.cdf is computed from the payload")


class BoundedProposer(Proposer):
    """A `Proposer` for large vocabularies: compact drafts in a least-recently-used cache.

    Each cached draft holds its payload and metrics but no V-sized array
    (`CompactTSU`), so about ``max_bytes / (1 KB + 20 K)`` contexts stay cached;
    an evicted context is crafted again to the same bytes when it comes back.
    """

    def __init__(
        self,
        row: Callable[[int], NDArray[np.float64]],
        K: int,
        tau: float,
        eps: EpsSpec,
        V: int,
        max_bytes: int = DRAFT_CACHE_BYTES,
    ) -> None:
        super().__init__(row, K, tau, eps)
        self.capacity = max(16, max_bytes // (1024 + 20 * min(K, V)))
        self._lru: OrderedDict[int, ContextDraft] = OrderedDict()

    def draft(self, context: int) -> ContextDraft:
        """The draft of one context, from the bounded cache or crafted again."""
        found = self._lru.get(context)
        if found is not None:
            self._lru.move_to_end(context)
            return found
        full = draft_for_row(self.row(context), context, self.K, self.tau, self.eps)
        found = dataclasses.replace(full, tsu=CompactTSU(full.tsu.payload))
        self._lru[context] = found
        if len(self._lru) > self.capacity:
            self._lru.popitem(last=False)
        return found


@dataclass(frozen=True)
class KSweepRow:
    """One line of the K sweep on a token target.

    Attributes
    ----------
    K : int
        Top-K ids per payload.
    psi_bytes : int
        Payload size (the same for every context at this K and V).
    topk_mass, overlap_mass : float
        pi-weighted means over *all* contexts (exact, not sampled).
    ce_gap_nats : float or None
        pi-weighted mean KL(p || q); None if infinite somewhere.
    accept_rate : float
        Measured on a chain of `steps` steps.
    steps : int
    """

    K: int
    psi_bytes: int
    topk_mass: float
    overlap_mass: float
    ce_gap_nats: float | None
    accept_rate: float
    steps: int


def k_sweep(
    target: TokenBigramTarget,
    Ks: list[int],
    steps: int,
    seed: int,
    tau: float = 1.0,
    eps: EpsSpec = "auto",
) -> list[KSweepRow]:
    """Acceptance and overlap vs K: exact pi-weighted metrics over every context, and a measured chain.

    Each K's chain uses ``random_stream(seed, Stream.CHAIN)``, as a ``run`` with that K would.
    """
    import math

    from thermospec.config import Stream, random_stream
    from thermospec.engine import run_chain

    V = target.V
    sums = {k: [0.0, 0.0, 0.0] for k in Ks}
    sizes = dict.fromkeys(Ks, 0)
    for x in range(V):
        p = target.row(x)
        w = float(target.pi[x])
        for k in Ks:
            d = draft_for_row(p, x, k, tau, eps)
            sums[k][0] += w * d.topk_mass
            sums[k][1] += w * d.overlap_mass
            sums[k][2] += w * d.ce_gap_nats
            sizes[k] = max(sizes[k], d.psi_bytes)
    rows = []
    for k in Ks:
        proposer = BoundedProposer(target.row, k, tau, eps, V)
        accepted = 0
        for chunk in run_chain(target.row, target.pi, proposer.draft, steps, random_stream(seed, Stream.CHAIN)):
            accepted += int(np.count_nonzero(chunk.accepted))
        topk, overlap, gap = sums[k]
        rows.append(KSweepRow(K=k, psi_bytes=sizes[k], topk_mass=topk, overlap_mass=overlap,
                              ce_gap_nats=gap if math.isfinite(gap) else None,
                              accept_rate=accepted / steps, steps=steps))
    return rows
