"""The character bigram target of a UTF-8 corpus, Laplace (+1) smoothed (SPEC §5).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.targets.bigram import DenseTarget, stationary_distribution

__all__ = ["CorpusError", "bigram_counts", "corpus_target"]


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


def bigram_counts(text: str) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The sorted distinct code points of `text` and the counts of consecutive pairs.

    Two streaming passes over the code points (one byte each for ASCII text, four
    otherwise), `COUNT_CHUNK` at a time: which code points occur, then a
    `bincount` of pair ids through a code point -> token look-up table.

    Returns
    -------
    alphabet : ndarray of int64, shape (V,)
        Sorted code points; token i is ``chr(alphabet[i])``.
    counts : ndarray of int64, shape (V, V)
        ``counts[a, b]`` = occurrences of token a followed by token b.
    """
    if text.isascii():
        codepoints: NDArray[np.integer[Any]] = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        span = 128
    else:
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        span = 0x110000
    n = codepoints.shape[0]
    present = np.zeros(span, dtype=np.bool_)
    for start in range(0, n, COUNT_CHUNK):
        present |= np.bincount(codepoints[start:start + COUNT_CHUNK], minlength=span).astype(np.bool_)
    alphabet = np.flatnonzero(present).astype(np.int64)
    V = int(alphabet.size)
    lut = np.zeros(span, dtype=np.int64)
    lut[alphabet] = np.arange(V, dtype=np.int64)
    flat = np.zeros(V * V, dtype=np.int64)
    for start in range(0, max(n - 1, 0), COUNT_CHUNK):
        tokens = lut[codepoints[start:start + COUNT_CHUNK + 1]]  # one code point of overlap: every pair once
        flat += np.bincount(tokens[:-1] * V + tokens[1:], minlength=V * V)
    return alphabet, flat.reshape(V, V)


def corpus_target(path: str | Path) -> DenseTarget:
    """Character bigram target of a UTF-8 corpus, Laplace-smoothed (+1 on every cell).

    The vocabulary is the corpus' distinct characters (Unicode code points), sorted.
    """
    text, sha256 = read_corpus(path)
    alphabet, counts = bigram_counts(text)
    V = int(alphabet.size)
    if V < 2:
        raise CorpusError(f"{path}: has {V} distinct character, a bigram target needs at least 2")
    smoothed = counts.astype(np.float64) + 1.0
    P = smoothed / smoothed.sum(axis=1, keepdims=True)
    pi, unique = stationary_distribution(P)
    vocabulary = tuple(chr(int(cp)) for cp in alphabet)
    return DenseTarget(
        P=P, pi=pi, stationary_unique=unique, source="corpus",
        vocabulary=vocabulary, corpus_sha256=sha256,
    )
