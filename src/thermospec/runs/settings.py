"""A run's options as keywords: the validated `RunConfig` they make, and whether its records fit on disk.

The Python API (`thermospec.config`, `run`, `check`, `sweep`) and the command line build their
configurations here, so that both refuse the same things in the same words.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from thermospec.core.payload import EpsSpec
from thermospec.runs.config import ConfigError, RunConfig

__all__ = ["JSONL_STEP_BYTES", "check_room", "config"]


def config(
    *,
    corpus: str | Path | None = None,
    vocab: int = 256,
    c: float = 50.0,
    K: int = 64,
    tau: float = 1.0,
    eps: EpsSpec = "auto",
    steps: int = 50_000,
    seed: int = 7,
    gamma: int | None = None,
    cost_ratio: float = 0.0,
    tokenizer: str | None = None,
    tsu: str = "sim",
    drafts: int = 1,
    verifier: str = "recursive",
    trace: str | Path | None = None,
    order: int = 2,
) -> RunConfig:
    """A validated configuration, with the guide's defaults; the keywords are the CLI's options.

    ``trace`` (a ``.npy``/``.npz`` of recorded next-token log-probabilities, docs/traces.md) makes
    the run teacher-forced over its positions; ``order`` N > 2 (with ``corpus``) makes the context
    the last N - 1 characters.

    Raises
    ------
    ConfigError
        One line naming the option and the reason.
    """
    settings = RunConfig(corpus=_path_text(corpus), vocab=vocab, c=c, K=K, tau=tau, eps=eps, steps=steps, seed=seed,
                         gamma=gamma, cost_ratio=cost_ratio, tokenizer=tokenizer, tsu=tsu, drafts=drafts,
                         verifier=verifier, trace=_path_text(trace), order=order)  # every type checked here
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
