"""`chain_starts` gives every chain the start token and PCG64 state its NumPy stream gives."""

from __future__ import annotations

import numpy as np
import pytest

from thermospec.core.sampling import inverse_cdf
from thermospec.engine import chain_seeds
from thermospec.engine.batch import chain_stream
from thermospec.engine.chain_seeds import chain_starts
from thermospec.engine.pcg import pcg64_state

PI = np.random.default_rng(0).dirichlet(np.ones(30))


@pytest.mark.parametrize("seed", [0, 1, 7, 2**32 - 1, 2**32, 2**64 + 5, 3**90])  # one to many entropy words
@pytest.mark.parametrize("chains", [1, 2, 37, 300])
def test_chain_starts_are_numpys(seed: int, chains: int) -> None:
    got = chain_starts(seed, chains, PI)
    assert got is not None
    rngs = [chain_stream(seed, b) for b in range(chains)]
    x = inverse_cdf(np.cumsum(PI), np.array([r.random() for r in rngs]))
    np.testing.assert_array_equal(got[0], x)
    np.testing.assert_array_equal(got[1], np.stack([pcg64_state(r) for r in rngs]))


def test_chain_starts_build_the_streams_when_in_doubt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds SeedSequence reads otherwise, or a NumPy that seeds otherwise: None (the caller builds the streams)."""
    assert chain_starts(-1, 3, PI) is None
    assert chain_starts(True, 3, PI) is None
    assert chain_starts(0, 0, PI) is None
    monkeypatch.setattr(chain_seeds, "random_stream", lambda seed, *key: np.random.default_rng(seed + 1))
    assert chain_starts(5, 3, PI) is None
