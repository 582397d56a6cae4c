"""The straightforward implementation, written the way one writes it from the papers.

Per step: look up the context's payload, compute q = F(ψ) from it, build the
draft CDF, draw, compute the acceptance ratio, and on rejection build the
residual and its CDF, all with NumPy on whole V-vectors.  It consumes the same
three uniforms per step as the engine, so it emits the same tokens: the
benchmark checks that before it quotes the speed-up.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from thermospec.core.payload import Payload
from thermospec.core.proposal import proposal_distribution


def naive_chain(
    row: Callable[[int], NDArray[np.float64]],
    payload: Callable[[int], Payload],
    pi: NDArray[np.float64],
    steps: int,
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """Emitted tokens of `steps` steps, one NumPy step at a time."""
    x = int(np.searchsorted(np.cumsum(pi), rng.random() * np.cumsum(pi)[-1], side="right"))
    emitted = np.empty(steps, dtype=np.int64)
    for t in range(steps):
        u_draft, u_accept, u_residual = rng.random(3)
        p = row(x)
        q = proposal_distribution(payload(x))
        cdf = np.cumsum(q)
        y = min(int(np.searchsorted(cdf, u_draft * cdf[-1], side="right")),
                int(np.searchsorted(cdf, cdf[-1], side="left")))
        if u_accept < (p[y] / q[y] if q[y] > 0 else 0.0):
            x = y
        else:
            r = np.cumsum(p - np.minimum(p, q))
            if r[-1] <= 0:
                r = np.cumsum(p)
            x = min(int(np.searchsorted(r, u_residual * r[-1], side="right")),
                    int(np.searchsorted(r, r[-1], side="left")))
        emitted[t] = x
    return emitted
