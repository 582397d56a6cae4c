"""A run's options as keywords: the validated `RunConfig` they make, and whether its records fit on disk.

The Python API (`thermospec.config`, `run`, `check`, `sweep`) and the command line build their
configurations here, so that both refuse the same things in the same words: the run options
(`config`, `config_of`), the API's own counts and folders (`check_count`, `check_folder`), the run
folder (`check_runs_dir`, `check_room`, `open_run_dir`), and the notices of an option the target
clamps (`clamp_notices`).
"""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from thermospec.runs.config import OPTIONS, ConfigError, RunConfig
from thermospec.runs.storage import create_run_dir

__all__ = ["JSONL_STEP_BYTES", "check_count", "check_folder", "check_options", "check_room", "check_runs_dir",
           "clamp_notices", "config", "config_of", "keywords_of", "open_run_dir"]


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


def keywords_of(call: Callable[..., Any]) -> tuple[str, ...]:
    """The keyword-only parameters `call` takes itself (not its ``**options``)."""
    return tuple(name for name, parameter in inspect.signature(call).parameters.items()
                 if parameter.kind is parameter.KEYWORD_ONLY)


def check_options(where: str, options: dict[str, Any], not_here: dict[str, str] | None = None,
                  own: Sequence[str] = ()) -> None:
    """Refuse a keyword that is not a run option of `where` (one line naming the options it takes).

    Parameters
    ----------
    where : str
        The call, as the message names it (``thermospec.run``, ``a seed sweep``).
    options : dict
        The keywords given.
    not_here : dict, optional
        Run options `where` does not take, each with the line that says why.
    own : sequence of str
        The keywords `where` takes itself (`keywords_of`), listed first in the message.
    """
    refused = not_here or {}
    for name in options:
        if name in refused:
            raise ConfigError(f"{name}: {refused[name]}")
        if name not in OPTIONS:
            taken = dict.fromkeys([*own, *(option for option in OPTIONS if option not in refused)])
            raise ConfigError(f"{name}: not an option of {where} (options: {', '.join(taken)})")


def config_of(where: str, options: dict[str, Any], not_here: dict[str, str] | None = None,
              own: Sequence[str] = (), **defaults: Any) -> RunConfig:
    """`config` of the options given to `where` over its own `defaults`, refusing a name that is not an option there."""
    check_options(where, options, not_here, own)
    return config(**(defaults | options))


def check_count(option: str, value: Any, low: int = 1) -> None:
    """Refuse a count of the API's own (``check_steps``, ``jobs``...) that is not an integer >= `low`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{option}: must be an integer >= {low}, got {value!r} ({type(value).__name__})")


def check_folder(option: str, value: Any) -> None:
    """Refuse a folder given as anything but text or a path."""
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{option}: must be a folder (text or a path), got {value!r} ({type(value).__name__})")


def clamp_notices(settings: RunConfig, V: int) -> list[str]:
    """The notices of options the target's vocabulary clamps (``--tokenizer bpe:N``, ``--K``), one line each.

    Parameters
    ----------
    settings : RunConfig
        The run's configuration.
    V : int
        The vocabulary size of its loaded target.
    """
    notices = []
    tokenizer = settings.tokenizer
    if tokenizer is not None and tokenizer.startswith("bpe:") and tokenizer[4:].isdigit() and int(tokenizer[4:]) > V:
        notices.append(f"notice: --tokenizer {tokenizer}: this corpus supports only {V} BPE tokens; using V = {V}")
    if settings.K > V:
        notices.append(f"notice: --K {settings.K} is above the vocabulary size V = {V}; using K = {V}")
    return notices


def check_runs_dir(runs_dir: str | Path) -> None:
    """Refuse a ``--runs-dir`` that names no folder (an empty string) or names a file."""
    if not os.fspath(runs_dir).strip():
        raise ConfigError("--runs-dir: must name a folder, got an empty string")
    if Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise ConfigError(f"--runs-dir {runs_dir}: is a file, not a folder")


def open_run_dir(runs_dir: str | Path) -> Path:
    """A fresh ``runs_dir/<UTC timestamp>/`` (`create_run_dir`); a folder that cannot be made is a `ConfigError`."""
    try:
        return create_run_dir(runs_dir)
    except OSError as exc:
        raise ConfigError(f"--runs-dir {runs_dir}: cannot create a run folder ({exc.strerror or exc})") from None


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
