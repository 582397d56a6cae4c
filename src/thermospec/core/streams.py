"""Named random streams: every random number of a run comes from one of them.

A stream is keyed by (seed, purpose, *index), so the draws of one purpose never
depend on how many another consumed, and a configuration's results do not
depend on the order in which a sweep ran it.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = ["Stream", "random_stream"]


class Stream(IntEnum):
    """Purposes of the random streams derived from a run's seed."""

    TARGET = 0
    CHAIN = 1
    CHECK = 2
    SWEEP = 3  # grid sweeps: one stream per (seed, K, tau bits), see thermospec.experiments.sweeps


def random_stream(seed: int, purpose: Stream, *index: int) -> np.random.Generator:
    """An independent generator for one purpose of a seed.

    Streams are children of ``SeedSequence(seed)`` keyed by ``(purpose, *index)``,
    so the synthetic target depends only on (seed, V, c), never on K, τ, ε or
    the run length, and sweeps can derive one stream per configuration.
    """
    sequence = np.random.SeedSequence(seed, spawn_key=(int(purpose), *index))
    return np.random.Generator(np.random.PCG64(sequence))
