"""The one executor of every run: chunks from the engine, telemetry and tally, then one summary envelope.

A run is a `Mode` (`ChainMode`: the M1 chain with any TSU; `BatchMode`: ``--chains``;
`BlockMode`: ``--gamma``; `DraftsMode`: ``--drafts N``; `OrderMode`, `TraceMode` and, with
``--drafts N``, `KeyedDraftsMode`: order-N contexts and traces):
the chunks the engine emits for it, what each chunk writes and counts, and the
statistics of what was counted.  `execute_run` drives any mode the same way:

* a SIGINT or SIGTERM (`runs.interrupts`) stops the loop within moments: a
  chunk the engine is still computing is dropped (`Interruption.cutting`; the
  modes whose engine counts as it steps, `engine_counts`, finish theirs), a
  chunk being written is finished, so the telemetry holds whole records only;
  the summary then skips the checklist's extra draws and says so
  (``checklist_skipped``); a second signal stops at once (`StoppedAtOnce`: the
  records cut back to their last whole chunk, no summary);
* a failed write (`OutputError`) or a misreporting TSU (`ReportError`) stops
  it too, and the summary of what was kept is still written;
* ``summary.json`` is the mode's statistics inside one envelope, the same
  fields for every mode: ``elapsed_s``, ``tokens_per_s``, ``config``,
  ``target``, ``telemetry``, ``thermospec_version``, ``versions``,
  ``interrupted``, ``interrupted_by``, ``metrics_sha256``.

Everything that can fail on the user's input (options, corpus, ε range, ψ
crafting) is done by `prepare_run` before anything is written.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from thermospec import __version__
from thermospec.engine.chain import ReportError
from thermospec.runs.batch_run import BatchMode
from thermospec.runs.block_run import BlockMode
from thermospec.runs.chain_run import ChainMode
from thermospec.runs.config import ConfigError, RunConfig
from thermospec.runs.drafts_run import DraftsMode
from thermospec.runs.interrupts import (
    ChunkAbandoned,
    Interruption,
    StoppedAtOnce,
    Terminated,
    interruption_guard,
    signal_name,
)
from thermospec.runs.keyed_drafts_run import KeyedDraftsMode
from thermospec.runs.losses import LOSS_KEYS, Visits, acceptance_losses_of
from thermospec.runs.order_run import OrderMode
from thermospec.runs.prepare import BUDGET_WEIGHTS, PreparedRun, target_description
from thermospec.runs.storage import SUMMARY_FILE, OutputError, write_json_atomic
from thermospec.runs.summary import software_versions
from thermospec.runs.telemetry import TELEMETRY_FORMATS, TelemetryFormat, parquet_available
from thermospec.runs.thrml_chains import ThrmlOrderChains, ThrmlTraceChains
from thermospec.runs.trace_run import TraceMode
from thermospec.targets.trace import TraceShrankError

__all__ = ["KeyedMode", "Mode", "check_mode_options", "engine_counts", "execute_run", "keyed_mode", "run_mode"]

CHECKLIST_SKIPPED = ("fixed_context_chi2_3_of_4: not drawn (its 4 x 20,000 extra steps), "
                     "the run was stopped by a signal")


class Mode(Protocol):
    """One kind of run, as the executor drives it."""

    @property
    def telemetry(self) -> str:
        """What the summary's ``telemetry`` field says (the format, or the file)."""
        ...

    def chunks(self) -> Iterator[Any]:
        """The engine's chunks, in order."""
        ...

    def record(self, chunk: Any) -> int:
        """Write and count one chunk; return its progress units (steps or tokens)."""
        ...

    def close(self) -> str | None:
        """Close the telemetry; return the SHA-256 of what was written (None when nothing is hashed)."""
        ...

    def tokens(self) -> int:
        """Tokens emitted so far, over all chains (``tokens_per_s``)."""
        ...

    def complete(self) -> bool:
        """Whether every asked-for step was run."""
        ...

    def statistics(self) -> dict[str, Any]:
        """The mode's statistics of what was counted (``{"steps": 0}`` and nulls when nothing was)."""
        ...

    def key_visits(self) -> Visits:
        """The keys the verifier ran at and how often (for the loss split every summary carries)."""
        ...

    def extras(self) -> dict[str, Any]:
        """Fields of this mode only, after the envelope (``checklist``, ``streams``, ``tsu_backend`` ...)."""
        ...

    @property
    def counted_by_engine(self) -> bool:
        """Whether the engine counts into the mode's tally while it computes a chunk (such a chunk is
        finished, never cut, so the counts stay whole)."""
        ...


