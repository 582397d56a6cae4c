"""The character bigram target of a UTF-8 corpus, Laplace (+1) smoothed (SPEC §5).

Up to `DENSE_CORPUS_MAX_V` distinct characters the counts and the target are a
dense ``V x V`` table (`corpus_target`, a `DenseTarget`); above it, up to
`MAX_CORPUS_VOCAB`, `targets.characters.character_target` counts the pairs
sparsely and builds the rows on demand, as the BPE token target does (memory
grows with the distinct pairs, not with V^2: 12,000 distinct characters took
5.6 GB dense).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.targets.bigram import DenseTarget, stationary_distribution

__all__ = ["DENSE_CORPUS_MAX_V", "MAX_CORPUS_VOCAB", "CorpusCharacters", "CorpusError", "bigram_counts",
           "corpus_target", "read_characters"]


class CorpusError(ValueError):
    """A corpus file that cannot be used; the message names the file and the reason."""


def read_corpus(path: str | Path) -> tuple[str, str]:
    """Read a UTF-8 corpus; return its text and the SHA-256 of its bytes.

    A leading byte-order mark (U+FEFF, which some editors write) is dropped: it
    marks the encoding and is not a character of the text.  Line ends are kept as
    they are: a CRLF file has a ``\\r`` token before every ``\\n``.

    Raises
    ------
    CorpusError
        Missing, a folder, unreadable, not UTF-8, empty, or fewer than 2 distinct characters.
    """
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():
        raise CorpusError(f"{path}: is not a regular file (a device, FIFO or socket)")
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
    return text.removeprefix("\ufeff"), hashlib.sha256(raw).hexdigest()


COUNT_CHUNK = 1 << 20
"""Code points counted at a time: memory stays flat in the corpus size."""
DENSE_CORPUS_MAX_V = 4096
"""Most distinct characters counted in a dense ``V x V`` table (about 40 bytes per cell at the peak: 650 MB);
above it `character_target` counts sparsely."""
MAX_CORPUS_VOCAB = 65_536
"""Most distinct characters of a corpus target (the largest vocabulary of the synthetic and BPE targets)."""


def _code_points(text: str) -> tuple[NDArray[np.integer[Any]], int]:
    """The code points of `text` (one byte each for ASCII text, four otherwise) and the span of their values."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8), 128
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4"), 0x110000


def _alphabet(codepoints: NDArray[np.integer[Any]], span: int) -> NDArray[np.int64]:
    """The sorted distinct code points, counted `COUNT_CHUNK` at a time."""
    present = np.zeros(span, dtype=np.bool_)
    for start in range(0, codepoints.shape[0], COUNT_CHUNK):
        present |= np.bincount(codepoints[start:start + COUNT_CHUNK], minlength=span).astype(np.bool_)
    return np.flatnonzero(present).astype(np.int64)


