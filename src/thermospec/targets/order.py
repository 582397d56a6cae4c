"""Order-N corpus targets: ``p(. | last N - 1 tokens)``, backing off to the longest suffix seen (SPEC §8).

The context of a step is the last N - 1 emitted tokens (fewer at the start: the
chain starts from ``x0 ~ pi`` of the bigram chain).  Its row is Laplace (+1 over
V) on the counts of the tokens that follow the **longest suffix** of the context
(at most N - 1 tokens) that occurs in the corpus followed by a token; a suffix
never seen backs off to the next shorter one, down to the bigram row, which is
`corpus_target`'s row, bit for bit (so N = 2 is SPEC §5's target).

Contexts are interned as they are met, as dense ids: ids ``0 .. V-1`` are the
one-token contexts (so ``row(x)`` is the bigram row of x, and at N = 2 an
`OrderTarget` is a `BigramTarget`); a longer context gets the next free id.  A
context is identified by its *effective* suffix (the longest one seen), since
that alone decides its row and its successors: if ``u + y`` is a seen suffix of
``h + y`` then ``u`` is a seen suffix of ``h`` no longer than h's effective one.

The index is a sorted array of the corpus positions followed by a token, keyed by
the N - 1 tokens ending there read backwards (newest first): the occurrences of
a context are one contiguous range, narrowed one older token at a time by binary
search, and the followers of a range give its counts.  It takes ``N`` small-int
columns of the corpus length (8 x 1.1 MB for Tiny Shakespeare at N = 8); rows
are built on demand into a byte-bounded LRU cache.

Tokens are the corpus' characters, or the ids of a byte-level BPE tokenizer
trained on it (``order_target(..., tokenizer="bpe:M")``): the index is the same
over any token sequence; the one-token rows are then the BPE bigram target's
(`thermospec.targets.bpe.TokenBigramTarget`) and a context's text is its tokens
decoded together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import _lru_cache_wrapper, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from thermospec.targets.bigram import DenseTarget
from thermospec.targets.bpe import TokenBigramTarget, bpe_corpus, parse_tokenizer
from thermospec.targets.context_moves import ContextMoves, count_followers
from thermospec.targets.corpus import corpus_target, read_corpus

__all__ = ["MAX_ORDER", "ORDER_MOVES_BYTES", "ORDER_ROW_CACHE_BYTES", "ContextMoves", "OrderTarget", "order_target"]

MAX_ORDER = 16
"""Largest N: the index holds N columns of the corpus length."""
ORDER_ROW_CACHE_BYTES = 64 * 1024 * 1024
"""Memory bound of an order-N target's cache of float64 rows (129,000 rows at V = 65)."""
ORDER_MOVES_BYTES = 64 * 1024 * 1024
"""Memory bound of an order-N target's move table (`ContextMoves`: 4 bytes per context and token; 17 MB for
Tiny Shakespeare at N = 5, 243 MB at N = 8, which then steps on list tables)."""


