"""``--tsu thrml --chains B`` on order-N contexts and on a trace (single drafts): each chain's draws its TSU's own.

`OrderMode` and `TraceMode` step B chains in lock step on tables of F(ψ) shared by
the chains.  A THRML TSU draws from its own sampler, so here each chain runs the
per-step reference with its own TSUs (`runs.chain_tsus`), in one chunk as the
single-chain THRML run does; chain 0 is that run, token for token.  Telemetry,
counts and summaries are the modes' own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from thermospec.engine.contexts import ContextChunk, run_order_reference
from thermospec.engine.positions import PositionChunk, run_positions_reference
from thermospec.runs.chain_tsus import reference_chains
from thermospec.runs.order_run import OrderMode
from thermospec.runs.prepare import PreparedRun
from thermospec.runs.trace_run import TraceMode
from thermospec.targets.trace import TraceShrankError

__all__ = ["ThrmlOrderChains", "ThrmlTraceChains"]


def _with_backend(run: PreparedRun, found: dict[str, Any]) -> dict[str, Any]:
    """The mode's extras and the summary's ``tsu_backend``."""
    backend = run.proposer.backend
    return found | ({"tsu_backend": backend} if backend is not None else {})


class ThrmlOrderChains(OrderMode):
    """`OrderMode` with B chains of a TSU that draws for itself."""

    def extras(self) -> dict[str, Any]:
        return _with_backend(self.run, super().extras())

    def chunks(self) -> Iterator[list[ContextChunk]]:
        steps = self.run.config.steps
        yield reference_chains(self.run, self.chains,
                               lambda drafts, rng: run_order_reference(self.target, drafts, steps, rng))


class ThrmlTraceChains(TraceMode):
    """`TraceMode` with B chains of a TSU that draws for itself."""

    def extras(self) -> dict[str, Any]:
        return _with_backend(self.run, super().extras())

    def chunks(self) -> Iterator[tuple[PositionChunk, ...]]:
        steps = self.run.config.steps
        try:
            yield tuple(reference_chains(self.run, self.chains,
                                         lambda drafts, rng: run_positions_reference(self.trace, drafts, steps, rng)))
        except TraceShrankError:  # the χ² (which reread the file) are then skipped, as TraceMode does
            self._shrank = True
            raise
