"""Inverse-CDF draws: the one way every code path turns a uniform into a token.

Token ``j`` is drawn from unnormalised weights ``w`` with cumulative sums
``c = cumsum(w)`` when ``c[j-1] <= u * c[-1] < c[j]`` for a float64 uniform
``u`` in [0, 1).  A token of weight 0 owns an empty interval and is never drawn.
When rounding makes ``u * c[-1]`` reach ``c[-1]``, the draw is the last token of
positive weight.  The reference path, the vectorised path and the compiled
engine all use exactly this rule, so the same uniforms give the same tokens.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["inverse_cdf", "last_positive"]


def last_positive(cdf: NDArray[np.float64]) -> int:
    """Index of the last token of positive weight, given the cumulative sums."""
    return int(np.searchsorted(cdf, cdf[-1], side="left"))


def inverse_cdf(cdf: NDArray[np.float64], u: NDArray[np.float64]) -> NDArray[np.int64]:
    """Draw tokens by inverting a cumulative distribution.

    Parameters
    ----------
    cdf : ndarray of float64, shape (V,)
        Cumulative sums of non-negative weights with a positive total.
    u : ndarray of float64
        Uniforms in [0, 1).

    Returns
    -------
    ndarray of int64, the shape of `u`
        The drawn tokens.
    """
    idx: NDArray[np.int64] = np.searchsorted(cdf, u * cdf[-1], side="right").astype(np.int64)
    np.minimum(idx, last_positive(cdf), out=idx)
    return idx