class OrderTarget:
    """An order-N corpus target over dense context ids; build it with `order_target`.

    Parameters
    ----------
    order : int
        N >= 2: contexts are the last N - 1 tokens.
    bigram : DenseTarget or TokenBigramTarget
        The corpus' bigram target over the same tokens: the rows of one-token
        contexts, pi and the vocabulary (characters: `corpus_target`; BPE ids:
        `thermospec.targets.bpe.TokenBigramTarget`).
    tokens : ndarray of int, shape (n,)
        The corpus as token ids.
    row_cache_bytes : int
        Memory bound of the row cache (at least one row).
    decode : callable, optional
        The text of a sequence of token ids (a tokenizer's decoder); needed when
        `bigram` has no vocabulary (each id's character).
    """

    def __init__(self, order: int, bigram: DenseTarget | TokenBigramTarget, tokens: NDArray[np.integer[Any]],
                 row_cache_bytes: int, decode: Callable[[list[int]], str] | None = None) -> None:
        if bigram.vocabulary is None and decode is None:
            raise ValueError("bigram: an order-N target needs the corpus' vocabulary or a decoder of its tokens")
        self.order = int(order)
        self.bigram = bigram
        self._vocabulary = bigram.vocabulary
        self._decode = decode
        V = self.V
        depth = self.order - 1
        n = int(tokens.shape[0])
        small: type[np.unsignedinteger[Any]] = np.uint8 if V < 255 else np.uint16 if V < 65535 else np.uint32
        shifted = tokens.astype(small) + small(1)  # 0 marks "before the corpus' start"
        ends = n - 1  # positions followed by a token
        columns = []
        for j in range(depth):  # column j: the token j places before the end, + 1
            col = np.zeros(ends, dtype=small)
            col[j:] = shifted[: ends - j]
            columns.append(col)
        sort = _sorted_positions(columns, V)  # newest token first
        self._columns: list[NDArray[Any]] = []
        for j in range(depth):
            self._columns.append(columns[j][sort])
            columns[j] = self._columns[-1]  # drop the unsorted column
        sort += 1  # in place: the position of each end's follower
        self._followers: NDArray[Any] = shifted[sort] - small(1)
        del sort, columns, shifted
        first = self._columns[0]
        self._codes = list(np.arange(1, V + 1, dtype=small))  # token + 1 as the columns' scalar type (fast search)
        self._first_lo = np.searchsorted(first, np.arange(1, V + 1), side="left").tolist()
        self._first_hi = np.searchsorted(first, np.arange(1, V + 1), side="right").tolist()
        self._ids: dict[int, int] = {}  # by lo * MAX_ORDER + length (a context: its index range's start and length)
        self._length: list[int] = [1] * V
        self._lo: list[int] = list(self._first_lo)
        self._hi: list[int] = list(self._first_hi)
        self.row_capacity = max(1, row_cache_bytes // (8 * V))
        self._rows: _lru_cache_wrapper[NDArray[np.float64]] = lru_cache(maxsize=self.row_capacity)(self._build_row)
        self._moves: dict[int, ContextMoves | None] = {}

    @property
    def V(self) -> int:
        """Vocabulary size (the corpus' distinct characters)."""
        return self.bigram.V

    @property
    def pi(self) -> NDArray[np.float64]:
        """Stationary law of the bigram chain: the start law ``x0 ~ pi``."""
        return self.bigram.pi

    @property
    def stationary_unique(self) -> bool:
        """Whether `pi` is the bigram chain's unique stationary law."""
        return self.bigram.stationary_unique

    @property
    def source(self) -> str:
        """The bigram target's at N = 2 (``"corpus"``: SPEC §5's target), else ``"corpus (order N)"`` (characters)
        or the BPE target's with ``", order N"``."""
        if self.order == 2:
            return str(self.bigram.source)
        if self._vocabulary is None:
            return f"{self.bigram.source}, order {self.order}"
        return f"corpus (order {self.order})"

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """The character of each token id (empty for BPE tokens: `context_text` decodes them)."""
        return self._vocabulary or ()

    @property
    def corpus_sha256(self) -> str:
        """SHA-256 of the corpus bytes."""
        return str(self.bigram.corpus_sha256)

    @property
    def rows_stored(self) -> bool:
        """True at N = 2 (every context is a token, its row stored); False above (contexts met on demand)."""
        return self.order == 2

    @property
    def context_count(self) -> int:
        """Contexts interned so far (ids ``0 .. context_count - 1``)."""
        return len(self._length)

    def context_id(self, history: Sequence[int]) -> int:
        """The id of the context of `history` (oldest first, >= 1 token; only the last N - 1 count).

        The context is the longest suffix of those tokens that occurs in the corpus
        followed by a token, or the last token alone; ids are interned on first use.

        Raises
        ------
        ValueError
            Empty history or a token outside ``[0, V)``.
        """
        recent = [int(t) for t in history[-(self.order - 1):]] if len(history) else []
        if not recent or min(recent) < 0 or max(recent) >= self.V:
            raise ValueError(f"history: need 1 or more tokens in [0, {self.V}), got {list(history)[-8:]}")
        last = recent[-1]
        lo, hi, length = self._first_lo[last], self._first_hi[last], 1
        for j in range(1, len(recent)):
            if hi <= lo:
                break
            column = self._columns[j][lo:hi]
            code = self._codes[recent[-1 - j]]
            a = lo + int(column.searchsorted(code, side="left"))
            b = lo + int(column.searchsorted(code, side="right"))
            if b <= a:
                break
            lo, hi, length = a, b, j + 1
        if length == 1:
            return last
        return self._intern(length, lo, hi)

    def _intern(self, length: int, lo: int, hi: int) -> int:
        cid = self._ids.get(lo * MAX_ORDER + length)
        if cid is None:
            cid = self._ids[lo * MAX_ORDER + length] = len(self._length)
            self._length.append(length)
            self._lo.append(lo)
            self._hi.append(hi)
        return cid

    def intern_contexts(self, length: list[int], lo: list[int], hi: list[int]) -> list[int]:
        """The ids of distinct contexts given by their length and index range, the new ones interned in this order."""
        ids, lengths, los, his = self._ids, self._length, self._lo, self._hi
        keys = [start * MAX_ORDER + n for n, start in zip(length, lo, strict=True)]
        if ids.keys().isdisjoint(keys):  # all new (a chain's contexts met on its move table): at once
            first = len(lengths)
            ids.update(zip(keys, range(first, first + len(keys)), strict=True))
            lengths.extend(length)
            los.extend(lo)
            his.extend(hi)
            return list(range(first, first + len(keys)))
        out = []
        for key, n, start, end in zip(keys, length, lo, hi, strict=True):
            cid = ids.get(key)
            if cid is None:
                cid = ids[key] = len(lengths)
                lengths.append(n)
                los.append(start)
                his.append(end)
            out.append(cid)
        return out

    def next_context(self, context: int, token: int) -> int:
        """The id of the context after `token` is emitted in `context`."""
        return self.context_id((*self.context_tokens(context), int(token)))

    def context_tokens(self, context: int) -> tuple[int, ...]:
        """The tokens of a context, oldest first (its effective suffix: 1 .. N - 1 tokens)."""
        if not 0 <= context < len(self._length):
            raise IndexError(f"context {context} is not interned (0 .. {len(self._length) - 1})")
        if context < self.V:
            return (context,)
        lo = self._lo[context]
        return tuple(int(self._columns[j][lo]) - 1 for j in reversed(range(self._length[context])))

    def context_text(self, context: int) -> str:
        """The text of a context, oldest first (for telemetry): its characters, or its BPE tokens decoded together."""
        if self._vocabulary is None:
            assert self._decode is not None
            return self._decode(list(self.context_tokens(context)))
        return "".join(self._vocabulary[t] for t in self.context_tokens(context))

    def token_rows(self, tokens: NDArray[np.int64]) -> NDArray[np.float64]:
        """The bigram target's rows of one-token contexts, shape (len(tokens), V)."""
        if isinstance(self.bigram, DenseTarget):
            rows: NDArray[np.float64] = self.bigram.P[tokens]
            return rows
        out = np.empty((tokens.shape[0], self.V), dtype=np.float64)
        for i, x in enumerate(tokens.tolist()):
            out[i] = self.bigram.row(x)
        return out

    @property
    def followers(self) -> NDArray[Any]:
        """The token after each indexed corpus position, in index order (a context's are one range of it)."""
        return self._followers

    def context_occurrences(self, context: int) -> int:
        """How often the context occurs in the corpus followed by a token (its row's count total)."""
        self.context_tokens(context)  # range check
        return self._hi[context] - self._lo[context]

    def _build_row(self, context: int) -> NDArray[np.float64]:
        if context < self.V:
            p: NDArray[np.float64] = self.token_rows(np.array([context]))[0]  # the bigram target's, bit for bit
        else:
            counts = np.bincount(self._followers[self._lo[context]:self._hi[context]], minlength=self.V)
            smoothed = counts.astype(np.float64) + 1.0
            p = smoothed / smoothed.sum()
        p.setflags(write=False)  # shared by the cache: nobody may change it
        return p

    def row(self, context: int) -> NDArray[np.float64]:
        """``p(. | context)``: Laplace (+1 over V) on the counts of the tokens that follow the context, float64."""
        self.context_tokens(context)  # range check
        return self._rows(int(context))

    def support(self, context: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Every token (Laplace rows are positive everywhere) and the row."""
        p = self.row(context)
        return np.arange(self.V, dtype=np.int64), p

    def widest_support(self) -> int:
        """V: every row is positive everywhere."""
        return self.V

    def cached_rows(self) -> int:
        """How many rows the cache holds (at most `row_capacity`)."""
        return int(self._rows.cache_info().currsize)

    def moves(self, max_bytes: int = ORDER_MOVES_BYTES) -> ContextMoves | None:
        """The contexts as an automaton (`ContextMoves`), built once; None if its table exceeds `max_bytes`."""
        if max_bytes not in self._moves:
            self._moves[max_bytes] = self._build_moves(max_bytes)
        return self._moves[max_bytes]

    def _build_moves(self, max_bytes: int) -> ContextMoves | None:
        V, depth = self.V, self.order - 1
        ends = int(self._followers.shape[0])
        change = np.zeros(ends, dtype=np.bool_)
        change[0] = True
        starts: list[NDArray[np.int64]] = []  # the groups of each length (index order), as index ranges
        stops: list[NDArray[np.int64]] = []
        for column in self._columns:
            change[1:] |= column[1:] != column[:-1]
            every = np.flatnonzero(change)
            real = column[every] > 0  # no position before the corpus' start
            starts.append(every[real])
            stops.append(np.append(every[1:], ends)[real])
        counts = [V] + [int(s.shape[0]) for s in starts[1:]]
        states = sum(counts)
        if states * V * 4 > max_bytes:
            return None
        offset = np.cumsum([0, *counts]).tolist()  # states of length L: offset[L - 1] ..
        length = np.repeat(np.arange(1, depth + 1, dtype=np.int64), counts)
        lo = np.concatenate([np.array(self._first_lo, dtype=np.int64), *starts[1:]])
        hi = np.concatenate([np.array(self._first_hi, dtype=np.int64), *stops[1:]])
        parent = np.full(states, -1, dtype=np.int64)  # the state of the newest L - 1 tokens
        oldest = np.arange(states, dtype=np.int64)  # the oldest token (a one-token state's own)
        # child[L][(s - offset[L - 1]) * (V + 1) + code]: the state of length L + 1 that adds the token code - 1
        # before the tokens of state s (of length L), or -1.
        child: list[NDArray[np.int64]] = [np.zeros(0, dtype=np.int64)]
        for L in range(2, depth + 1):
            at = starts[L - 1]
            if L == 2:
                up = self._columns[0][at].astype(np.int64) - 1
            else:
                up = offset[L - 2] + np.searchsorted(starts[L - 2], at, side="right") - 1
            code = self._columns[L - 1][at].astype(np.int64)
            parent[offset[L - 1]:offset[L]] = up
            oldest[offset[L - 1]:offset[L]] = code - 1
            found = np.full(counts[L - 2] * (V + 1), -1, dtype=np.int64)
            found[(up - offset[L - 2]) * (V + 1) + code] = np.arange(offset[L - 1], offset[L], dtype=np.int64)
            child.append(found)
        # Renumber the longer contexts by falling corpus frequency: a chain's frequent states (and so its
        # tables, one slot per state) then share pages and cache lines.
        order = np.concatenate([np.arange(V), V + np.argsort(-(hi[V:] - lo[V:]), kind="stable")])
        length, lo, hi = length[order], lo[order], hi[order]
        pool = ThreadPoolExecutor(max_workers=1)  # the rows' follower counts while the table is built (one core)
        followers = pool.submit(count_followers, V, self._followers, length, lo, hi)
        pool.shutdown(wait=False)  # its thread ends with its one task
        table = np.empty((states, V), dtype=np.int32)
        block = max(1, (1 << 20) // V)
        for L in range(1, depth + 1):
            for a in range(offset[L - 1], offset[L], block):
                b = min(a + block, offset[L])
                rows = (np.tile(np.arange(V, dtype=np.int64), (b - a, 1)) if L == 1
                        else table[parent[a:b]].astype(np.int64))
                if depth > L:  # a move that kept the newest L tokens may add this context's oldest one
                    kept = (rows >= offset[L - 1]) & (rows < offset[L])
                    same = rows[kept]
                    adds = np.broadcast_to(oldest[a:b, None] + 1, rows.shape)[kept]
                    longer = child[L][(same - offset[L - 1]) * (V + 1) + adds]
                    rows[kept] = np.where(longer >= 0, longer, same)
                table[a:b] = rows
        renamed = np.empty(states, dtype=np.int32)
        renamed[order] = np.arange(states, dtype=np.int32)
        table = renamed[table[order]]
        return ContextMoves(self, table.reshape(-1), length, lo, hi, followers)

    def frequent_contexts(self, count: int = 4) -> list[int]:
        """Ids of the `count` most frequent full contexts (N - 1 tokens followed by a token) of the corpus.

        Ties go to the lexicographically first (newest token first); fewer if the
        corpus has fewer.  The fixed contexts of ``check`` at order N.
        """
        depth = self.order - 1
        ends = int(self._followers.shape[0])
        change = np.zeros(ends, dtype=np.bool_)
        change[0] = True
        for column in self._columns:
            change[1:] |= column[1:] != column[:-1]
        starts = np.flatnonzero(change)
        sizes = np.diff(np.append(starts, ends))
        full = self._columns[depth - 1][starts] > 0  # no position before the corpus' start
        starts, sizes = starts[full], sizes[full]
        best = np.argsort(-sizes, kind="stable")[:count]
        if depth == 1:
            return [int(self._columns[0][starts[i]]) - 1 for i in best]
        return [self._intern(depth, int(starts[i]), int(starts[i] + sizes[i])) for i in best]


def _sorted_positions(columns: list[NDArray[Any]], V: int) -> NDArray[np.int64]:
    """``np.lexsort(columns[::-1])``: the positions sorted by column 0, then 1 ... (stable), each column in ``[0, V]``.

    When the columns and a position fit 64 bits together, one sort of those keys (distinct, so
    any sort is the stable one) instead of a sort per column.
    """
    ends = int(columns[0].shape[0]) if columns else 0
    bits, position_bits = V.bit_length(), max(1, (ends - 1).bit_length())
    if not columns or bits * len(columns) + position_bits > 64:
        return np.lexsort(columns[::-1])
    key = np.arange(ends, dtype=np.uint64)
    for j, column in enumerate(columns):
        key |= column.astype(np.uint64) << np.uint64(position_bits + bits * (len(columns) - 1 - j))
    key.sort()
    key &= np.uint64((1 << position_bits) - 1)
    return key.astype(np.int64)


def order_target(path: str | Path, order: int, *, tokenizer: str | None = None,
                 row_cache_bytes: int = ORDER_ROW_CACHE_BYTES) -> OrderTarget:
    """The order-N target of a UTF-8 corpus over its characters, or over BPE tokens (see the module).

    Parameters
    ----------
    path : str or Path
        The corpus.
    order : int
        N: contexts are the last N - 1 tokens.
    tokenizer : str, optional
        ``"bpe:M"``: tokens are the ids of a byte-level BPE tokenizer of at most M
        tokens trained on the corpus (`thermospec.targets.bpe.bpe_corpus`); None:
        the corpus' characters.
    row_cache_bytes : int
        Memory bound of the row cache.

    Raises
    ------
    CorpusError
        As `corpus_target` or `bpe_target` (missing, not UTF-8, too short ...).
    ValueError
        `order` not an integer in ``[2, MAX_ORDER]`` (the message names ``--order``), or
        a tokenizer spec `parse_tokenizer` refuses (it names ``--tokenizer``).
    """
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or not 2 <= order <= MAX_ORDER:
        raise ValueError(f"--order: must be an integer in [2, {MAX_ORDER}], got {order!r}")
    if tokenizer is not None:
        bpe, ids, trained = bpe_corpus(str(path), parse_tokenizer(tokenizer))
        return OrderTarget(int(order), bpe, ids, row_cache_bytes, decode=trained.decode)
    bigram = corpus_target(path)
    text, _ = read_corpus(path)
    alphabet = np.array([ord(c) for c in bigram.vocabulary or ()], dtype=np.int64)
    if text.isascii():
        codepoints: NDArray[Any] = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    else:
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    if codepoints.dtype == np.uint8:  # ASCII: each character's token from a table of the 128 codes
        lookup = np.zeros(256, dtype=np.uint32)
        lookup[alphabet] = np.arange(alphabet.shape[0], dtype=np.uint32)
        tokens = lookup[codepoints]
    else:
        tokens = np.empty(codepoints.shape[0], dtype=np.uint32)
        for start in range(0, tokens.shape[0], 1 << 20):  # bounded temporaries
            tokens[start:start + (1 << 20)] = np.searchsorted(alphabet, codepoints[start:start + (1 << 20)])
    return OrderTarget(int(order), bigram, tokens, row_cache_bytes)