@dataclass(frozen=True, eq=False)
class CorpusCharacters:
    """A corpus read as code points, with its sorted alphabet: what its character targets are counted from.

    Attributes
    ----------
    sha256 : str
        SHA-256 of the corpus bytes.
    codepoints : ndarray
        The text's code points (uint8 for ASCII text, uint32 otherwise).
    span : int
        128 for ASCII text, else 0x110000: the size of a code point -> token look-up table.
    alphabet : ndarray of int64, shape (V,)
        Sorted distinct code points; token i is ``chr(alphabet[i])``.
    """

    sha256: str
    codepoints: NDArray[np.integer[Any]]
    span: int
    alphabet: NDArray[np.int64]

    @property
    def V(self) -> int:
        """Distinct characters."""
        return int(self.alphabet.size)

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """The character of each token id."""
        return tuple(chr(int(cp)) for cp in self.alphabet)

    def token_chunks(self) -> Iterator[NDArray[np.int64]]:
        """Token ids `COUNT_CHUNK` code points at a time, with one of overlap: every consecutive pair once."""
        lut = np.zeros(self.span, dtype=np.int64)
        lut[self.alphabet] = np.arange(self.V, dtype=np.int64)
        for start in range(0, max(self.codepoints.shape[0] - 1, 0), COUNT_CHUNK):
            yield lut[self.codepoints[start:start + COUNT_CHUNK + 1]]

    def dense_counts(self) -> NDArray[np.int64]:
        """``counts[a, b]`` = occurrences of token a followed by token b, a dense ``V x V`` table."""
        V = self.V
        flat = np.zeros(V * V, dtype=np.int64)
        for tokens in self.token_chunks():
            flat += np.bincount(tokens[:-1] * V + tokens[1:], minlength=V * V)
        return flat.reshape(V, V)

    def dense_target(self) -> DenseTarget:
        """The Laplace-smoothed (+1 on every cell) bigram target as a dense table."""
        smoothed = self.dense_counts().astype(np.float64) + 1.0
        P = smoothed / smoothed.sum(axis=1, keepdims=True)
        pi, unique = stationary_distribution(P)
        return DenseTarget(P=P, pi=pi, stationary_unique=unique, source="corpus", vocabulary=self.vocabulary,
                           corpus_sha256=self.sha256)


def bigram_counts(text: str) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The sorted distinct code points of `text` and the counts of consecutive pairs.

    Two streaming passes over the code points, `COUNT_CHUNK` at a time: which code
    points occur, then a `bincount` of pair ids through a code point -> token look-up table.

    Returns
    -------
    alphabet : ndarray of int64, shape (V,)
        Sorted code points; token i is ``chr(alphabet[i])``.
    counts : ndarray of int64, shape (V, V)
        ``counts[a, b]`` = occurrences of token a followed by token b.
    """
    codepoints, span = _code_points(text)
    characters = CorpusCharacters("", codepoints, span, _alphabet(codepoints, span))
    return characters.alphabet, characters.dense_counts()


def read_characters(path: str | Path, dense: bool) -> CorpusCharacters:
    """Read a corpus (`read_corpus`) as code points and alphabet, refusing a vocabulary out of range.

    Parameters
    ----------
    path : str or Path
    dense : bool
        Whether a dense ``V x V`` table will be built (at most `DENSE_CORPUS_MAX_V` characters).

    Raises
    ------
    CorpusError
        As `read_corpus`; fewer than 2 distinct characters, more than `MAX_CORPUS_VOCAB`, or more
        than `DENSE_CORPUS_MAX_V` for a dense table: before any table exists.
    """
    text, sha256 = read_corpus(path)
    codepoints, span = _code_points(text)
    characters = CorpusCharacters(sha256, codepoints, span, _alphabet(codepoints, span))
    V = characters.V
    if V < 2:
        raise CorpusError(f"{path}: has {V} distinct character, a bigram target needs at least 2")
    if V > MAX_CORPUS_VOCAB:
        raise CorpusError(f"{path}: has {V:,} distinct characters; a corpus target takes at most "
                          f"{MAX_CORPUS_VOCAB:,} (the largest vocabulary of any target)")
    if dense and V > DENSE_CORPUS_MAX_V:
        raise CorpusError(f"{path}: has {V:,} distinct characters; a dense character table (--order N > 2) "
                          f"holds at most {DENSE_CORPUS_MAX_V:,} (this one would take {40 * V * V / 1e9:.1f} GB)")
    return characters


def corpus_target(path: str | Path) -> DenseTarget:
    """Character bigram target of a UTF-8 corpus as a dense table, Laplace-smoothed (+1 on every cell).

    The vocabulary is the corpus' distinct characters (Unicode code points), sorted.
    ``--corpus`` loads `targets.characters.character_target`, which is this target up to
    `DENSE_CORPUS_MAX_V` characters and a sparse one above.

    Raises
    ------
    CorpusError
        As `read_corpus`; fewer than 2 or more than `DENSE_CORPUS_MAX_V` distinct characters.
    """
    return read_characters(path, dense=True).dense_target()
