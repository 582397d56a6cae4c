"""Where the configurations of a sweep are computed: here, on local cores, or on a Dask cluster.

Every task is a pure function of its configuration (its randomness comes from
the configuration's own stream, never from the worker that runs it), so the
three ways below give identical results; only the order in which tasks finish
differs, which is why results come back tagged with the index of their task.

- ``jobs == 1``: in this process, in order (no pool, no pickling).
- ``jobs > 1``: worker processes, forked where the OS can fork (in milliseconds,
  everything loaded; a fresh interpreter costs about a second), each handed one
  configuration at a time: nothing waits in a queue, only the parent starts work.
- ``scheduler``: an existing Dask distributed cluster (``pip install thermospec[dask]``);
  its workers need thermospec installed and, for sweeps that write files, the
  same file system as this machine.

Stopping: SIGINT and SIGTERM are recorded (`stop_signals`); no configuration starts
any more; each busy worker gets that signal and a SIGTERM (a run stops within moments,
as on a first signal, and writes its summary; anything else ends at once; workers ignore
SIGINT otherwise) and is killed if still alive `STOP_GRACE_S` later; results that
arrive meanwhile are kept; a Dask cluster's futures are cancelled (a task already
running on a Dask worker runs on, its result dropped).  Then
`TaskRunner.map_unordered` raises `SweepInterrupted`.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from types import FrameType, TracebackType
from typing import Any, TypeVar

from thermospec.experiments.scheduler import connect_scheduler
from thermospec.runs.config import ConfigError
from thermospec.runs.interrupts import HANDLED_SIGNALS, Interruption, signal_name, tolerate_repeated_signals

__all__ = [
    "CONNECT_TIMEOUT_S", "STOP_GRACE_S", "StopSignals", "SweepInterrupted", "TaskInterrupted", "TaskRunner",
    "available_cores", "open_runner", "single_threaded_blas", "stop_signals",
]

T = TypeVar("T")
R = TypeVar("R")
CONNECT_TIMEOUT_S = 5.0
STOP_GRACE_S = 3.0  # a busy worker still running this long after a stop is killed
POLL_S = 0.05  # how often a waiting runner looks at the signals


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not every OS has sched_getaffinity
        return max(1, os.cpu_count() or 1)


_blas_pinned = False


def single_threaded_blas() -> None:
    """Pin the BLAS/LAPACK libraries loaded so far (NumPy's) to one thread, once and for good.

    The stationary distribution π comes from a LAPACK solve whose last bits
    depend on how many threads OpenBLAS uses; a worker process of a pool runs
    single-threaded BLAS, so every process that computes a configuration does
    the same, and a row is bit-identical wherever it was computed.  (On a
    loaded machine one thread is also much faster for these small solves.)
    The limit is never lifted, so threads of one Dask worker cannot race on it.
    """
    global _blas_pinned
    if _blas_pinned:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    _blas_pinned = True


def _indexed(func: Callable[[T], R], index: int, item: T) -> tuple[int, R]:
    single_threaded_blas()
    return index, func(item)


class SweepInterrupted(BaseException):
    """A sweep stopped on SIGINT or SIGTERM (`signum`); like KeyboardInterrupt, no ``except Exception`` takes it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"interrupted by {signal_name(self.signum)}"


class TaskInterrupted(Exception):  # noqa: N818  (an event, like KeyboardInterrupt)
    """A task that stopped early on a signal (`signum` when known); an ordinary exception, so it travels back."""

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum  # pickled with the instance's __dict__


@dataclass
class StopSignals(Interruption):
    """The first SIGINT or SIGTERM received while `stop_signals` is in force (`signum`; None: none yet)."""

    _raise: bool = False

    def record(self, signum: int) -> None:
        """Note a stop request (the first one wins)."""
        if self.signum is None:
            self.signum = signum

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        """The signal handler: record; inside `raising`, also raise `SweepInterrupted`."""
        self.record(signum)
        if self._raise:
            self._raise = False
            raise SweepInterrupted(signum if self.signum is None else self.signum)

    @contextmanager
    def raising(self) -> Iterator[None]:
        """Work done in this process: a signal raises `SweepInterrupted` at once instead of waiting for its end."""
        if self.signum is not None:
            raise SweepInterrupted(self.signum)
        self._raise = True
        try:
            yield
        finally:
            self._raise = False


@contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Record SIGINT/SIGTERM instead of acting on them within the block (main thread only: elsewhere it never fires)."""
    stop = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop.handle) for s in HANDLED_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def _portable(exc: Exception) -> Exception:
    """`exc` with the worker's traceback as a note, or a RuntimeError saying it if `exc` cannot be pickled."""
    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    exc.add_note(f"in worker process {os.getpid()}:\n{text}")
    return exc


def _worker_main(conn: Connection, inherited: Sequence[Connection]) -> None:
    """A worker: run each ``(func, index, item)`` received and send back ``(index, ok, result or exception)``."""
    for other in inherited:  # the parent's ends of the pipes, copied by fork: the parent alone holds them
        other.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a worker stops
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    tolerate_repeated_signals()  # the parent's stop signal and SIGTERM come together: a run still ends whole
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    single_threaded_blas()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        func, index, item = task
        try:
            reply: tuple[int, bool, Any] = (index, True, func(item))
        except Exception as exc:
            reply = (index, False, _portable(exc))
        try:
            conn.send(reply)
        except OSError:  # the parent is gone
            return
        except Exception as exc:  # a result that cannot be pickled (nothing was sent)
            conn.send((index, False, RuntimeError(f"configuration {index}: its result cannot be sent ({exc})")))


class _Worker:
    """One worker process, the pipe to it and the index of the configuration in hand (None: idle)."""

    def __init__(self, context: Any, inherited: Sequence[Connection]) -> None:
        self.conn, child = context.Pipe()
        mine = [*inherited, self.conn] if context.get_start_method() == "fork" else []
        self.process = context.Process(target=_worker_main, args=(child, mine), name="thermospec-worker")
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)  # until the worker has its handlers
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child.close()
        self.task: int | None = None

    def give(self, func: Callable[[Any], Any], index: int, item: Any) -> None:
        self.conn.send((func, index, item))
        self.task = index

    def release(self) -> None:
        """No more work: the worker ends (after the task in hand, if any)."""
        with suppress(OSError):  # it ended already
            self.conn.send(None)


