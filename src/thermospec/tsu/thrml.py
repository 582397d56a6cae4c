"""Extropic's THRML library as a TSU backend (``--tsu thrml``, optional extra ``thrml``).

The TSU's draws come from a THRML block-Gibbs program: one `thrml.CategoricalNode`
per draft, in one free block, with a `CategoricalEBMFactor` whose bias on each
node is ``log F(ψ)`` (energy ``-log q``), sampled by
`CategoricalGibbsConditional`.  The nodes do not interact, so one Gibbs sweep
(one warm-up step from an all-zero state) makes every node an independent draw
from ``softmax(log q) = F(ψ)``.  The node dtype is the narrowest unsigned
integer that holds V (uint8 up to 256, uint16 up to 65,536, else uint32): THRML's
default uint8 cannot represent token ids above 255.

``log q`` is still computed from the decoded payload (float64), exactly as for
`SimTSU`; THRML only does the sampling (in JAX's default float32, so its draws
follow F(ψ) to float32 rounding of the logits).  Draws are made in batches of
`ThrmlSampler.nodes` per context and buffered.  Each refill of context x uses
the JAX key ``fold_in(fold_in(key(seed), x), refill)``, so a run is
reproducible and no randomness is ever reused, even when a context's TSU is
rebuilt.

A `ThrmlTSU` keeps the chain's random-stream layout: ``sample(rng, n)`` still
consumes ``n`` uniforms of `rng` (and ignores them), so the accept and residual
uniforms of a step are the ones a `SimTSU` run would use.  Runs with this backend
go through the per-step reference loops (`engine.run_chain_reference`,
`blocks.run_blocks_reference`), which call the TSU for every draw, never the
table-driven fast paths (those invert ``SimTSU.cdf`` themselves).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from thermospec.tsu.drafts import ContextDraft, Proposer
from thermospec.tsu.sim import SimTSU

__all__ = ["ThrmlProposer", "ThrmlSampler", "ThrmlTSU", "node_dtype_name", "thrml_available", "thrml_proposer"]


DRAWS_PER_CALL_BUDGET = 1 << 22  # nodes x V logits per THRML call
MISSING_LOG_Q = -1e30  # stands for log 0: exp underflows to exactly 0 in float32


class ThrmlMissingError(ImportError):
    """The optional extra ``thrml`` is not installed."""


def thrml_available() -> bool:
    """Whether the optional ``thrml`` extra (and JAX) can be imported."""
    try:
        import thrml  # noqa: F401
    except ImportError:
        return False
    return True


def node_dtype_name(V: int) -> str:
    """The narrowest unsigned integer dtype of a categorical node with V states."""
    if V <= 256:
        return "uint8"
    if V <= 65_536:
        return "uint16"
    return "uint32"


class ThrmlSampler:
    """One compiled THRML program drawing `nodes` independent categorical samples of V states.

    Parameters
    ----------
    V : int
        Number of categories (vocabulary size).
    nodes : int or None
        Draws per call; by default as many as keep ``nodes * V`` near 4M logits.
    """

    def __init__(self, V: int, nodes: int | None = None) -> None:
        try:
            import jax
            import jax.numpy as jnp
            import thrml
            from thrml.models.discrete_ebm import CategoricalEBMFactor, CategoricalGibbsConditional
        except ImportError:
            raise ThrmlMissingError("--tsu: thrml is not installed (pip install 'thermospec[thrml]')") from None
        self.V = V
        self.nodes = nodes if nodes is not None else int(max(16, min(4096, DRAWS_PER_CALL_BUDGET // V)))
        dtype = getattr(jnp, node_dtype_name(V))
        block = thrml.Block([thrml.CategoricalNode() for _ in range(self.nodes)])
        spec = thrml.BlockGibbsSpec([block], [], {thrml.CategoricalNode: jax.ShapeDtypeStruct((), dtype)})
        conditional = CategoricalGibbsConditional(V)
        schedule = thrml.SamplingSchedule(n_warmup=1, n_samples=1, steps_per_sample=1)
        init = [jnp.zeros((self.nodes,), dtype=dtype)]

        def draw(key: Any, bias: Any) -> Any:
            factor = CategoricalEBMFactor([block], bias)
            program = thrml.FactorSamplingProgram(spec, [conditional], [factor], [])
            return thrml.sample_states(key, program, schedule, init, [], [block])[0]

        self._jax = jax
        self._jnp = jnp
        self._draw = jax.jit(draw)

    def key(self, seed: int) -> Any:
        """The JAX key of a seed."""
        return self._jax.random.key(seed)

    def fold(self, key: Any, *index: int) -> Any:
        """A child key: ``fold_in`` of each index in turn."""
        for i in index:
            key = self._jax.random.fold_in(key, i)
        return key

    def sample(self, key: Any, q: NDArray[np.float64]) -> NDArray[np.int64]:
        """`nodes` independent draws from ``q`` (one categorical node each, bias ``log q``)."""
        log_q = np.full(self.V, MISSING_LOG_Q, dtype=np.float32)
        positive = q > 0
        log_q[positive] = np.log(q[positive])
        bias = self._jnp.broadcast_to(self._jnp.asarray(log_q), (self.nodes, self.V))
        out: NDArray[np.int64] = np.asarray(self._draw(key, bias)).reshape(-1).astype(np.int64)
        return out


class ThrmlTSU(SimTSU):
    """A TSU whose draws come from THRML; ``q`` and ``log q`` still come from the decoded payload.

    Parameters
    ----------
    payload : Payload or bytes
        The ψ payload.
    sampler : ThrmlSampler
        The compiled program (shared by every context of the same V).
    key : jax key
        This context's key; refill r uses ``fold_in(key, r)``.
    refills : callable
        ``refills()`` returns the next refill number of this context (kept by the proposer,
        so a rebuilt TSU never reuses a key).
    """

    samples_payload: ClassVar[bool] = False

    def __init__(self, payload: Any, sampler: ThrmlSampler, key: Any, refills: Callable[[], int]) -> None:
        super().__init__(payload)
        self.sampler = sampler
        self._key = key
        self._refills = refills
        self._buffer: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._used = 0

    def _take(self, n: int) -> NDArray[np.int64]:
        parts = []
        while n > 0:
            if self._used == self._buffer.shape[0]:
                self._buffer = self.sampler.sample(self.sampler.fold(self._key, self._refills()), self.q)
                self._used = 0
            k = min(n, self._buffer.shape[0] - self._used)
            parts.append(self._buffer[self._used : self._used + k])
            self._used += k
            n -= k
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Draw `n` tokens with THRML; consumes (and ignores) `n` uniforms of `rng` to keep the layout."""
        rng.random(n)
        tokens = self._take(n)
        return tokens, np.log(self.q[tokens])