class KeyedMode(Mode, Protocol):
    """A mode over keys that are not tokens, which can also run in memory (no folder) for a check."""

    def statistics(self, tests: bool = True) -> dict[str, Any]:
        """The mode's statistics; `tests` False leaves out its χ² tests (a check runs its own)."""
        ...


def check_mode_options(config: RunConfig, telemetry: str, chains: int, replay: bool = False) -> None:
    """Refuse ``--telemetry`` / ``--chains`` combinations that cannot run, before anything is written.

    Raises
    ------
    ConfigError
        One line naming the option and the reason.
    """
    if telemetry not in TELEMETRY_FORMATS:
        raise ConfigError(f"--telemetry: must be one of {', '.join(TELEMETRY_FORMATS)}, got {telemetry!r}")
    if isinstance(chains, bool) or not isinstance(chains, int) or chains < 1:
        raise ConfigError(f"--chains: must be an integer >= 1, got {chains!r}")
    if telemetry == "parquet" and not parquet_available():
        raise ConfigError("--telemetry parquet: needs pyarrow (pip install 'thermospec[parquet]')")
    if chains > 1 and replay:
        raise ConfigError("--chains: --replay reruns one recorded chain; drop --chains")
    if telemetry != "jsonl" and replay:
        raise ConfigError(f"--telemetry {telemetry}: --replay compares the JSONL a run wrote")


_KEYED_MODES: dict[str, tuple[Callable[[PreparedRun, Path | None, str, int], KeyedMode],
                              Callable[[PreparedRun, Path, str, int], Mode]]] = {
    "trace": (TraceMode, ThrmlTraceChains), "order": (OrderMode, ThrmlOrderChains)}
"""The single-draft modes of the target kinds whose keys are not tokens (`runs.targets`): the table-driven one,
and B chains of a TSU that draws for itself."""


def run_mode(run: PreparedRun, run_dir: Path, telemetry: TelemetryFormat = "jsonl", chains: int = 1) -> Mode:
    """The mode a configuration asks for: ``--gamma`` (on any context source), ``--trace`` or ``--order`` > 2
    (with ``--drafts N`` or one draft), ``--drafts``, ``--chains`` > 1, or the M1 chain (any TSU)."""
    config, own_draws = run.config, not run.proposer.samples_payload  # own draws: THRML, each chain its own TSUs
    if config.gamma is not None:  # blocks over any context source: bigram, order-N, trace
        return BlockMode(run, run_dir, telemetry, chains)
    keyed = _KEYED_MODES.get(run.kind.name)  # keys that are not tokens: a trace's positions, order-N contexts
    if keyed is not None:
        if config.drafts > 1:
            return KeyedDraftsMode(run, run_dir, telemetry, chains)
        tables, own = keyed
        return (own if own_draws and chains > 1 else tables)(run, run_dir, telemetry, chains)
    if config.drafts > 1:  # one chain or B in lock step, any sink
        return DraftsMode(run, run_dir, telemetry, chains)
    if chains > 1:
        return BatchMode(run, run_dir, chains, telemetry)
    return ChainMode(run, run_dir, telemetry)