def _replies(busy: Sequence[_Worker], timeout: float) -> list[tuple[_Worker, tuple[int, bool, Any] | None]]:
    """The replies that arrive within `timeout`; None for a worker that ended without replying."""
    ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout))
    out: list[tuple[_Worker, tuple[int, bool, Any] | None]] = []
    for worker in busy:
        if worker.conn in ready or (worker.process.sentinel in ready and worker.conn.poll()):
            try:
                out.append((worker, worker.conn.recv()))
            except (EOFError, OSError, pickle.UnpicklingError):
                out.append((worker, None))
        elif worker.process.sentinel in ready:
            out.append((worker, None))
    return out


def _stopped_by_signal(worker: _Worker, stop: StopSignals) -> bool:
    """Whether a worker that ended without replying was stopped by SIGINT/SIGTERM (noted in `stop`).

    ``timeout -s TERM`` or a terminal's Ctrl-C signals the whole process group: a worker may die
    of it before this process's own handler has run.
    """
    worker.process.join(POLL_S)
    code = worker.process.exitcode
    if code is not None and -code in HANDLED_SIGNALS:
        stop.record(-code)
    return stop.requested


def _stop_workers(workers: list[_Worker], signum: int) -> Iterator[tuple[int, Any]]:
    """Stop and join every worker (idle ones by their pipe, busy ones by `signum` and SIGTERM, then SIGKILL).

    Yields ``(index, result)`` of the tasks that still finish meanwhile; empties `workers`.
    """
    deadline = time.monotonic() + STOP_GRACE_S
    try:
        for worker in workers:
            if worker.task is None:
                worker.release()
            else:  # SIGINT reaches a run only (it stops as on a first signal); SIGTERM ends anything else
                for each in dict.fromkeys((signum, signal.SIGTERM)):
                    if worker.process.is_alive():  # not reaped yet: the pid is still this worker's
                        os.kill(worker.process.pid, each)
        busy = [w for w in workers if w.task is not None]
        while busy and time.monotonic() < deadline:
            for worker, reply in _replies(busy, POLL_S):
                index, worker.task = worker.task, None
                worker.release()
                if reply is not None and reply[1] and index is not None:
                    yield index, reply[2]
            busy = [w for w in busy if w.task is not None]
    finally:
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        workers.clear()


