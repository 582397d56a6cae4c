"""Whether NumPy's float64 ``exp`` and ``log`` are the C library's, bit for bit, on this machine.

`targets.trace_rows` takes exp and log per distinct value of a row; its fused passes (one call into
``_trace_rows`` per row and per ψ) call the C library's, which is what NumPy's ufuncs call unless NumPy
has a vector loop of its own for the machine (AVX-512 ones, say).  They are used only where both give
the same bits on a spread of the arguments softmax and F(ψ) meet, checked once; elsewhere NumPy's
ufuncs are called between the passes, as before.  Either way the bytes are NumPy's.
"""

from __future__ import annotations

import threading
from types import ModuleType

import numpy as np
from numpy.typing import NDArray

__all__ = ["libm_is_numpys"]

_DECIDED: dict[str, bool] = {}
_DECIDING = threading.Lock()


def _spread(n: int, start: int) -> NDArray[np.float64]:
    """n points spread over [0, 1) (the golden ratio's multiples, fractional parts): no random generator to load."""
    return (np.arange(start, start + n, dtype=np.float64) * 0.6180339887498949) % 1.0


def libm_is_numpys(compiled: ModuleType) -> bool:
    """Whether ``compiled.libm`` (the C library's exp and log) gives NumPy's bits, decided once a process (by the
    first thread that asks; the others wait for its answer).

    Parameters
    ----------
    compiled : module
        ``thermospec.targets._trace_rows``.
    """
    same = _DECIDED.get("same")
    if same is None:
        with _DECIDING:
            same = _DECIDED.get("same")
            if same is None:
                same = _DECIDED["same"] = _decide(compiled)
    return same


def _decide(compiled: ModuleType) -> bool:
    halves = np.arange(0, 0x7C00, 7, dtype=np.uint16).view(np.float16).astype(np.float64)  # float16s >= 0
    spread = [-40 * _spread(2_000, 1), -800 * _spread(300, 2_001), -1e-6 * _spread(500, 2_301), [0.0, -np.inf]]
    x = np.concatenate([-halves, *spread])
    with np.errstate(all="ignore"):
        e = np.exp(x)
        tiny = 2.0 ** -(1074 * _spread(1_000, 4_801))
        y = np.concatenate([e[e > 0], _spread(2_000, 2_801), tiny, [0.0, 1.0]])
        for args, want, take_log in ((x, e, False), (y, np.log(y), True)):
            got = np.empty_like(args)
            compiled.libm(args, got, take_log)
            if got.tobytes() != want.tobytes():
                return False
    return True
