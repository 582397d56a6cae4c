"""Replaying a run from its ``summary.json``: same configuration, same bytes, in a new folder.

``python -m scripts.run_m1 run --replay RUN_DIR/summary.json`` reads the full
configuration the summary recorded, refuses if the corpus the run read has
changed since (its SHA-256 differs), runs again, and compares the SHA-256 of the
new ``m1_metrics.jsonl`` with the ``metrics_sha256`` the original recorded and with
the original's records file as it is on disk (`compare_replay`: a file edited since
the run is caught, and the verdict says which of the two differs).  The
run is deterministic (seeded streams, shortest round-trip float text), so the
two files are identical byte for byte.  An interrupted run is replayed for the
steps it wrote, so the replay reproduces exactly the records that exist.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from thermospec.engine.blocks import BLOCKS_FILE
from thermospec.runs.config import DEFAULTS, ConfigError, RunConfig, option_name
from thermospec.runs.storage import METRICS_FILE
from thermospec.runs.telemetry import PARQUET_FILE
from thermospec.targets.corpus import CorpusError, read_corpus

__all__ = ["ReplayComparison", "ReplayError", "ReplayPlan", "compare_replay", "load_replay", "replay_plan"]


class ReplayError(ValueError):
    """A summary that cannot be replayed; the message names the file and the reason."""


class ReplayPlan:
    """What a replay will run, and what it must reproduce.

    Attributes
    ----------
    config : RunConfig
        The recorded configuration (steps = the steps the original wrote).
    metrics_sha256 : str or None
        SHA-256 of the original JSONL, when the summary recorded it.
    source : Path
        The summary replayed.
    records : Path or None
        The original's records file beside the summary (``m1_metrics.jsonl`` or ``.parquet``).
    """

    def __init__(self, config: RunConfig, metrics_sha256: str | None, source: Path,
                 records: Path | None = None) -> None:
        self.config = config
        self.metrics_sha256 = metrics_sha256
        self.source = source
        self.records = records


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReplayError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ReplayError(f"{path}: cannot be read ({reason})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReplayError(f"{path}: is not a summary.json (invalid JSON at line {exc.lineno})") from None
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise ReplayError(f"{path}: is not a run's summary.json (no \"config\" object)")
    return document


def load_replay(path: str | Path) -> ReplayPlan:
    """Read a summary and check that its run can be reproduced.

    Raises
    ------
    ReplayError
        The file is missing or not a summary, its configuration is invalid, or
        the corpus is missing or its SHA-256 differs from the one recorded.
    """
    path = Path(path)
    if path.is_dir():  # a run folder, as `plot` and `audit_run` take it
        if not (path / "summary.json").is_file():
            raise ReplayError(f"{path}: is a folder without summary.json (give a run folder)")
        path = path / "summary.json"
    summary = _read_summary(path)
    recorded: dict[str, Any] = summary["config"]
    names = {f.name for f in fields(RunConfig)}
    values = {k: v for k, v in recorded.items() if k in names}
    steps = summary.get("steps")
    if summary.get("interrupted") and isinstance(steps, int) and steps >= 1:
        values["steps"] = steps
    try:
        config = RunConfig(**values)
    except (ConfigError, TypeError) as exc:
        raise ReplayError(f"{path}: the recorded configuration is not valid ({exc})") from None
    chains = recorded.get("chains", summary.get("chains"))
    if isinstance(chains, int) and chains > 1:
        raise ReplayError(f"{path}: a --chains {chains} run; replay replays single runs "
                          "(rerun the same command instead and compare each chain's JSONL)")
    if not isinstance(summary.get("metrics_sha256"), str):
        raise ReplayError(f"{path}: records no JSONL SHA-256 (telemetry {summary.get('telemetry')!r}), "
                          "so a replay could not be verified")
    if config.corpus is not None:
        target = summary.get("target")
        wanted = target.get("corpus_sha256") if isinstance(target, dict) else None
        try:
            _, actual = read_corpus(config.corpus)
        except CorpusError as exc:
            raise ReplayError(f"{path}: the run's corpus {exc}") from None
        if wanted is None:
            raise ReplayError(f"{path}: records no corpus SHA-256, so the corpus cannot be verified")
        if actual != wanted:
            raise ReplayError(
                f"{path}: the corpus {config.corpus} has changed since the run "
                f"(SHA-256 {actual[:12]}… now, {str(wanted)[:12]}… recorded); refusing to replay"
            )
    if config.trace is not None:
        target = summary.get("target")
        wanted = target.get("trace_sha256") if isinstance(target, dict) else None
        try:
            actual = file_sha256(Path(config.trace))
        except OSError as exc:
            reason = exc.strerror or exc
            raise ReplayError(f"{path}: the run's trace {config.trace} cannot be read ({reason})") from None
        if actual != wanted:
            raise ReplayError(
                f"{path}: the trace {config.trace} has changed since the run "
                f"(SHA-256 {actual[:12]}… now, {str(wanted)[:12]}… recorded); refusing to replay"
            )
    sha = summary.get("metrics_sha256")
    told = summary.get("telemetry")  # a format, or (γ-blocks and trees) the records file's name
    name = BLOCKS_FILE if told == BLOCKS_FILE else PARQUET_FILE if told == "parquet" else METRICS_FILE
    records = path.parent / name
    return ReplayPlan(config, sha if isinstance(sha, str) else None, path, records)


def replay_plan(path: str | Path, options: dict[str, Any]) -> ReplayPlan:
    """The plan of ``--replay PATH``, refusing run options that would change the recorded run.

    Parameters
    ----------
    path : str or Path
        The run folder or its ``summary.json``.
    options : dict
        The run options given beside it; any whose value is not its default is refused.

    Raises
    ------
    ConfigError
        One line: the options to drop, or why the summary cannot be replayed (`load_replay`).
    """
    given = [option_name(name) for name, value in options.items() if name in DEFAULTS and value != DEFAULTS[name]]
    if given:
        raise ConfigError(f"--replay: takes every option from the summary; drop {' '.join(given)}")
    try:
        return load_replay(path)
    except ReplayError as exc:
        raise ConfigError(f"--replay {exc}") from None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read 16 MB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ReplayComparison:
    """The replay's records against the original's: its recorded SHA-256, and its file as it is now.

    Attributes
    ----------
    new_sha256 : str or None
        SHA-256 of the replay's records.
    recorded : bool or None
        Whether it equals the summary's ``metrics_sha256`` (None: the summary recorded none).
    on_disk : bool or None
        Whether it equals the SHA-256 of the original's records file now (None: the file is gone).
    records : Path or None
        The original's records file.
    source : Path or None
        The summary replayed.
    """

    new_sha256: str | None
    recorded: bool | None
    on_disk: bool | None
    records: Path | None
    source: Path | None = None

    @property
    def identical(self) -> bool:
        """The replay reproduced both the recorded SHA-256 and the file on disk (or the one that exists)."""
        return self.recorded is not False and self.on_disk is not False and (
            self.recorded is not None or self.on_disk is not None)

    def describe(self) -> str:
        """One line: identical, or which of the summary's SHA-256 and the file on disk differs."""
        short = (self.new_sha256 or "")[:16]
        if self.identical:
            also = ("the original's file on disk too" if self.on_disk
                    else f"the original's {self.records} is gone: compared with the summary only")
            return f"replay: identical to the original, byte for byte (metrics_sha256 {short}…; {also})"
        if self.recorded and self.on_disk is False:
            return (f"the new records match the summary's metrics_sha256, but the original's {self.records} "
                    "differs from both: it was changed after the run")
        if self.recorded is False and self.on_disk:
            return (f"the new records match the original's {self.records} on disk but not the summary's "
                    "metrics_sha256: the summary was changed after the run")
        if self.recorded is None and self.on_disk is None:
            return "the original recorded no metrics_sha256 and its records file is gone: nothing to compare"
        where = "the summary's metrics_sha256" + ("" if self.on_disk is None else
                                                  f" and the original's {self.records} on disk")
        return f"the new records differ from {where} (metrics_sha256 mismatch)"


def compare_replay(plan: ReplayPlan, summary: dict[str, Any]) -> ReplayComparison:
    """Compare the replay's records (its summary's SHA-256) with the original's recorded SHA-256 and file on disk."""
    sha = summary.get("metrics_sha256")
    new = sha if isinstance(sha, str) else None
    recorded = None if plan.metrics_sha256 is None else new == plan.metrics_sha256
    on_disk: bool | None = None
    if plan.records is not None and plan.records.is_file():
        on_disk = new == file_sha256(plan.records)
    return ReplayComparison(new_sha256=new, recorded=recorded, on_disk=on_disk, records=plan.records,
                            source=plan.source)
