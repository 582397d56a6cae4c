"""Ctrl-C and SIGTERM during a run: finish the chunk in hand, then stop with whole records.

A signal that lands in the middle of writing a chunk must not leave half a
JSONL record, nor a summary that counts steps that were not written.  While a
run streams its output, `interruption_guard` replaces the SIGINT and SIGTERM
handlers with ones that only *record* the signal; the run loop checks
`Interruption.requested` between chunks (after writing and counting the chunk),
stops, and writes a summary marked ``"interrupted": true`` that covers exactly
the steps written.  The command then exits with ``128 + signal``: 130 for
SIGINT, 143 for SIGTERM.

Outside a run (start-up, crafting ψ) `install_termination_handler` makes
SIGTERM raise `Terminated`, so the command ends with 143 and one line instead of
being killed silently.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

__all__ = [
    "HANDLED_SIGNALS",
    "Interruption",
    "Terminated",
    "exit_status",
    "install_termination_handler",
    "interruption_guard",
    "signal_name",
]


HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM outside a run's write loop; a BaseException so that no ``except Exception`` swallows it."""


@dataclass
class Interruption:
    """The first SIGINT/SIGTERM received while a guard is active (None: none yet)."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        """Whether the run should stop after the chunk in hand."""
        return self.signum is not None


def signal_name(signum: int) -> str:
    """``"SIGINT"``, ``"SIGTERM"``, ..."""
    return signal.Signals(signum).name


def exit_status(signum: int) -> int:
    """The shell's convention for a command ended by a signal: ``128 + signum`` (130, 143)."""
    return 128 + int(signum)


_active: Interruption | None = None


@contextmanager
def interruption_guard() -> Iterator[Interruption]:
    """Record SIGINT/SIGTERM instead of acting on them, for the duration of the block.

    Nested guards share the outermost one (a sweep of runs stops as a whole).
    Outside the main thread signals cannot be handled: the guard then never fires.
    """
    global _active
    if _active is not None:
        yield _active
        return
    state = Interruption()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def record(signum: int, _frame: FrameType | None) -> None:
        if state.signum is None:
            state.signum = signum

    previous = {s: signal.signal(s, record) for s in HANDLED_SIGNALS}
    _active = state
    try:
        yield state
    finally:
        _active = None
        for s, handler in previous.items():
            signal.signal(s, handler)


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated


def install_termination_handler() -> None:
    """Make SIGTERM raise `Terminated` (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
