"""Whether NumPy's float64 ``exp`` and ``log`` are the C library's, bit for bit, on this machine.

`targets.trace_rows` takes exp and log per distinct value of a row; its fused passes (one call into
``_trace_rows`` per row and per ψ) call the C library's, which is what NumPy's ufuncs call unless NumPy
has a vector loop of its own for the machine (AVX-512 ones, say).  They are used only where both give
the same bits on a spread of the arguments softmax and F(ψ) meet, checked once; elsewhere NumPy's
ufuncs are called between the passes, as before.  Either way the bytes are NumPy's.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

__all__ = ["libm_is_numpys"]

_DECIDED: dict[str, bool] = {}


def libm_is_numpys(compiled: ModuleType) -> bool:
    """Whether ``compiled.libm`` (the C library's exp and log) gives NumPy's bits, decided once a process.

    Parameters
    ----------
    compiled : module
        ``thermospec.targets._trace_rows``.
    """
    same = _DECIDED.get("same")
    if same is None:
        rng = np.random.default_rng(0)
        halves = np.arange(0, 0x7C00, 7, dtype=np.uint16).view(np.float16).astype(np.float64)  # float16s >= 0
        spread = [-40 * rng.random(2_000), -800 * rng.random(300), -1e-6 * rng.random(500), [0.0, -np.inf]]
        x = np.concatenate([-halves, *spread])
        with np.errstate(all="ignore"):
            e = np.exp(x)
            y = np.concatenate([e[e > 0], rng.random(2_000), 2.0 ** -rng.uniform(0, 1074, 1_000), [0.0, 1.0]])
            same = True
            for args, want, take_log in ((x, e, False), (y, np.log(y), True)):
                got = np.empty_like(args)
                compiled.libm(args, got, take_log)
                same = same and got.tobytes() == want.tobytes()
        _DECIDED["same"] = same
    return same