def keyed_mode(run: PreparedRun) -> KeyedMode | None:
    """The in-memory single-chain mode of a target whose keys are not tokens (a trace's positions, order-N
    contexts), one draft or N, for a statistic run without files (`check`); None for a token chain."""
    keyed = _KEYED_MODES.get(run.kind.name)
    if keyed is None:
        return None
    return KeyedDraftsMode(run, None, "none") if run.config.drafts > 1 else keyed[0](run, None, "none", 1)


def engine_counts(mode: Mode) -> bool:
    """Whether the engine counts into the mode's tally while it computes a chunk (`Mode.counted_by_engine`:
    `BatchMode` and `ChainMode` without telemetry): such a chunk is finished, never cut, so the counts stay whole."""
    return mode.counted_by_engine


def _run_chunks(mode: Mode, cut: bool, on_progress: Callable[[int], None] | None, stop: Interruption) -> None:
    """Record the mode's chunks until they end or a signal stops the loop (`cut`: a chunk in the making may be)."""
    try:
        with stop.cutting(cut):
            chunks = iter(mode.chunks())  # some modes compute everything here (--tsu thrml)
        while not stop.requested:
            with stop.cutting(cut):
                chunk = next(chunks, None)
            if chunk is None:
                return
            units = mode.record(chunk)
            if on_progress is not None:
                on_progress(units)
    except ChunkAbandoned:
        return


def _where_acceptance_goes(run: PreparedRun, mode: Mode, mean_overlap: float | None) -> dict[str, Any]:
    """The loss split (`runs.losses`) over the verified keys, and what ``--psi-budget`` designed and realised."""
    visits = mode.key_visits()
    out = acceptance_losses_of(run.proposer, visits, mean_overlap, run.config.drafts)
    budget = run.budget
    if budget is None:
        return out
    total = float(visits.counts.sum())
    drafts = [run.proposer.draft(k) for k in visits.keys.tolist()]
    K_steps: dict[int, int] = {}
    for draft, n in zip(drafts, visits.counts.tolist(), strict=True):
        K_steps[draft.payload.K] = K_steps.get(draft.payload.K, 0) + int(n)
    sizes = math.fsum(d.psi_bytes * n for d, n in zip(drafts, visits.counts.tolist(), strict=True))
    realised = sizes / total if total else None
    out["psi_budget"] = {"budget_bytes": run.config.psi_budget, "K_max": min(run.config.K, run.target.V),
                         "design_mean_bytes": budget.mean_bytes, "design_mean_overlap": budget.mean_overlap,
                         "design_weights": BUDGET_WEIGHTS[run.kind.name], "realised_mean_bytes": realised,
                         "K_steps": {str(k): K_steps[k] for k in sorted(K_steps)}}
    return out


GUIDE_FIELDS = ("accept_rate", "mean_overlap", "mean_ce_gap", "chi2_stat", "chi2_dof", "p_value")
"""The guide's aggregates every summary carries (null where nothing could be aggregated)."""


