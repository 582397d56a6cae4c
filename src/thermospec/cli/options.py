"""Option parsing shared by every command line: one-line errors, exit statuses, number and ε parsers.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from thermospec.core.payload import EpsSpec, PayloadError
from thermospec.engine.chain import ReportError
from thermospec.runs.config import DEFAULTS, OPTIONS, ConfigError, Option
from thermospec.runs.interrupts import Terminated, install_termination_handler
from thermospec.targets.corpus import CorpusError
from thermospec.tsu.faults import Fault, FaultError

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE
EXIT_TERMINATED = 143


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2.

    Options must be spelled out: a prefix such as ``--ste`` is refused rather than
    read as ``--steps``, so a recorded command line means one thing only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # argparse takes "-1e-9" for an option (it knows only "-1" and "-.5" as numbers): read every
        # number as one, so that `--eps -1e-9` says "must be >= 0" rather than "expected one argument".
        self._negative_number_matcher = re.compile(rf"^-{NUMBER.pattern}$")

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
"""A number as options spell it: digits, an optional fraction and exponent; no sign, space or ``_``."""

def number_option(text: str) -> float:
    """The float an option value spells (a sign, then `NUMBER`), or NaN, which every range check refuses.

    One spelling for every numeric option: ``1e6`` and ``0.5`` are numbers; ``10_000``,
    `` 100`` and ``0x10`` are not, although Python's `float` and `int` would take some.
    """
    body = text[1:] if text[:1] in "+-" else text
    if NUMBER.fullmatch(body) is None:
        return math.nan
    value = float(text) + 0.0  # + 0.0: "-0" is 0.0, never a recorded -0.0
    if value == 0 and any(d in "123456789" for d in body.split("e")[0].split("E")[0]):
        return math.nan  # a non-zero number that float64 rounds to 0 (1e-400) is not the 0 the user wrote
    return value


def int_at_least(low: int, high: int | None = None) -> Any:
    """A parser of integers in ``[low, high]``; ``1e6`` is the integer 1000000, ``2.5`` is refused."""
    expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        body = text[1:] if text[:1] in "+-" else text
        if body.isdigit() and body.isascii():
            value = int(text)
        else:
            number = number_option(text)
            if not (math.isfinite(number) and number.is_integer()):
                raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
            value = int(number)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


def positive_float(text: str) -> float:
    value = number_option(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = number_option(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def fault_option(text: str) -> Any:
    try:
        return Fault.parse(text)
    except FaultError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def eps_option(text: str) -> EpsSpec:
    if text == "auto":
        return "auto"
    value = number_option(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be 'auto' or a finite number >= 0, got {text!r}")
    return value


def guarded(prog: str, command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; every expected failure is one line on stderr and an exit status, never a traceback.

    Bad input (a corpus, an option, a payload): 2.  Ctrl-C: 130; SIGTERM: 143.  A TSU that
    misreported a draw, or a write that failed mid-run (a full disk): 1.  stdout closed early
    (piped into ``head``): 141, quietly, as a shell tool would.
    """
    install_termination_handler()  # SIGTERM outside a run's own guard: one line and 143, as for SIGINT
    try:
        return command(args)
    except CorpusError as exc:
        print(f"{prog}: error: --corpus {exc}", file=sys.stderr)
    except (ConfigError, PayloadError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt as exc:
        print(f"{prog}: interrupted" + (f": {exc}" if str(exc) else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as exc:
        print(f"{prog}: terminated (SIGTERM)" + (f": {exc}" if str(exc) else ""), file=sys.stderr)
        return EXIT_TERMINATED
    except ReportError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # storage.OutputError and the like
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE


def _parser_of(declared: Option) -> Any:
    """The argparse type of a declared run option: its kind and range (`thermospec.runs.config.Option`)."""
    if declared.eps:
        return eps_option
    if declared.kind == "integer":
        return int_at_least(int(declared.low or 0), None if declared.high is None else int(declared.high))
    if declared.kind == "number":
        return positive_float if declared.strict else non_negative_float
    return None


def add_run_options(parser: Any, titles: dict[str, str | None], names: Sequence[str] | None = None,
                    help: dict[str, str] | None = None, defaults: dict[str, Any] | None = None) -> None:
    """Add the run options `names` (default: every one) as `RunConfig` declares them, in its order.

    Parameters
    ----------
    titles : dict
        The group title of each `Option.group` shown (``None``: the parser's own options); an option
        whose group has no title is not added.
    help, defaults : dict, optional
        A command's own help text or default for an option (``--steps`` of a sweep).
    """
    groups: dict[str, Any] = {}
    for name, declared in OPTIONS.items():
        if (names is not None and name not in names) or declared.group not in titles:
            continue
        title = titles[declared.group]
        if declared.group not in groups:
            groups[declared.group] = parser if title is None else parser.add_argument_group(title)
        kwargs: dict[str, Any] = {"default": (defaults or {}).get(name, DEFAULTS[name]),
                                  "help": (help or {}).get(name, declared.help)}
        if declared.choices:
            kwargs["choices"] = declared.choices
        elif _parser_of(declared) is not None:
            kwargs["type"] = _parser_of(declared)
        if declared.metavar is not None:
            kwargs["metavar"] = declared.metavar
        groups[declared.group].add_argument("--" + name.replace("_", "-"), **kwargs)


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run options a parsed command line holds, by name (those its parser has)."""
    return {name: getattr(args, name) for name in OPTIONS if hasattr(args, name)}
