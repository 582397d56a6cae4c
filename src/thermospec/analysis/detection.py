"""The detection-power study: how often the checks catch a faulty TSU, and how often they cry wolf.

For each seed (a fresh synthetic target and fresh random streams), each fault
(`thermospec.tsu.faults`) and each number of samples, three tests are applied to
exactly what ``python -m scripts.run_m1 check --seed S --inject-fault KIND:SIZE``
would draw:

``guide``
    the guide's rule: 4 contexts x n emitted tokens, fails unless >= 3 of 4 have p > 0.05;
``pooled``
    the stronger pooled TSU χ²: 16 contexts x n drafts, fails if p < 0.001;
``run``
    the run's χ² of the emitted tokens vs ``N pi`` (SPEC §6), flagged at p < 0.05,
    on a run of the configured length (it does not depend on n).

A test "detects" a fault when it fails; on a correct TSU a failure is a false
alarm.  Smaller n reuse the first n draws of the largest n: those are exactly
the draws ``check`` makes with that n, because every stream is filled in order.
A misreporting TSU is refused by the host's consistency check at its first draw,
so every test counts it as detected.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from thermospec.analysis.checks import (
    POOLED_CONTEXTS,
    POOLED_SIGNIFICANCE,
    POOLED_STREAM_BASE,
    pooled_draft_chi2,
    run_statistics,
)
from thermospec.core.statistics import pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import ReportError, fixed_context_draws
from thermospec.engine.chunks import ChainChunk
from thermospec.runs.checklist import FIXED_CONTEXTS, FIXED_CONTEXTS_TO_PASS, SIGNIFICANCE
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import PreparedRun, inject_fault, prepare_run
from thermospec.tsu.faults import Fault

__all__ = ["RUN_SIGNIFICANCE", "TESTS", "RateRow", "TrialOutcome", "detection_table", "fault_trial", "seed_trials"]


TESTS = ("guide", "pooled", "run")
RUN_SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class TrialOutcome:
    """Whether each test failed, for one seed, one fault (None: a correct TSU) and one n."""

    seed: int
    fault: Fault | None
    n: int
    guide: bool
    pooled: bool
    run: bool | None

    def failed(self, test: str) -> bool | None:
        """Outcome of one of `TESTS` (None when the run's χ² was not measured)."""
        value: bool | None = getattr(self, test)
        return value


def _fixed_draws(run: PreparedRun, stream_index: int, x: int, n: int) -> ChainChunk:
    rng = random_stream(run.config.seed, Stream.CHECK, stream_index)
    return fixed_context_draws(run.target.row(x), run.proposer.draft(x), n, rng)


def _likeliest(run: PreparedRun, m: int) -> list[int]:
    contexts: list[int] = np.argsort(-run.target.pi, kind="stable")[:m].tolist()
    return contexts


def guide_rule_failures(run: PreparedRun, sizes: Sequence[int]) -> list[bool]:
    """The guide's fixed-context rule at each n of `sizes`, from one set of draws of the largest n."""
    n_max = max(sizes)
    emitted = [_fixed_draws(run, i, x, n_max).emitted for i, x in enumerate(_likeliest(run, FIXED_CONTEXTS))]
    contexts = _likeliest(run, FIXED_CONTEXTS)
    failures = []
    for n in sizes:
        passing = 0
        for x, tokens in zip(contexts, emitted, strict=True):
            observed = np.bincount(tokens[:n], minlength=run.target.V).astype(np.float64)
            passing += pooled_chi2(observed, n * run.target.row(x)).p_value > SIGNIFICANCE
        failures.append(passing < min(FIXED_CONTEXTS_TO_PASS, len(contexts)))
    return failures


def pooled_failures(run: PreparedRun, sizes: Sequence[int]) -> list[bool]:
    """The pooled TSU χ² at each n of `sizes`, from one set of draws of the largest n."""
    n_max = max(sizes)
    drafts: dict[int, NDArray[np.int64]] = {
        x: _fixed_draws(run, POOLED_STREAM_BASE + i, x, n_max).proposed
        for i, x in enumerate(_likeliest(run, POOLED_CONTEXTS))
    }
    return [
        pooled_draft_chi2(run, n, POOLED_CONTEXTS, draws=lambda _i, x, k: drafts[x][:k]).p_value
        < POOLED_SIGNIFICANCE
        for n in sizes
    ]


def fault_trial(run: PreparedRun, fault: Fault | None, sizes: Sequence[int], with_run: bool) -> list[TrialOutcome]:
    """All tests of one prepared run with one fault injected (None: the correct TSU), at each n."""
    seed = run.config.seed
    tested = run if fault is None else inject_fault(run, fault)
    try:
        guide = guide_rule_failures(tested, sizes)
        pooled = pooled_failures(tested, sizes)
        run_failed = run_statistics(tested)["p_value"] < RUN_SIGNIFICANCE if with_run else None
    except ReportError:
        return [TrialOutcome(seed, fault, n, True, True, True if with_run else None) for n in sizes]
    return [
        TrialOutcome(seed, fault, n, g, p, run_failed) for n, g, p in zip(sizes, guide, pooled, strict=True)
    ]


def seed_trials(
    config: RunConfig, faults: Sequence[Fault | None], sizes: Sequence[int], with_run: bool = True
) -> list[TrialOutcome]:
    """Every fault of `faults` on the target and streams of one configuration (one seed)."""
    run = prepare_run(config)
    outcomes: list[TrialOutcome] = []
    for fault in faults:
        outcomes.extend(fault_trial(run, fault, sizes, with_run))
    return outcomes


@dataclass(frozen=True)
class RateRow:
    """One line of the detection table.

    Attributes
    ----------
    fault : str
        ``"none"`` for the correct TSU, else the fault kind.
    size : float
    test : str
        One of `TESTS`.
    samples : int
        Draws the test used: contexts x n, or the run's steps.
    seeds : int
    detection_rate : float
        Fraction of seeds where the test failed (for ``"none"``: the false-alarm rate).
    false_alarm_rate : float
        The same test's failure rate on a correct TSU with the same samples.
    """

    fault: str
    size: float
    test: str
    samples: int
    seeds: int
    detection_rate: float
    false_alarm_rate: float


def _samples(test: str, n: int, run_steps: int) -> int:
    if test == "guide":
        return FIXED_CONTEXTS * n
    if test == "pooled":
        return POOLED_CONTEXTS * n
    return run_steps


def detection_table(outcomes: Iterable[TrialOutcome], run_steps: int) -> list[RateRow]:
    """Detection and false-alarm rates per (fault, size, test, n), sorted for printing."""
    tallies: dict[tuple[str, float, str, int], list[bool]] = {}
    run_seen: set[tuple[int, str, float]] = set()
    for o in outcomes:
        kind, size = ("none", 0.0) if o.fault is None else (o.fault.kind, o.fault.size)
        for test in TESTS:
            failed = o.failed(test)
            if failed is None:
                continue
            if test == "run":  # the run's χ² does not depend on n: one vote per seed
                if (o.seed, kind, size) in run_seen:
                    continue
                run_seen.add((o.seed, kind, size))
            n_key = 0 if test == "run" else o.n
            tallies.setdefault((kind, size, test, n_key), []).append(failed)
    rows = []
    for (kind, size, test, n), values in sorted(tallies.items(), key=lambda kv: (kv[0][0] != "none", kv[0])):
        base = tallies.get(("none", 0.0, test, n), [])
        rows.append(
            RateRow(
                fault=kind, size=size, test=test, samples=_samples(test, n, run_steps), seeds=len(values),
                detection_rate=float(np.mean(values)),
                false_alarm_rate=float(np.mean(base)) if base else float("nan"),
            )
        )
    return rows
