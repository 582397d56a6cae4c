"""Progress bars on stderr for sweeps and long runs.

A bar is shown only when its stream is a terminal and the user did not ask for
``--quiet``: piped or redirected output (logs, CI) stays free of carriage
returns.  `tqdm` is imported only when a bar is actually shown, so a quiet or
non-interactive start-up does not pay for it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Protocol

__all__ = ["Progress", "progress_bar", "shows_progress"]


class Progress(Protocol):
    """What a caller can do with a bar: advance it and note a short status."""

    def update(self, n: int = 1) -> Any:
        """Advance the bar by `n` units."""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> Any:
        """Show a short status after the bar."""


class _Silent:
    """A bar that shows nothing: used when stderr is not a terminal or with ``--quiet``."""

    def update(self, n: int = 1) -> None:
        """Ignore the advance."""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Ignore the status."""


def shows_progress(quiet: bool, stream: IO[str] | None = None) -> bool:
    """Whether a bar would be drawn: not `quiet` and `stream` (default: stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like objects without a terminal
        return False


@contextmanager
def progress_bar(
    total: int,
    description: str,
    unit: str,
    *,
    quiet: bool = False,
    stream: IO[str] | None = None,
    min_interval_s: float = 0.1,
) -> Iterator[Progress]:
    """A progress bar of `total` units on `stream` (default: stderr), or a silent one.

    Parameters
    ----------
    total : int
        Units of work (configurations of a sweep, steps of a run).
    description : str
        Short label written before the bar.
    unit : str
        Name of one unit, e.g. ``"config"`` or ``"step"``.
    quiet : bool
        Never draw the bar (``--quiet``).
    stream : text stream, optional
        Where the bar goes; stderr by default, so that stdout keeps only results.
    min_interval_s : float
        Shortest time between two redraws.

    Yields
    ------
    Progress
        Call ``update(n)`` as work finishes; the bar is closed on exit, even on Ctrl-C.
    """
    stream = sys.stderr if stream is None else stream
    if not shows_progress(quiet, stream):
        yield _Silent()
        return
    from tqdm import tqdm  # deferred: only an interactive terminal pays this import

    tqdm.monitor_interval = 0  # no monitor thread: sweeps fork worker processes, best done without threads
    bar = tqdm(total=total, desc=description, unit=unit, file=stream, dynamic_ncols=True, leave=False,
               unit_scale=unit == "step", mininterval=min_interval_s)
    try:
        yield bar
    finally:
        bar.close()