class ThrmlProposer(Proposer):
    """Wraps a proposer: same payloads, but each context's TSU samples with THRML."""

    samples_payload = False

    @property
    def backend(self) -> dict[str, Any] | None:  # type: ignore[override]
        """THRML, its node dtype and nodes per sampling call (the summary's ``tsu_backend``)."""
        return {"name": "thrml", "node_dtype": node_dtype_name(self.sampler.V), "nodes_per_call": self.sampler.nodes}

    def __init__(self, base: Proposer, V: int, seed: int) -> None:
        super().__init__(base.row, base.K, base.tau, base.eps, draft_row=base.draft_row, K_of=base.K_of)
        self.base = base
        self.sampler = ThrmlSampler(V)
        self._root = self.sampler.key(seed)
        self._refills: dict[int, int] = {}
        self._tsus: dict[int, ContextDraft] = {}
        self.max_cached = max(16, (64 * 1024 * 1024) // (16 * V))

    def _next_refill(self, context: int) -> Callable[[], int]:
        def bump() -> int:
            r = self._refills.get(context, 0)
            self._refills[context] = r + 1
            return r

        return bump

    def draft(self, context: int) -> ContextDraft:
        """The base draft of `context` with a `ThrmlTSU` loaded with the same payload bytes."""
        found = self._tsus.get(context)
        if found is None:
            base = self.base.draft(context)
            tsu = ThrmlTSU(base.payload_bytes, self.sampler, self.sampler.fold(self._root, context),
                           self._next_refill(context))
            found = ContextDraft(context=context, payload_bytes=base.payload_bytes, tsu=tsu,
                                 topk_mass=base.topk_mass, overlap_mass=base.overlap_mass,
                                 ce_gap_nats=base.ce_gap_nats, draft_overlap=base.draft_overlap)
            if len(self._tsus) >= self.max_cached:
                self._tsus.pop(next(iter(self._tsus)))
            self._tsus[context] = found
        return found


def thrml_proposer(base: Proposer, V: int, seed: int) -> ThrmlProposer:
    """The THRML-backed proposer of a prepared run (raises `ThrmlMissingError`, naming --tsu, if thrml is absent)."""
    return ThrmlProposer(base, V, seed)
