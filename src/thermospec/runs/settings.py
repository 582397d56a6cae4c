"""A run's options as keywords: the validated `RunConfig` they make, and whether its records fit on disk.

The Python API (`thermospec.config`, `run`, `check`, `sweep`) and the command line build their
configurations here, so that both refuse the same things in the same words.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from thermospec.runs.config import OPTIONS, ConfigError, RunConfig

__all__ = ["JSONL_STEP_BYTES", "check_room", "config"]


def config(**options: Any) -> RunConfig:
    """A validated configuration, with the guide's defaults; the keywords are the run options that
    `RunConfig` declares (`thermospec.runs.config.OPTIONS`: the command line's, ``cost_ratio`` for
    ``--cost-ratio``), a path given as text or a `Path`.

    ``trace`` (a ``.npy``/``.npz`` of recorded next-token log-probabilities, docs/traces.md) makes
    the run teacher-forced over its positions; ``order`` N > 2 (with ``corpus``) makes the context
    the last N - 1 characters.

    Raises
    ------
    ConfigError
        One line naming the option and the reason (an unknown name too).
    """
    for name in options:
        if name not in OPTIONS:
            raise ConfigError(f"{name}: not a run option (options: {', '.join(OPTIONS)})")
    given = {name: _path_text(value) if OPTIONS[name].path else value for name, value in options.items()}
    settings = RunConfig(**given)  # every type checked here
    if settings.cost_ratio and settings.gamma is None:
        raise ConfigError("--cost-ratio: models the speed-up of γ-token blocks and needs --gamma")
    return settings


def _path_text(path: Any) -> Any:
    """A path as text (a `Path` too); anything else as given, for `RunConfig` to refuse by its type."""
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) else path


JSONL_STEP_BYTES = 200
"""Fewest bytes a step's JSONL record takes (measured: about 250), for `check_room`'s projection."""


def check_room(settings: RunConfig, telemetry: str, chains: int, runs_dir: str | Path) -> None:
    """Refuse a run whose JSONL records could not fit in the free space where `runs_dir` is.

    The projection is a lower bound (`JSONL_STEP_BYTES` a step, every chain): a refused run
    would certainly have filled the disk (``--steps 1e12`` would write about 250 TB).

    Raises
    ------
    ConfigError
        One line: the projected size, the free space, and what to change.
    """
    if telemetry != "jsonl":
        return
    projected = settings.steps * chains * JSONL_STEP_BYTES
    folder = Path(runs_dir).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--runs-dir {runs_dir}: cannot write in {folder}")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # no answer: the run's own full-disk handling stays the guard
    if projected > free:
        raise ConfigError(f"--steps {settings.steps}: its JSONL records would take at least {projected / 1e9:,.1f} GB "
                          f"({JSONL_STEP_BYTES} bytes a step) and {folder} has {free / 1e9:,.1f} GB free; "
                          "use --telemetry none or fewer steps")
