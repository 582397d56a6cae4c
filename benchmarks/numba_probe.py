"""``python -m benchmarks.numba_probe``: what Numba would cost for the chain's loop (needs ``pip install numba``).

Prints the import time, the first call (JIT) and the per-step time of the same
table-driven step as `thermospec.engine.kernels`, written with Numba (plain binary
search, no guide table). This is the measurement behind choosing a C extension:
the default run's whole budget is well under a second.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np


def main() -> int:
    """Measure and print."""
    start = time.perf_counter()
    try:
        import numba  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("numba_probe: error: Numba is not installed (it is in no extra: pip install numba to run this "
              "comparison)", file=sys.stderr)
        return 2

    imported = time.perf_counter() - start

    @numba.njit(cache=False)  # type: ignore[misc, untyped-decorator, unused-ignore]
    def steps(tables: Any, totals: Any, lasts: Any, slot_of: Any, u: Any, x: int) -> Any:
        n = u.shape[0]
        out = np.empty(n, np.int64)
        for t in range(n):
            s = slot_of[x]
            y = np.searchsorted(tables[s, 0], u[t, 0] * totals[s, 0], side="right")
            y = min(y, lasts[s, 0])
            if u[t, 1] < tables[s, 1, y]:
                x = y
            else:
                x = min(np.searchsorted(tables[s, 2], u[t, 2] * totals[s, 1], side="right"), lasts[s, 1])
            out[t] = x
        return out

    V, n = 256, 1_000_000
    rng = np.random.default_rng(0)
    cdf = np.cumsum(rng.dirichlet(np.ones(V), size=V), axis=1)
    tables = np.stack([cdf, np.full((V, V), 0.9), cdf], axis=1)
    totals = np.stack([cdf[:, -1], cdf[:, -1]], axis=1)
    lasts = np.full((V, 2), V - 1, dtype=np.int64)
    slot_of = np.arange(V)
    u = rng.random((n, 3))
    start = time.perf_counter()
    steps(tables, totals, lasts, slot_of, u[:10], 0)
    jit = time.perf_counter() - start
    start = time.perf_counter()
    steps(tables, totals, lasts, slot_of, u, 0)
    per_step = (time.perf_counter() - start) / n
    print(f"numba {numba.__version__}: import {imported * 1e3:.0f} ms, first call (JIT) {jit * 1e3:.0f} ms, "
          f"{per_step * 1e9:.0f} ns/step at V = {V}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
