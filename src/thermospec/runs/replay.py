"""Replaying a run from its ``summary.json``: same configuration, same bytes, in a new folder.

``python -m scripts.run_m1 run --replay RUN_DIR/summary.json`` reads the full
configuration the summary recorded, refuses if the corpus the run read has
changed since (its SHA-256 differs), runs again, and compares the SHA-256 of the
new ``m1_metrics.jsonl`` with the ``metrics_sha256`` the original recorded.  The
run is deterministic (seeded streams, shortest round-trip float text), so the
two files are identical byte for byte.  An interrupted run is replayed for the
steps it wrote, so the replay reproduces exactly the records that exist.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from thermospec.runs.config import ConfigError, RunConfig
from thermospec.targets.corpus import CorpusError, read_corpus

__all__ = ["ReplayError", "ReplayPlan", "load_replay", "replay_matches"]


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
    """

    def __init__(self, config: RunConfig, metrics_sha256: str | None, source: Path) -> None:
        self.config = config
        self.metrics_sha256 = metrics_sha256
        self.source = source


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
    return ReplayPlan(config, sha if isinstance(sha, str) else None, path)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read 16 MB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def replay_matches(plan: ReplayPlan, summary: dict[str, Any]) -> bool | None:
    """Whether the replayed JSONL has the original's SHA-256 (None if the original recorded none)."""
    if plan.metrics_sha256 is None:
        return None
    return bool(summary.get("metrics_sha256") == plan.metrics_sha256)
