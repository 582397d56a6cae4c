"""Where the configurations of a sweep are computed: here, on local cores, or on a Dask cluster.

Every task is a pure function of its configuration (its randomness comes from
the configuration's own stream, never from the worker that runs it), so the
three ways below give identical results; only the order in which tasks finish
differs, which is why results come back tagged with the index of their task.

- ``jobs == 1``: in this process, in order (no pool, no pickling).
- ``jobs > 1``: a pool of worker processes, forked where the OS can fork: a
  forked worker starts in milliseconds with everything already imported and
  loaded (a fresh interpreter per worker costs about a second on a small
  machine, more than the guide's whole grid).  Workers ignore SIGINT: on
  Ctrl-C the parent stops the pool, so the user sees one message, not one
  traceback per worker.
- ``scheduler``: an existing Dask distributed cluster (``pip install thermospec[dask]``);
  its workers need thermospec installed and, for sweeps that write files, the
  same file system as this machine.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar

from thermospec.runs.config import ConfigError

__all__ = ["CONNECT_TIMEOUT_S", "TaskRunner", "available_cores", "open_runner", "single_threaded_blas"]


T = TypeVar("T")


R = TypeVar("R")


CONNECT_TIMEOUT_S = 5.0


DEFAULT_SCHEDULER_PORT = 8786


_ADDRESS = re.compile(r"^(?:(tcp|tls|ws|wss|inproc|ucx)://)?[^\s/:]+(?::\d{1,5})?$")


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


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class TaskRunner(AbstractContextManager["TaskRunner"]):
    """Runs a function over items and yields ``(index, result)`` as each task finishes.

    Open it with `open_runner`, which checks a scheduler address before
    anything is written; use it as a context manager so that a Dask client is
    closed and a process pool is shut down, also on Ctrl-C.
    """

    def __init__(self, jobs: int, client: Any = None, address: str | None = None) -> None:
        self.jobs = jobs
        self.client = client
        self.address = address

    @property
    def where(self) -> str:
        """A short description of where tasks run, for messages."""
        if self.address is not None:
            return f"Dask scheduler {self.address}"
        return "this process" if self.jobs == 1 else f"{self.jobs} local worker processes"

    def map_unordered(self, func: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        """Apply `func` to every item; yield ``(index of the item, result)`` in completion order.

        `func` must be importable by name (a module-level function) when tasks
        leave this process.  An exception in a task is raised here.
        """
        if not items:
            return
        if self.client is not None:
            yield from self._dask(func, items)
        elif self.jobs == 1 or len(items) == 1:
            for index, item in enumerate(items):
                yield _indexed(func, index, item)
        else:
            yield from self._pool(func, items)

    def _pool(self, func: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        single_threaded_blas()  # once here, inherited by every forked worker
        executor = ProcessPoolExecutor(
            max_workers=min(self.jobs, len(items)),
            mp_context=multiprocessing.get_context(method),
            initializer=_ignore_sigint,
        )
        try:
            futures = [executor.submit(_indexed, func, index, item) for index, item in enumerate(items)]
            for future in as_completed(futures):
                yield future.result()
        except BaseException:  # Ctrl-C, a failed task, or the caller stopped early: stop every worker now
            executor.shutdown(wait=False, cancel_futures=True)
            workers: dict[int, Any] = getattr(executor, "_processes", None) or {}
            for process in list(workers.values()):
                process.terminate()
            raise
        finally:
            executor.shutdown(wait=True)

    def _dask(self, func: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        from distributed import as_completed

        futures = [
            self.client.submit(_indexed, func, index, item, pure=False) for index, item in enumerate(items)
        ]
        try:
            for future in as_completed(futures, loop=self.client.loop):  # type: ignore[no-untyped-call]
                yield future.result()
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.client is not None:
            self.client.close()


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail fast, before a Dask `Client` exists, when a TCP scheduler address does not answer.

    A `Client` whose connection fails is closed again when it is garbage-collected,
    which waits 10 s more and prints a traceback; a plain socket connect avoids both.
    """
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp", "tls"):
        return
    host, _, port = rest.partition(":")
    try:
        with socket.create_connection((host, int(port or DEFAULT_SCHEDULER_PORT)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"--scheduler {address}: cannot connect within {timeout_s:g} s ({reason})") from None


def _connect(address: str, timeout_s: float) -> Any:
    if not _ADDRESS.match(address):
        raise ConfigError(f"--scheduler {address}: not a scheduler address (expected e.g. tcp://HOST:8786)")
    _check_reachable(address, timeout_s)
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError(
            f"--scheduler {address}: Dask distributed is not installed (pip install 'thermospec[dask]')"
        ) from None
    try:
        return Client(address, timeout=timeout_s, set_as_default=False)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--scheduler {address}: cannot connect within {timeout_s:g} s ({reason})") from None


def open_runner(
    jobs: int | None = None, scheduler: str | None = None, timeout_s: float | None = None
) -> TaskRunner:
    """A runner for `jobs` local workers (default: every core), or for the Dask cluster at `scheduler`.

    Connecting is done here (waiting at most `timeout_s`, default
    `CONNECT_TIMEOUT_S`), so an unreachable scheduler is reported before
    anything is written.

    Raises
    ------
    thermospec.config.ConfigError
        `jobs` below 1, a malformed or unreachable scheduler address, or Dask not installed.
    """
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs: must be an integer >= 1, got {jobs}")
    if scheduler is not None:
        client = _connect(scheduler, CONNECT_TIMEOUT_S if timeout_s is None else timeout_s)
        return TaskRunner(jobs=jobs or 1, client=client, address=scheduler)
    return TaskRunner(jobs=jobs or available_cores())
