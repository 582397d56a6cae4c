"""`SimTSU`: the software stand-in for a Thermodynamic Sampling Unit.

It receives only the payload bytes, decodes them, and samples F(ψ) exactly as
`core.proposal` defines it (``draft_cdf`` inverted by `core.sampling.inverse_cdf`),
reporting the exact float64 ``log q`` of each draw.  Nothing here sees the target row.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from thermospec.core.payload import Payload, decode_payload
from thermospec.core.proposal import proposal_tables
from thermospec.core.sampling import inverse_cdf

__all__ = ["SimTSU"]


class SimTSU:
    """Software stand-in for a TSU: samples F(ψ) and reports the exact ``log q``.

    Parameters
    ----------
    payload : Payload or bytes
        The ψ payload; bytes are decoded and validated first.

    Attributes
    ----------
    payload : Payload
        The decoded payload.
    q : ndarray of float64, shape (V,)
        The whole distribution F(ψ), read-only, for the host's residual step.

    Notes
    -----
    Each draw consumes exactly one float64 uniform of the generator and inverts
    the cumulative distribution of `q` (`draft_cdf`, `thermospec.core.sampling.inverse_cdf`).

    Examples
    --------
    >>> import numpy as np
    >>> from thermospec import SimTSU, craft_payload
    >>> tsu = SimTSU(craft_payload(np.array([0.5, 0.3, 0.2]), K=2, tau=1.0))
    >>> tokens, log_q = tsu.sample(np.random.default_rng(0), 4)
    >>> bool(np.allclose(log_q, np.log(tsu.q[tokens])))
    True
    """

    samples_payload: ClassVar[bool] = True
    """Whether draws are exactly the inverse-CDF draws of F(ψ) (`draft_cdf`): table-driven paths rely on it."""
    reports_exactly: ClassVar[bool] = True
    """Whether `report_log_q` is SimTSU's own, log F(ψ) by construction, so the host need not compare it;
    False, automatically, for every subclass that overrides `report_log_q` (`__init_subclass__`)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "report_log_q" in vars(cls):  # another report: the host compares it with log F(ψ)
            cls.reports_exactly = False

    def __init__(self, payload: Payload | bytes) -> None:
        if isinstance(payload, bytes | bytearray | memoryview):
            payload = decode_payload(bytes(payload))
        self.payload = payload
        q, cdf = proposal_tables(payload)
        q.flags.writeable = False
        self.q: NDArray[np.float64] = q
        cdf.flags.writeable = False
        self.cdf: NDArray[np.float64] = cdf

    def sample(
        self, rng: np.random.Generator, n: int
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Draw `n` tokens from F(ψ).

        Returns
        -------
        tokens : ndarray of int64, shape (n,)
        log_q : ndarray of float64, shape (n,)
            Natural log of F(ψ) at each drawn token.
        """
        tokens = inverse_cdf(self.cdf, rng.random(n))
        return tokens, self.report_log_q(tokens)

    def report_log_q(self, tokens: NDArray[np.int64]) -> NDArray[np.float64]:
        """The ``log q`` this TSU reports with each drawn token: ``log F(ψ)[y]``.

        The host checks every report against F(ψ) (`thermospec.engine.ReportVerifier`);
        a faulty TSU that misreports overrides this method.
        """
        with np.errstate(divide="ignore"):  # -inf, silently, for a token F(ψ) gives probability 0
            log_q: NDArray[np.float64] = np.log(self.q[tokens])
        return log_q

    def draw(self, rng: np.random.Generator) -> tuple[int, float]:
        """Draw one token from F(ψ); return it with its exact ``log q``."""
        tokens, log_q = self.sample(rng, 1)
        return int(tokens[0]), float(log_q[0])
