"""Every chain's start token and PCG64 state at once, without building B generators.

``run --chains B`` gives chain b the stream `thermospec.engine.batch.chain_stream` (seed, b): a
``numpy.random.Generator`` on ``PCG64(SeedSequence(seed, spawn_key=(CHAIN, b)))`` (chain 0:
``spawn_key=(CHAIN,)``), whose first uniform draws ``x_0 ~ pi``; the compiled kernel then takes
each chain's PCG64 state (`thermospec.engine.pcg.pcg64_state`).  Building those generators costs
~30 µs a chain (~30 ms at B = 1,024, a tenth of a short run's stepping).  `chain_starts` computes
the same states directly: NumPy's `SeedSequence` hashing (O'Neill's ``seed_seq_fe``, 32-bit words),
vectorised over the chains, then PCG64's seeding and first step in 128-bit integers.  It checks its
first and last chain against NumPy's own generators and answers None (build them) on any
difference, so a NumPy that seeded differently would cost time, never tokens.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from thermospec.core.sampling import inverse_cdf
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.pcg import pcg64_state

__all__ = ["chain_starts"]

_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _SHIFT, _POOL = 0xCA01F9DD, 0x4973F715, 16, 4
_M32, _M64, _M128 = (1 << 32) - 1, (1 << 64) - 1, (1 << 128) - 1
_PCG_MULT = (0x2360ED051FC65DA4 << 64) | 0x4385DF649FCCF645

Words = NDArray[np.uint32]


def _words(value: int) -> list[int]:
    """A non-negative integer as SeedSequence reads it: its 32-bit words, least significant first ([0] for 0)."""
    out = []
    while True:
        out.append(value & _M32)
        value >>= 32
        if not value:
            return out


def _pools(entropy: list[Words]) -> list[Words]:
    """SeedSequence's pool (4 words) of every chain: `entropy` word by word, each word one value per chain."""
    h = _INIT_A

    def hashmix(value: Words) -> Words:
        nonlocal h
        value = value ^ np.uint32(h)
        h = (h * _MULT_A) & _M32
        value = value * np.uint32(h)
        return value ^ (value >> np.uint32(_SHIFT))

    def mix(x: Words, y: Words) -> Words:
        r: Words = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
        return r ^ (r >> np.uint32(_SHIFT))

    zero = np.zeros_like(entropy[0])
    pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for word in entropy[_POOL:]:
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(word))
    return pool


def _seed_words(pool: list[Words]) -> list[NDArray[np.uint64]]:
    """``generate_state(4, np.uint64)`` of every chain's pool: four 64-bit words."""
    h = _INIT_B
    half = []
    for i in range(8):
        value = pool[i % _POOL] ^ np.uint32(h)
        h = (h * _MULT_B) & _M32
        value = value * np.uint32(h)
        half.append((value ^ (value >> np.uint32(_SHIFT))).astype(np.uint64))
    return [half[2 * j] | (half[2 * j + 1] << np.uint64(32)) for j in range(4)]


def _states(seed: int, chains: int) -> tuple[list[int], list[int]]:
    """Each chain's PCG64 (state, increment) as NumPy seeds it, before any draw."""
    run = _words(seed)
    run = run + [0] * (_POOL - len(run))  # a spawn key pads the run's entropy to the pool (NumPy >= 1.19)
    keys = [np.array([int(Stream.CHAIN)], dtype=np.uint32)]  # chain 0: spawn_key (CHAIN,)
    columns: list[list[Words]] = [[np.array([w], dtype=np.uint32) for w in run] + keys]
    if chains > 1:  # spawn_key (CHAIN, b): one word of b (chains <= 2^32)
        same = [np.full(chains - 1, w, dtype=np.uint32) for w in [*run, int(Stream.CHAIN)]]
        columns.append([*same, np.arange(1, chains, dtype=np.uint32)])
    states: list[int] = []
    incs: list[int] = []
    for entropy in columns:
        s0, s1, i0, i1 = (w.tolist() for w in _seed_words(_pools(entropy)))
        for a, c, d, e in zip(s0, s1, i0, i1, strict=True):
            inc = (((d << 64) | e) << 1 | 1) & _M128
            # state 0, stepped (0 * mult + inc), the initial state added, stepped again
            state = ((inc + ((a << 64) | c)) * _PCG_MULT + inc) & _M128
            states.append(state)
            incs.append(inc)
    return states, incs


Starts = tuple[NDArray[np.int64], NDArray[np.uint64]]


def chain_starts(seed: int, chains: int, pi: NDArray[np.float64]) -> Starts | None:
    """Each chain's start token ``x_0 ~ pi`` and its PCG64 state after that draw (`pcg64_state`'s layout, (B, 4)).

    What ``chain_stream(seed, b)`` and its first uniform give, for b = 0 .. chains - 1; None when
    `seed` is not a non-negative integer or NumPy's generators disagree (then build them).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or not 1 <= chains <= 1 << 32:
        return None
    states, incs = _states(seed, chains)
    u = np.empty(chains, dtype=np.float64)
    words = np.empty((chains, 4), dtype=np.uint64)
    for b, (state, inc) in enumerate(zip(states, incs, strict=True)):
        state = (state * _PCG_MULT + inc) & _M128
        rot, out = state >> 122, ((state >> 64) ^ state) & _M64
        out = ((out >> rot) | (out << ((64 - rot) & 63))) & _M64
        u[b] = (out >> 11) * (1.0 / 9007199254740992.0)
        words[b] = (state >> 64, state & _M64, inc >> 64, inc & _M64)
    for b in {0, chains - 1}:  # NumPy's own, for the first and the last chain
        rng = random_stream(seed, Stream.CHAIN) if b == 0 else random_stream(seed, Stream.CHAIN, b)
        if rng.random() != u[b] or not np.array_equal(pcg64_state(rng), words[b]):
            return None
    return inverse_cdf(np.cumsum(pi), u), words
