"""The correction step of speculative sampling (Leviathan et al. 2023; Chen et al. 2023).

Given a draft ``y ~ q``, accept it with probability ``min(1, p(y) / q(y))``;
otherwise emit a draw from the residual ``r = p - min(p, q) = max(p - q, 0)``,
normalised.  For every ``p`` and every ``q`` with ``q(y) > 0`` where drafts land,
the emitted token is distributed exactly as ``p``:

    P(emit v) = q(v) min(1, p(v)/q(v)) + (sum_w max(q(w) - p(w), 0)) r(v) / sum r
              = min(p(v), q(v)) + max(p(v) - q(v), 0) = p(v),

because ``sum max(q - p, 0) = sum max(p - q, 0) = 1 - sum min(p, q)``.  The
probability of acceptance is the overlap mass ``sum min(p, q) = 1 - TV(p, q)``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from thermospec.core.sampling import inverse_cdf

__all__ = ["accept_correct_step", "acceptance_ratio", "residual", "residual_cdf"]


def residual(p: NDArray[np.float64], q: NDArray[np.float64]) -> NDArray[np.float64]:
    """Unnormalised residual ``p - min(p, q)``, exactly 0 where ``q >= p``."""
    return p - np.minimum(p, q)


def residual_cdf(p: NDArray[np.float64], q: NDArray[np.float64]) -> NDArray[np.float64]:
    """Cumulative sums to draw a rejected step's token from.

    The residual's when it has positive mass.  When ``p`` and ``q`` agree to
    rounding the residual is all zeros: a rejection then had probability ~0
    and, to stay exact without dividing by zero, the token is drawn from ``p``.
    """
    cdf = np.cumsum(residual(p, q))
    if cdf[-1] > 0:
        return cdf
    return np.cumsum(p)


def acceptance_ratio(p: NDArray[np.float64], q: NDArray[np.float64]) -> NDArray[np.float64]:
    """``p / q`` elementwise, with 0 where ``q = 0`` (a draft never lands there).

    A draft ``y`` is accepted when ``u < p(y) / q(y)`` for a uniform ``u`` in
    [0, 1): the strict comparison never accepts a token with ``p(y) = 0``.
    """
    ratio = np.zeros_like(p)
    with np.errstate(over="ignore"):  # p / (subnormal q) is +inf: always accepted, exactly as min(1, p/q) says
        np.divide(p, q, out=ratio, where=q > 0)
    return ratio


def accept_correct_step(
    p: NDArray[np.float64], q: NDArray[np.float64], y: int, rng: np.random.Generator
) -> tuple[int, bool]:
    """Accept draft `y` with probability ``min(1, p(y)/q(y))``, else draw from the residual.

    Parameters
    ----------
    p : ndarray of float64, shape (V,)
        Target distribution.
    q : ndarray of float64, shape (V,)
        The distribution the draft was really sampled from (F of the decoded payload).
    y : int
        The draft token; ``q[y]`` must be > 0.
    rng : numpy.random.Generator
        Consumes exactly two float64 uniforms: one to accept, one for the residual.

    Returns
    -------
    emitted : int
        The emitted token, distributed exactly as `p`.
    accepted : bool
        Whether the draft was accepted.

    Raises
    ------
    ValueError
        If ``q[y]`` is not > 0 or `y` is out of range.
    """
    y = int(y)
    if not 0 <= y < p.shape[0]:
        raise ValueError(f"y: token {y} is outside the vocabulary [0, {p.shape[0]})")
    q_y = float(q[y])
    if not q_y > 0:
        raise ValueError(f"q[y]: the draft {y} has q = {q_y!r}; a draft must have q > 0")
    u_accept, u_residual = rng.random(2)
    if u_accept < float(p[y]) / q_y:
        return y, True
    return int(inverse_cdf(residual_cdf(p, q), np.array([u_residual]))[0]), False
