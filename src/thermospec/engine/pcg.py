"""The kernel's view of a NumPy PCG64 generator: its state as four words, read and given back.

Given a PCG64 ``numpy.random.Generator``, the compiled kernel draws the uniforms
itself (the very doubles of ``rng.random((n, 3))``) from these words.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
from numpy.typing import NDArray

__all__ = ["draws_pcg64", "pcg64_state", "set_pcg64_state"]


_MASK64 = (1 << 64) - 1


def pcg64_state(rng: np.random.Generator) -> NDArray[np.uint64]:
    """The PCG64 state of `rng` as the kernel takes it: ``[state >> 64, state & mask, inc >> 64, inc & mask]``."""
    state = rng.bit_generator.state["state"]
    s, inc = int(state["state"]), int(state["inc"])
    return np.array([s >> 64, s & _MASK64, inc >> 64, inc & _MASK64], dtype=np.uint64)


def set_pcg64_state(rng: np.random.Generator, words: NDArray[np.uint64]) -> None:
    """Give `rng` back the PCG64 state the kernel advanced (`pcg64_state`'s layout)."""
    state = dict(rng.bit_generator.state)
    hi, lo, inc_hi, inc_lo = (int(w) for w in words.tolist())
    state["state"] = {"state": (hi << 64) | lo, "inc": (inc_hi << 64) | inc_lo}
    rng.bit_generator.state = state


def draws_pcg64(module: ModuleType | None, rng: np.random.Generator) -> bool:
    """Whether the compiled `module` can draw `rng`'s uniforms itself (a plain PCG64 generator)."""
    return module is not None and bool(getattr(module, "PCG64", 0)) and type(rng.bit_generator) is np.random.PCG64