class TaskRunner(AbstractContextManager["TaskRunner"]):
    """Runs a function over items and yields ``(index, result)`` as each task finishes.

    Open it with `open_runner` (which checks a scheduler address before anything is
    written); as a context manager it closes its Dask client, also on Ctrl-C.
    """

    def __init__(self, jobs: int, client: Any = None, address: str | None = None) -> None:
        self.jobs = jobs
        self.client = client
        self.address = address

    @property
    def where(self) -> str:
        """A short description of where tasks run, for messages."""
        return self.where_for(self.jobs)

    def where_for(self, count: int) -> str:
        """Where `count` tasks actually run (one task, or one job, runs in this process)."""
        if self.address is not None:
            return f"Dask scheduler {self.address}"
        workers = min(self.jobs, count)
        return "this process" if workers <= 1 else f"{workers} local worker processes"

    def map_unordered(
        self, func: Callable[[T], R], items: Sequence[T], stop: StopSignals | None = None
    ) -> Generator[tuple[int, R], None, None]:
        """Apply `func` to every item; yield ``(index of the item, result)`` in completion order.

        `func` must be importable by name (a module-level function) when tasks leave
        this process.  An exception in a task is raised here.  SIGINT and SIGTERM go to
        `stop` (by default a `stop_signals` of this call's own): after one, the results
        that still finish are yielded, then `SweepInterrupted` is raised.  A caller that
        stops reading early (closes the iterator) stops the workers the same way.
        """
        if not items:
            return
        with ExitStack() as stack:
            stop = stack.enter_context(stop_signals()) if stop is None else stop
            if self.client is not None:
                yield from self._dask(func, items, stop)
            elif self.jobs == 1 or len(items) == 1:
                yield from self._serial(func, items, stop)
            else:
                yield from self._pool(func, items, stop)
            if stop.signum is not None:
                raise SweepInterrupted(stop.signum)

    @staticmethod
    def _serial(func: Callable[[T], R], items: Sequence[T], stop: StopSignals) -> Iterator[tuple[int, R]]:
        for index, item in enumerate(items):
            if stop.requested:
                return
            try:
                with stop.raising():
                    result = _indexed(func, index, item)
            except TaskInterrupted as exc:
                stop.record(exc.signum or signal.SIGINT)
                return
            yield result

    def _pool(self, func: Callable[[T], R], items: Sequence[T], stop: StopSignals) -> Iterator[tuple[int, R]]:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        single_threaded_blas()  # once here, inherited by every forked worker
        todo = list(reversed(range(len(items))))
        workers: list[_Worker] = []
        try:
            while todo and len(workers) < self.jobs and not stop.requested:
                workers.append(_Worker(context, [w.conn for w in workers]))
                first = todo.pop()
                workers[-1].give(func, first, items[first])
            while not stop.requested:
                busy = [w for w in workers if w.task is not None]
                if not busy:
                    break
                for worker, reply in _replies(busy, POLL_S):
                    lost, worker.task = worker.task, None
                    if reply is None and _stopped_by_signal(worker, stop):
                        break  # a signal to the process group reached the worker first: a stop, not a failure
                    if reply is None:
                        raise RuntimeError(f"a worker process ended (exit code {worker.process.exitcode}) "
                                           f"while computing configuration {lost}")
                    _, ok, value = reply
                    if not ok and isinstance(value, TaskInterrupted):
                        stop.record(value.signum or signal.SIGINT)
                        continue
                    if not ok:
                        raise value
                    if todo and not stop.requested:
                        following = todo.pop()
                        worker.give(func, following, items[following])
                    yield reply[0], value
            if stop.signum is not None:
                yield from _stop_workers(workers, stop.signum)
        finally:
            for _ in _stop_workers(workers, signal.SIGTERM):  # after an error, or a caller that stopped reading
                pass

    def _dask(self, func: Callable[[T], R], items: Sequence[T], stop: StopSignals) -> Iterator[tuple[int, R]]:
        pending = [self.client.submit(_indexed, func, i, item, pure=False) for i, item in enumerate(items)]
        try:
            while pending:
                if stop.requested:  # what finished is kept, the rest cancelled
                    kept = [f.status == "finished" for f in pending]
                    self.client.cancel([f for f, k in zip(pending, kept, strict=True) if not k])
                    pending = [f for f, k in zip(pending, kept, strict=True) if k]
                states = [(f, f.done()) for f in pending]
                done, pending = [f for f, d in states if d], [f for f, d in states if not d]
                for future in done:
                    if future.status == "error" and isinstance(future.exception(), TaskInterrupted):
                        stop.record(future.exception().signum or signal.SIGINT)
                    elif future.status != "cancelled":
                        yield future.result()
                if pending and not done:
                    time.sleep(POLL_S)
        finally:
            self.client.cancel([f for f in pending if not f.done()])

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.client is not None:
            self.client.close()


def open_runner(
    jobs: int | None = None, scheduler: str | None = None, timeout_s: float | None = None
) -> TaskRunner:
    """A runner for `jobs` local workers (default: every core), or for the Dask cluster at `scheduler`.

    Connecting is done here (waiting at most `timeout_s`, default
    `CONNECT_TIMEOUT_S`), so an unreachable scheduler is reported before
    anything is written.

    Raises
    ------
    thermospec.runs.config.ConfigError
        `jobs` below 1, a malformed or unreachable scheduler address, or Dask not installed.
    """
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs: must be an integer >= 1, got {jobs}")
    if scheduler is not None:
        client = connect_scheduler(scheduler, CONNECT_TIMEOUT_S if timeout_s is None else timeout_s)
        return TaskRunner(jobs=jobs or 1, client=client, address=scheduler)
    return TaskRunner(jobs=jobs or available_cores())
