"""The (K, τ, seed) grid sweep on a fixed context: configurations, rows and the printed table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import product
from typing import Any

import numpy as np

from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import fixed_context_chunks
from thermospec.experiments.sweeps import (
    GRID_GROUP,
    describe_vocabulary,
    format_number,
    format_table,
    most_probable_context,
    target_of,
    tau_key,
)
from thermospec.runs.config import ConfigError, RunConfig, check_eps
from thermospec.targets.bigram import BigramTarget
from thermospec.tsu.drafts import draft_for_row

__all__ = ["GridPoint", "GridSweep", "aggregate_grid", "format_grid_table", "grid_row"]


@dataclass(frozen=True)
class GridPoint:
    """One configuration of the grid."""

    K: int
    tau: float
    seed: int

    def stream_key(self) -> tuple[int, ...]:
        """Index of this configuration's draws under ``Stream.SWEEP`` of its seed."""
        return (self.K, tau_key(self.tau))


@dataclass(frozen=True)
class GridSweep:
    """A (K, τ, seed) grid of fixed-context proposals.

    Attributes
    ----------
    base : RunConfig
        Target options (corpus, vocab, c) and ε; its K, τ and seed are not used.
    steps : int
        Fixed-context proposals (and corrections) per configuration.
    Ks, taus, seeds : tuple
        Values of each axis, in the order the CSV lists them.
    context : int or None
        Fixed context; None means the most probable context under each seed's π.
    """

    base: RunConfig
    steps: int
    Ks: tuple[int, ...]
    taus: tuple[float, ...]
    seeds: tuple[int, ...]
    context: int | None = None

    def points(self) -> list[GridPoint]:
        """Every configuration, K slowest and seed fastest."""
        return [GridPoint(K=k, tau=t, seed=s) for k, t, s in product(self.Ks, self.taus, self.seeds)]

    def context_of(self, target: BigramTarget) -> int:
        """The fixed context used on `target`."""
        return most_probable_context(target) if self.context is None else self.context


def grid_row(sweep: GridSweep, point: GridPoint) -> dict[str, Any]:
    """Run one configuration: `steps` fixed-context drafts and corrections; return its CSV row.

    ``accept_rate`` is the fraction of accepted drafts; the other metrics are
    those of the context's ψ against its target row.
    """
    target = target_of(sweep.base, point.seed)
    x = sweep.context_of(target)
    p = target.row(x)
    draft = draft_for_row(p, x, point.K, point.tau, sweep.base.eps)
    rng = random_stream(point.seed, Stream.SWEEP, *point.stream_key())
    accepted = sum(int(np.count_nonzero(c.accepted)) for c in fixed_context_chunks(p, draft, sweep.steps, rng))
    return {
        "K": point.K,
        "tau": point.tau,
        "seed": point.seed,
        "context": x,
        "steps": sweep.steps,
        "accept_rate": accepted / sweep.steps,
        "overlap_mass": draft.overlap_mass,
        "ce_gap_nats": draft.ce_gap_nats,
        "topk_mass": draft.topk_mass,
        "psi_bytes": draft.psi_bytes,
        "eps_used": draft.payload.eps,
    }


def validate_grid(sweep: GridSweep) -> BigramTarget:
    """Check every configuration can run (target, ε range, ψ crafting); return the first seed's target.

    Raises
    ------
    ConfigError, thermospec.targets.CorpusError, thermospec.core.payload.PayloadError
    """
    for k in sweep.Ks:
        if k < 1:
            raise ConfigError(f"--Ks: every K must be an integer >= 1, got {k}")
    for t in sweep.taus:
        if not (math.isfinite(t) and np.float32(t) > 0):
            raise ConfigError(f"--taus: every τ must be a finite number > 0, got {t}")
    target = target_of(sweep.base, sweep.seeds[0])
    if sweep.context is not None and not 0 <= sweep.context < target.V:
        raise ConfigError(f"--context {sweep.context}: outside the vocabulary ({describe_vocabulary(target)})")
    x = sweep.context_of(target)
    for k, t in product(sweep.Ks, sweep.taus):
        config = replace(sweep.base, K=k, tau=t)
        check_eps(config, target.V)
        draft_for_row(target.row(x), x, k, t, sweep.base.eps)
    return target


def _finite_mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.inf if any(not math.isfinite(v) for v in values) else math.fsum(values) / len(values)


def aggregate_grid(rows: Iterable[Mapping[str, Any]], group: Sequence[str] = GRID_GROUP) -> list[dict[str, Any]]:
    """Means over seeds per (K, τ): accept, overlap, |accept − overlap|, its standard error, CE gap, ...

    The standard error of the mean acceptance over S seeds with n steps each is
    ``sqrt(sum_s o_s (1 - o_s) / n) / S`` with the overlaps ``o_s`` (the
    acceptance probabilities the rows should match).
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[g] for g in group), []).append(row)
    out = []
    for key, members in groups.items():
        accept = math.fsum(float(r["accept_rate"]) for r in members) / len(members)
        overlap = math.fsum(float(r["overlap_mass"]) for r in members) / len(members)
        variance = math.fsum(
            float(r["overlap_mass"]) * (1 - float(r["overlap_mass"])) / int(r["steps"]) for r in members
        )
        out.append({
            **dict(zip(group, key, strict=True)),
            "seeds": len(members),
            "accept_rate": accept,
            "overlap_mass": overlap,
            "accept_overlap_gap": abs(accept - overlap),
            "accept_se": math.sqrt(variance) / len(members),
            "ce_gap_nats": _finite_mean(float(r["ce_gap_nats"]) for r in members),
            "topk_mass": math.fsum(float(r["topk_mass"]) for r in members) / len(members),
            "psi_bytes": max(int(r["psi_bytes"]) for r in members),
        })
    return out






def format_grid_table(aggregates: Sequence[Mapping[str, Any]]) -> str:
    """The compact per-(K, τ) table the grid sweep prints."""
    header = ("K", "tau", "accept", "overlap", "|a-o|", "se", "ce_gap", "topk", "psi_B")
    body = [
        (str(a["K"]), repr(float(a["tau"])), format_number(a["accept_rate"]), format_number(a["overlap_mass"]),
         format_number(a["accept_overlap_gap"]), format_number(a["accept_se"]), format_number(a["ce_gap_nats"]),
         format_number(a["topk_mass"]), str(a["psi_bytes"]))
        for a in aggregates
    ]
    return format_table(header, body)


def grid_task(sweep: GridSweep) -> Callable[[GridPoint], dict[str, Any]]:
    """`grid_row` bound to a sweep: picklable, so it runs in any worker."""
    return partial(grid_row, sweep)
