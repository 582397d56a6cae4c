"""Parameter sweeps of M1: one full run per seed, and a (K, τ) grid on a fixed context.

Both sweeps are lists of configurations and a pure function that turns one
configuration into one CSV row.  A configuration carries everything its result
depends on, including its random stream:

- seed sweep: configuration = the run options with one ``--seed``; the row comes
  from the same run as ``run_m1 run --seed S`` (its telemetry and summary are
  written to ``seed_<S>/`` in the sweep folder);
- grid sweep: configuration = (K, τ, seed); the target depends on the seed only,
  and the `steps` fixed-context draws come from
  ``random_stream(seed, Stream.SWEEP, K, bits of τ)``, so a row does not depend on
  which worker computed it, on the order of the axes' values, or on what else
  was swept.

Adding an axis to the grid (for example γ) means: a field of `GridPoint` (and of
its `stream_key` if the axis changes the draws), a tuple of values in
`GridSweep` and in its `points` product, a column in `GRID_FIELDS`, and the axis
in `GRID_GROUP` if the printed table should keep its values apart.

Rows are written to the CSV as configurations finish (whole lines, flushed), so
an interrupted sweep keeps every finished configuration; the file is rewritten
in the configurations' order at the end.  On SIGINT or SIGTERM the sweep starts
no new configuration, stops its workers (`parallel`), keeps every row that
finished (and, through `settle`, one whose task finished but whose result never
arrived) and says which configurations are missing.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
import signal
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import numpy as np

from thermospec.core.payload import EpsSpec
from thermospec.experiments.parallel import (
    StopSignals,
    SweepInterrupted,
    TaskInterrupted,
    TaskRunner,
    single_threaded_blas,
    stop_signals,
)
from thermospec.runs.config import ConfigError, RunConfig
from thermospec.runs.interrupts import signal_name
from thermospec.runs.progress import Progress
from thermospec.runs.targets import load_target
from thermospec.targets.bigram import BigramTarget

__all__ = [
    "GRID_CSV",
    "GRID_FIELDS",
    "GRID_GROUP",
    "SEEDS_CSV",
    "SEED_FIELDS",
    "SWEEP_JSON",
    "CsvRows",
    "SweepOutcome",
    "check_values",
    "most_probable_context",
    "read_csv_rows",
    "resolve_context",
    "run_sweep",
    "tau_key",
]


GRID_CSV = "m1_sweep.csv"


SEEDS_CSV = "m1_seeds.csv"


SWEEP_JSON = "sweep.json"


GRID_FIELDS = (
    "K", "tau", "seed", "context", "steps", "accept_rate", "overlap_mass",
    "ce_gap_nats", "topk_mass", "psi_bytes", "eps_used",
)


GRID_GROUP = ("K", "tau")


SEED_FIELDS = (
    "seed", "steps", "accept_rate", "mean_overlap", "accept_overlap_gap", "mean_ce_gap",
    "chi2_stat", "chi2_dof", "p_value", "psi_bytes_max",
    "loss_draft_model", "loss_top_k", "loss_quantisation",  # appended: the columns before keep their order
)


def check_values(option: str, values: Any) -> tuple[Any, ...]:
    """The values of a multi-value option, refused when empty or repeated.

    Raises
    ------
    ConfigError
        Naming `option`: not a sequence of values (a lone number or a text), no value, or a value given twice.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigError(f"{option}: must be a sequence of values, got {values!r} ({type(values).__name__})")
    values = tuple(values)
    if not values:
        raise ConfigError(f"{option}: needs at least one value")
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ConfigError(f"{option}: {value} is given twice")
        seen.add(value)
    return tuple(values)


def tau_key(tau: float) -> int:
    """The exact bits of τ as an integer: a stream key that no rounding can make collide."""
    bits: int = struct.unpack("<Q", struct.pack("<d", float(tau)))[0]
    return bits


@lru_cache(maxsize=8)
def _target(corpus: str | None, vocab: int, c: float, seed: int) -> BigramTarget:
    """The target of one seed, loaded once per process (workers reuse it across configurations)."""
    single_threaded_blas()  # π to the last bit, whichever process loads it
    return load_target(RunConfig(corpus=corpus, vocab=vocab, c=c, seed=seed))


def target_of(base: RunConfig, seed: int) -> BigramTarget:
    """The bigram target of `base`'s options at `seed` (cached per process)."""
    return _target(base.corpus, base.vocab, base.c, seed)


def most_probable_context(target: BigramTarget) -> int:
    """The most probable token under π (the lower id on a tie)."""
    return int(np.argmax(target.pi))


def describe_vocabulary(target: BigramTarget) -> str:
    if target.vocabulary is None:
        return f"token ids 0..{target.V - 1}"
    return f"token ids 0..{target.V - 1} or one of the corpus' {target.V} characters"


def resolve_context(text: str, target: BigramTarget) -> int:
    """The token id named by ``--context``.

    For a corpus a one-character value that is a character of the corpus is that
    character (backslash escapes such as ``\\n`` are understood); any other value
    must be a token id below V.

    Raises
    ------
    ConfigError
        A value that names no token of the vocabulary.
    """
    if target.vocabulary is not None:
        character = text
        if text.startswith("\\") and len(text) > 1:
            try:
                character = codecs.decode(text, "unicode_escape")
            except UnicodeDecodeError:
                character = text
        if len(character) == 1:
            if character in target.vocabulary:
                return target.vocabulary.index(character)
            if not character.isdigit():  # a digit the corpus lacks is a token id
                raise ConfigError(f"--context {text!r}: not a character of the corpus ({describe_vocabulary(target)})")
    try:
        token = int(text)
    except ValueError:
        raise ConfigError(f"--context {text!r}: not a token id ({describe_vocabulary(target)})") from None
    if not 0 <= token < target.V:
        raise ConfigError(f"--context {text}: outside the vocabulary ({describe_vocabulary(target)})")
    return token


