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

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.targets.corpus import CorpusError, read_corpus

__all__ = [
    "MAX_BPE_VOCAB",
    "MIN_BPE_VOCAB",
    "TokenBigramTarget",
    "bpe_corpus",
    "bpe_target",
    "encode_corpus",
    "parse_tokenizer",
    "sparse_stationary",
    "token_bigram_target",
    "train_bpe",
]


MIN_BPE_VOCAB = 256
MAX_BPE_VOCAB = 65_536


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
class TokenBigramTarget:
    """Laplace-smoothed token bigram target held as sparse counts; rows are built on demand.

    A `BigramTarget` whose rows are built on demand (``rows_stored`` is False):
    every entry is positive (Laplace +1), so its rows are as wide as V.

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

    pi: NDArray[np.float64]
    counts: Any
    row_totals: NDArray[np.float64]
    vocab_size: int
    n_tokens: int
    pi_iterations: int
    tokenizer_json: str
    source: str = "bpe"
    corpus_sha256: str | None = None
    stationary_unique: bool = True
    vocabulary: tuple[str, ...] | None = None

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

    @property
    def rows_stored(self) -> bool:
        """Rows are built on demand from the sparse counts."""
        return False

    def support(self, x: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Every token (Laplace +1 makes each entry positive) and the row's probabilities."""
        return np.arange(self.vocab_size, dtype=np.int64), self.row(x)

    def widest_support(self) -> int:
        """V: every entry of every row is positive."""
        return self.vocab_size

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
        pi=pi, source=source, corpus_sha256=corpus_sha256, counts=counts, row_totals=row_totals, vocab_size=V,
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
    return bpe_corpus(path, vocab_size)[0]


def bpe_corpus(path: str, vocab_size: int) -> tuple[TokenBigramTarget, NDArray[np.int64], Any]:
    """`bpe_target`, with the corpus' token ids and the trained tokenizer (an order-N target indexes the ids).

    Raises
    ------
    CorpusError
        As `bpe_target`.
    """
    text, sha256 = read_corpus(path)
    tokenizer = train_bpe(text, vocab_size)
    tokens = encode_corpus(tokenizer, text)
    if tokens.shape[0] < 2:
        raise CorpusError(f"{path}: encodes to {tokens.shape[0]} BPE token, a bigram target needs at least 2")
    V = int(tokenizer.get_vocab_size())
    target = token_bigram_target(
        tokens, V, source=f"corpus, byte-level BPE ({V} tokens)", corpus_sha256=sha256,
        tokenizer_json=tokenizer.to_str(),
    )
    return target, tokens, tokenizer


def tokenizer_fingerprint(target: TokenBigramTarget) -> str:
    """SHA-256 of the serialised tokenizer, for the summary."""
    return hashlib.sha256(target.tokenizer_json.encode("utf-8")).hexdigest()
