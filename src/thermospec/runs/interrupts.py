"""Ctrl-C and SIGTERM during a run: stop within moments, with whole records.

A signal that lands in the middle of writing a chunk must not leave half a
JSONL record, nor a summary that counts steps that were not written.  While a
run streams its output, `interruption_guard` replaces the SIGINT and SIGTERM
handlers with ones that *record* the first signal; the run loop checks
`Interruption.requested` between chunks (after writing and counting the chunk),
stops, and writes a summary marked ``"interrupted": true`` that covers exactly
the steps written.  The command then exits with ``128 + signal``: 130 for
SIGINT, 143 for SIGTERM.

Waiting for the chunk in hand could take a minute (65,536 steps of a slow
stepper), so while the engine *computes* a chunk (nothing written, nothing
counted yet) the loop opens `Interruption.cutting`: the first signal then raises
`ChunkAbandoned` at once, the chunk is dropped, and the run stops as above (only
a call that Python cannot interrupt, a compiled kernel or a model's forward pass,
finishes first).  A second signal stops at once wherever the run is: it raises
`StoppedAtOnce` (records are cut back to their last whole chunk, no summary is
written), unless `tolerate_repeated_signals` was called (a worker process, whose
parent sends a stop signal and SIGTERM together).

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
    "ChunkAbandoned",
    "Interruption",
    "StoppedAtOnce",
    "Terminated",
    "exit_status",
    "install_termination_handler",
    "interruption_guard",
    "signal_name",
    "signal_named",
    "stop_requested",
    "tolerate_repeated_signals",
]


HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM outside a run's write loop; a BaseException so that no ``except Exception`` swallows it."""


class ChunkAbandoned(BaseException):
    """The first signal arrived while the engine computed a chunk (`Interruption.cutting`): the chunk is dropped."""


class StoppedAtOnce(BaseException):
    """A second signal during a run: stop wherever the run is (`signum`: the second signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped at once by a second {signal_name(self.signum)}"


@dataclass
class Interruption:
    """The first SIGINT/SIGTERM received while a guard is active (None: none yet).

    Attributes
    ----------
    signum : int or None
        The first signal.
    cut : bool
        Inside `cutting`: the first signal raises `ChunkAbandoned` at once.
    """

    signum: int | None = None
    cut: bool = False

    @property
    def requested(self) -> bool:
        """Whether the run should stop after the chunk in hand."""
        return self.signum is not None

    def receive(self, signum: int) -> None:
        """What the guard's handler does with a signal: record the first, cut or stop at once (module docstring)."""
        if self.signum is None:
            self.signum = signum
            if self.cut:
                self.cut = False
                raise ChunkAbandoned
        elif _second_signal_stops:
            self.cut = False
            raise StoppedAtOnce(signum)

    @contextmanager
    def cutting(self, enabled: bool = True) -> Iterator[None]:
        """While the engine computes a chunk that nothing has written or counted: a signal abandons it at once."""
        if not enabled:
            yield
            return
        if self.signum is not None:
            raise ChunkAbandoned
        self.cut = True
        try:
            yield
        finally:
            self.cut = False


def signal_name(signum: int) -> str:
    """``"SIGINT"``, ``"SIGTERM"``, ..."""
    return signal.Signals(signum).name


def signal_named(name: object) -> int | None:
    """The SIGINT or SIGTERM a summary's ``interrupted_by`` names, or None (a run not stopped by a signal)."""
    for signum in HANDLED_SIGNALS:
        if name == signal_name(signum):
            return int(signum)
    return None


def exit_status(signum: int) -> int:
    """The shell's convention for a command ended by a signal: ``128 + signum`` (130, 143)."""
    return 128 + int(signum)


_active: Interruption | None = None
_second_signal_stops = True


def tolerate_repeated_signals() -> None:
    """In this process a second signal is recorded like the first (a worker: its parent sends two at once)."""
    global _second_signal_stops
    _second_signal_stops = False


def stop_requested() -> bool:
    """Whether a signal asked the run in progress to stop (the checklist then skips its extra draws)."""
    return _active is not None and _active.requested


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
        state.receive(signum)

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