class _ShrunkTrace:
    """The summary's passes that read a trace again (a wide row is read again for the statistics, the loss
    split and the checklist) when the file may have shrunk: the summary of what was kept is still written,
    its ``interrupted_by`` naming the file, whether the loop or a summary pass met the shrink first."""

    def __init__(self, failure: BaseException | None) -> None:
        self.met: TraceShrankError | None = failure if isinstance(failure, TraceShrankError) else None
        self.in_summary = False

    def unless(self, compute: Callable[[], dict[str, Any]], instead: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """`compute()`, or `instead()` when it meets the shrunk file or an earlier pass did (the later passes
        read what the earlier ones computed)."""
        if self.in_summary:
            return instead()
        try:
            return compute()
        except TraceShrankError as exc:
            self.met, self.in_summary = self.met or exc, True
            return instead()


def execute_run(
    run: PreparedRun,
    run_dir: Path,
    on_progress: Callable[[int], None] | None = None,
    telemetry: TelemetryFormat = "jsonl",
    chains: int = 1,
) -> dict[str, Any]:
    """Run any mode, stream its telemetry to `run_dir` and write ``summary.json``.

    Parameters
    ----------
    run : PreparedRun
        The prepared run (`prepare_run`).
    run_dir : Path
        Its fresh folder (`create_run_dir`).
    on_progress : callable, optional
        Called after each chunk with the steps (tokens, for blocks) it added.
    telemetry : {"jsonl", "parquet", "none"}
        Per-step records of a chain or of ``chains`` chains.
    chains : int
        Independent chains (``--chains``); 1 is the M1 run.

    Returns
    -------
    dict
        The summary, as written.

    Raises
    ------
    OutputError
        A write failed (full disk...); the summary of the steps kept was written if it could be.
    ReportError
        The TSU misreported a draw; the summary of the steps before it was written.
    KeyboardInterrupt, Terminated
        A second SIGINT / SIGTERM stopped the run at once: whole records, no summary.
    """
    try:
        return _execute(run, run_dir, on_progress, telemetry, chains)
    except StoppedAtOnce as exc:  # the records were cut back as the files closed; the shell's usual end
        message = f"{exc}: {run_dir} keeps whole records only, and no {SUMMARY_FILE}"
        raise (KeyboardInterrupt(message) if exc.signum == signal.SIGINT else Terminated(message)) from None


def _execute(
    run: PreparedRun,
    run_dir: Path,
    on_progress: Callable[[int], None] | None,
    telemetry: TelemetryFormat,
    chains: int,
) -> dict[str, Any]:
    """`execute_run`, up to a second signal."""
    mode = run_mode(run, run_dir, telemetry, chains)
    started = time.perf_counter()
    failure: OutputError | ReportError | TraceShrankError | None = None
    with interruption_guard() as stop:  # a signal now stops the loop with whole records (module docstring)
        try:
            _run_chunks(mode, not engine_counts(mode), on_progress, stop)
        except (OutputError, ReportError, TraceShrankError) as exc:  # a trace truncated under the run: a failed read
            failure = exc
        finally:
            try:
                metrics_sha256 = mode.close()
            except OutputError as exc:  # a file that cannot be finished (a Parquet footer on a full disk)
                metrics_sha256, failure = None, exc if failure is None else OutputError(f"{failure}; then {exc}")
        elapsed = time.perf_counter() - started
        shrunk = _ShrunkTrace(failure)
        statistics = shrunk.unless(mode.statistics, lambda: dict.fromkeys((*GUIDE_FIELDS, "steps")))
        statistics |= shrunk.unless(lambda: _where_acceptance_goes(run, mode, statistics.get("mean_overlap")),
                                    lambda: dict.fromkeys(LOSS_KEYS))
        extras = shrunk.unless(mode.extras, dict)
        failure = failure if failure is not None else shrunk.met
        config = run.config.as_dict() | {"K_used": run.K_used} | ({"chains": chains} if chains > 1 else {})
        summary: dict[str, Any] = {
            **statistics,
            "elapsed_s": elapsed,
            "tokens_per_s": mode.tokens() / elapsed if elapsed > 0 and mode.tokens() else None,
            "config": config,
            "target": target_description(run),
            "telemetry": mode.telemetry,
            "thermospec_version": __version__,
            "versions": software_versions(),
            "interrupted": not mode.complete() or shrunk.met is not None,
            "interrupted_by": signal_name(stop.signum) if stop.signum is not None
            else (str(failure) if failure is not None else None),
            "metrics_sha256": metrics_sha256,
            **extras,
        }
        if stop.requested and "checklist" in summary:  # guide_checklist drew nothing more
            summary["checklist_skipped"] = CHECKLIST_SKIPPED
        try:
            write_json_atomic(run_dir / SUMMARY_FILE, summary)
        except OutputError as exc:
            if failure is None:
                raise
            failure = OutputError(f"{failure}; no summary either: {exc}")
    if failure is not None:
        raise failure
    return summary