def context_label(token: int, target: BigramTarget) -> str:
    """A token id, with its character for a corpus."""
    if target.vocabulary is None:
        return str(token)
    return f"{token} ({target.vocabulary[token]!r})"


def _csv_text(value: Any) -> str:
    if value is None:  # a value that does not exist (an exact expectation out of reach): an empty cell
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    return str(value)


def _csv_line(fields: Sequence[str], row: Mapping[str, Any] | None = None, line_end: str = "\n") -> str:
    buffer = io.StringIO()
    cells = fields if row is None else [_csv_text(row[f]) for f in fields]
    csv.writer(buffer, lineterminator=line_end).writerow(cells)
    return buffer.getvalue()


class CsvRows:
    """A CSV file written one whole, flushed line per finished configuration.

    Parameters
    ----------
    path : Path
        The file (created, with its header).
    fields : sequence of str
        Column names, in order.
    line_end : str
        ``"\\n"``; the γ sweep's CSV has always ended its lines with ``"\\r\\n"`` (Python's csv
        default) and keeps doing so, since outputs do not change by a byte.
    """

    def __init__(self, path: Path, fields: Sequence[str], line_end: str = "\n") -> None:
        self.path = path
        self.fields = tuple(fields)
        self.line_end = line_end
        self._out: IO[str] = path.open("w", encoding="utf-8", newline="")
        self._write(_csv_line(self.fields, line_end=line_end))

    def _write(self, line: str) -> None:
        self._out.write(line)  # one call per line: an interrupt never splits a row
        self._out.flush()

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row now."""
        self._write(_csv_line(self.fields, row, self.line_end))

    def close(self) -> None:
        """Close the file."""
        self._out.close()

    def rewrite(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the file, atomically, by `rows` in the given order."""
        self.close()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", encoding="utf-8", newline="") as out:
            out.write(_csv_line(self.fields, line_end=self.line_end))
            out.writelines(_csv_line(self.fields, r, self.line_end) for r in rows)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a sweep CSV as dicts of text."""
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass
class SweepOutcome:
    """What a sweep produced: rows in configuration order, and what is missing after an interrupt.

    Attributes
    ----------
    rows : list of dict
        The rows of the finished configurations, in configuration order (as in the CSV).
    total : int
        Configurations of the sweep.
    elapsed_s : float
    interrupted : bool
        A signal stopped the sweep (`signum`, SIGINT or SIGTERM).
    missing : list of int
        Indices of the configurations that did not finish.
    signum : int or None
    """

    rows: list[dict[str, Any]]
    total: int
    elapsed_s: float
    interrupted: bool = False
    missing: list[int] = field(default_factory=list)
    signum: int | None = None
    failure: str | None = None  # a task's failed write (a full disk) stopped the sweep: its one-line message

    @property
    def interrupted_by(self) -> str | None:
        """``"SIGINT"`` or ``"SIGTERM"`` after an interrupt, the failure's message after a failed write, else None."""
        return self.failure if self.signum is None else signal_name(self.signum)


def run_sweep(
    task: Callable[[Any], dict[str, Any]],
    items: Sequence[Any],
    runner: TaskRunner,
    csv_path: Path,
    fields: Sequence[str],
    progress: Progress | None = None,
    stop: StopSignals | None = None,
    settle: Callable[[Any], dict[str, Any] | None] | None = None,
    line_end: str = "\n",
) -> SweepOutcome:
    """Run `task` on every item with `runner`, writing each row to `csv_path` as it finishes.

    On SIGINT or SIGTERM (recorded by `stop`, by default a `stop_signals` of
    this call) no configuration starts any more and the workers are stopped;
    the rows already finished stay in the file (whole lines, then put in
    configuration order) and the outcome says which configurations are
    missing.  After an interrupt `settle`, if given, is called on each
    unfinished item once every worker has stopped: it returns the row of a
    task that finished although its result was lost (a seed's run complete on
    disk), else None (and may mark what the task left unfinished).
    """
    started = time.perf_counter()
    done: dict[int, dict[str, Any]] = {}
    sink = CsvRows(csv_path, fields, line_end)
    signum: int | None = None
    failure: str | None = None
    with ExitStack() as stack:
        if stop is None:
            stop = stack.enter_context(stop_signals())
        try:
            for index, row in runner.map_unordered(task, items, stop):
                sink.append(row)
                done[index] = row
                if progress is not None:
                    progress.update(1)
        except (SweepInterrupted, TaskInterrupted, KeyboardInterrupt, OSError) as exc:
            if isinstance(exc, OSError):  # a full disk: stop as on a signal, keep what finished, say why
                failure = str(exc)
            else:
                signum = getattr(exc, "signum", None) or stop.signum or signal.SIGINT
            settled = {} if settle is None else {i: settle(items[i]) for i in range(len(items)) if i not in done}
            done |= {i: found for i, found in settled.items() if found is not None}
        finally:
            ordered = [done[i] for i in sorted(done)]
            sink.rewrite(ordered)
    missing = [i for i in range(len(items)) if i not in done]
    return SweepOutcome(
        rows=ordered, total=len(items), elapsed_s=time.perf_counter() - started,
        interrupted=signum is not None or failure is not None, missing=missing, signum=signum, failure=failure,
    )


def eps_spec_text(eps: EpsSpec) -> str:
    """ε as the user wrote it."""
    return eps if isinstance(eps, str) else repr(eps)


def format_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body)
    return "\n".join(lines)


def format_number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


class SeedInterrupted(TaskInterrupted):
    """A seed's run stopped early on a signal; an ordinary exception, so it travels back from a worker."""
