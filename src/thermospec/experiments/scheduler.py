"""Connecting to a Dask distributed scheduler (``--scheduler``), failing fast with one line.

`connect_scheduler` checks the address's form and that it answers (a plain TCP
connect, `check_reachable`) before a Dask `Client` exists: a `Client` whose
connection fails waits 10 s more when it is collected and prints a traceback.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from thermospec.runs.config import ConfigError

__all__ = ["DEFAULT_SCHEDULER_PORT", "check_reachable", "connect_scheduler"]

DEFAULT_SCHEDULER_PORT = 8786
_ADDRESS = re.compile(r"^(?:(tcp|tls|ws|wss|inproc|ucx)://)?[^\s/:]+(?::\d{1,5})?$")


def check_reachable(address: str, timeout_s: float) -> None:
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


def connect_scheduler(address: str, timeout_s: float) -> Any:
    if not _ADDRESS.match(address):
        raise ConfigError(f"--scheduler {address}: not a scheduler address (expected e.g. tcp://HOST:8786)")
    check_reachable(address, timeout_s)
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
