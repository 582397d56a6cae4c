"""The character bigram target ``--corpus`` loads: dense up to `DENSE_CORPUS_MAX_V` characters, sparse above.

Above `targets.corpus.DENSE_CORPUS_MAX_V` distinct characters a dense ``V x V``
table does not fit (12,000 characters took 5.6 GB; 55,264 would need 22.8 GiB):
the pairs are counted sparsely, a chunk of code points at a time, into the BPE
target's `TokenBigramTarget`, whose rows ``(C[x, .] + 1) / (n_x + V)`` are the same
Laplace rows built on demand (π by power iteration).  Memory grows with the
distinct pairs, not with V^2.
"""

from __future__ import annotations

import numpy as np

from thermospec.targets.bigram import BigramTarget
from thermospec.targets.bpe import TokenBigramTarget, sparse_stationary
from thermospec.targets.corpus import DENSE_CORPUS_MAX_V, CorpusCharacters, read_characters

__all__ = ["character_target", "sparse_character_target"]


def character_target(path: str) -> BigramTarget:
    """The character bigram target of a corpus: `corpus_target`'s dense table up to `DENSE_CORPUS_MAX_V`, else sparse.

    Raises
    ------
    CorpusError
        As `read_corpus`; fewer than 2 or more than `MAX_CORPUS_VOCAB` distinct characters.
    """
    characters = read_characters(path, dense=False)
    if characters.V <= DENSE_CORPUS_MAX_V:
        return characters.dense_target()
    return sparse_character_target(characters)


def sparse_character_target(characters: CorpusCharacters) -> TokenBigramTarget:
    """The Laplace-smoothed character bigram target held as sparse pair counts; rows built on demand."""
    from scipy.sparse import csr_matrix  # only corpora this wide pay this import

    V = characters.V
    codes, freqs = [], []
    for tokens in characters.token_chunks():
        chunk_codes, chunk_freq = np.unique(tokens[:-1] * V + tokens[1:], return_counts=True)
        codes.append(chunk_codes)
        freqs.append(chunk_freq)
    pairs, where = np.unique(np.concatenate(codes), return_inverse=True)
    freq = np.bincount(where, weights=np.concatenate(freqs)).astype(np.int64)
    counts = csr_matrix((freq, (pairs // V, pairs % V)), shape=(V, V))
    row_totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    pi, iterations = sparse_stationary(counts, row_totals)
    return TokenBigramTarget(
        pi=pi, counts=counts, row_totals=row_totals, vocab_size=V, n_tokens=int(characters.codepoints.shape[0]),
        pi_iterations=iterations, tokenizer_json="", source="corpus", corpus_sha256=characters.sha256,
        vocabulary=characters.vocabulary,
    )
