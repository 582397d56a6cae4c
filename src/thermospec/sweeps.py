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
in the configurations' order at the end.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from itertools import product
from pathlib import Path
from typing import IO, Any

import numpy as np

from thermospec.config import ConfigError, RunConfig, Stream, check_eps, load_target, random_stream
from thermospec.engine import fixed_context_draws
from thermospec.parallel import TaskRunner, single_threaded_blas
from thermospec.payload import EpsSpec
from thermospec.progress import Progress
from thermospec.proposer import draft_for_row
from thermospec.runs import execute_run, prepare_run
from thermospec.targets import BigramTarget

__all__ = [
    "GRID_CSV",
    "GRID_FIELDS",
    "GRID_GROUP",
    "SEEDS_CSV",
    "SEED_FIELDS",
    "SWEEP_JSON",
    "CsvRows",
    "GridPoint",
    "GridSweep",
    "SeedInterrupted",
    "SeedSweep",
    "SweepOutcome",
    "aggregate_grid",
    "check_values",
    "format_grid_table",
    "format_seed_table",
    "grid_row",
    "most_probable_context",
    "read_csv_rows",
    "resolve_context",
    "run_seed",
    "run_sweep",
    "seed_row",
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
)


# --------------------------------------------------------------------------- values of the axes


def check_values(option: str, values: Sequence[Any]) -> tuple[Any, ...]:
    """The values of a multi-value option, refused when empty or repeated.

    Raises
    ------
    ConfigError
        Naming `option`: no value, or a value given twice.
    """
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


# --------------------------------------------------------------------------- targets and contexts


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


def _describe_vocabulary(target: BigramTarget) -> str:
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
                raise ConfigError(f"--context {text!r}: not a character of the corpus ({_describe_vocabulary(target)})")
    try:
        token = int(text)
    except ValueError:
        raise ConfigError(f"--context {text!r}: not a token id ({_describe_vocabulary(target)})") from None
    if not 0 <= token < target.V:
        raise ConfigError(f"--context {text}: outside the vocabulary ({_describe_vocabulary(target)})")
    return token


def context_label(token: int, target: BigramTarget) -> str:
    """A token id, with its character for a corpus."""
    if target.vocabulary is None:
        return str(token)
    return f"{token} ({target.vocabulary[token]!r})"


# --------------------------------------------------------------------------- the (K, τ) grid


@dataclass(frozen=True)
class GridPoint:
    """One configuration of the grid."""

    K: int
    tau: float
    seed: int

    def stream_key(self) -> tuple[int, ...]:
        """Index of this configuration's draws under ``Stream.SWEEP`` of its seed."""
        return (self.K, tau_key(self.tau))


@dataclass(frozen=True)
class GridSweep:
    """A (K, τ, seed) grid of fixed-context proposals.

    Attributes
    ----------
    base : RunConfig
        Target options (corpus, vocab, c) and ε; its K, τ and seed are not used.
    steps : int
        Fixed-context proposals (and corrections) per configuration.
    Ks, taus, seeds : tuple
        Values of each axis, in the order the CSV lists them.
    context : int or None
        Fixed context; None means the most probable context under each seed's π.
    """

    base: RunConfig
    steps: int
    Ks: tuple[int, ...]
    taus: tuple[float, ...]
    seeds: tuple[int, ...]
    context: int | None = None

    def points(self) -> list[GridPoint]:
        """Every configuration, K slowest and seed fastest."""
        return [GridPoint(K=k, tau=t, seed=s) for k, t, s in product(self.Ks, self.taus, self.seeds)]

    def context_of(self, target: BigramTarget) -> int:
        """The fixed context used on `target`."""
        return most_probable_context(target) if self.context is None else self.context


def grid_row(sweep: GridSweep, point: GridPoint) -> dict[str, Any]:
    """Run one configuration: `steps` fixed-context drafts and corrections; return its CSV row.

    ``accept_rate`` is the fraction of accepted drafts; the other metrics are
    those of the context's ψ against its target row.
    """
    target = target_of(sweep.base, point.seed)
    x = sweep.context_of(target)
    p = target.row(x)
    draft = draft_for_row(p, x, point.K, point.tau, sweep.base.eps)
    rng = random_stream(point.seed, Stream.SWEEP, *point.stream_key())
    draws = fixed_context_draws(p, draft, sweep.steps, rng)
    return {
        "K": point.K,
        "tau": point.tau,
        "seed": point.seed,
        "context": x,
        "steps": sweep.steps,
        "accept_rate": int(np.count_nonzero(draws.accepted)) / sweep.steps,
        "overlap_mass": draft.overlap_mass,
        "ce_gap_nats": draft.ce_gap_nats,
        "topk_mass": draft.topk_mass,
        "psi_bytes": draft.psi_bytes,
        "eps_used": draft.payload.eps,
    }


def validate_grid(sweep: GridSweep) -> BigramTarget:
    """Check every configuration can run (target, ε range, ψ crafting); return the first seed's target.

    Raises
    ------
    ConfigError, thermospec.targets.CorpusError, thermospec.payload.PayloadError
    """
    for k in sweep.Ks:
        if k < 1:
            raise ConfigError(f"--Ks: every K must be an integer >= 1, got {k}")
    for t in sweep.taus:
        if not (math.isfinite(t) and np.float32(t) > 0):
            raise ConfigError(f"--taus: every τ must be a finite number > 0, got {t}")
    target = target_of(sweep.base, sweep.seeds[0])
    if sweep.context is not None and not 0 <= sweep.context < target.V:
        raise ConfigError(f"--context {sweep.context}: outside the vocabulary ({_describe_vocabulary(target)})")
    x = sweep.context_of(target)
    for k, t in product(sweep.Ks, sweep.taus):
        config = replace(sweep.base, K=k, tau=t)
        check_eps(config, target.V)
        draft_for_row(target.row(x), x, k, t, sweep.base.eps)
    return target


def _finite_mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.inf if any(not math.isfinite(v) for v in values) else math.fsum(values) / len(values)


def aggregate_grid(rows: Iterable[Mapping[str, Any]], group: Sequence[str] = GRID_GROUP) -> list[dict[str, Any]]:
    """Means over seeds per (K, τ): accept, overlap, |accept − overlap|, its standard error, CE gap, ...

    The standard error of the mean acceptance over S seeds with n steps each is
    ``sqrt(sum_s o_s (1 - o_s) / n) / S`` with the overlaps ``o_s`` (the
    acceptance probabilities the rows should match).
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[g] for g in group), []).append(row)
    out = []
    for key, members in groups.items():
        accept = math.fsum(float(r["accept_rate"]) for r in members) / len(members)
        overlap = math.fsum(float(r["overlap_mass"]) for r in members) / len(members)
        variance = math.fsum(
            float(r["overlap_mass"]) * (1 - float(r["overlap_mass"])) / int(r["steps"]) for r in members
        )
        out.append({
            **dict(zip(group, key, strict=True)),
            "seeds": len(members),
            "accept_rate": accept,
            "overlap_mass": overlap,
            "accept_overlap_gap": abs(accept - overlap),
            "accept_se": math.sqrt(variance) / len(members),
            "ce_gap_nats": _finite_mean(float(r["ce_gap_nats"]) for r in members),
            "topk_mass": math.fsum(float(r["topk_mass"]) for r in members) / len(members),
            "psi_bytes": max(int(r["psi_bytes"]) for r in members),
        })
    return out


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body)
    return "\n".join(lines)


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def format_grid_table(aggregates: Sequence[Mapping[str, Any]]) -> str:
    """The compact per-(K, τ) table the grid sweep prints."""
    header = ("K", "tau", "accept", "overlap", "|a-o|", "se", "ce_gap", "topk", "psi_B")
    body = [
        (str(a["K"]), repr(float(a["tau"])), _num(a["accept_rate"]), _num(a["overlap_mass"]),
         _num(a["accept_overlap_gap"]), _num(a["accept_se"]), _num(a["ce_gap_nats"]),
         _num(a["topk_mass"]), str(a["psi_bytes"]))
        for a in aggregates
    ]
    return _table(header, body)


# --------------------------------------------------------------------------- the seed sweep


class SeedInterrupted(Exception):  # noqa: N818  (an event, like KeyboardInterrupt)
    """A seed's run stopped early on a signal; an ordinary exception, so it travels back from a worker."""


@dataclass(frozen=True)
class SeedSweep:
    """One full M1 run per seed.

    Attributes
    ----------
    base : RunConfig
        The run options; its seed is replaced by each of `seeds`.
    seeds : tuple of int
    """

    base: RunConfig
    seeds: tuple[int, ...]

    def config(self, seed: int) -> RunConfig:
        """The run of one seed."""
        return replace(self.base, seed=seed)


def seed_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The CSV row of one seed's run, from its summary."""
    return {
        "seed": summary["config"]["seed"],
        "steps": summary["steps"],
        "accept_rate": summary["accept_rate"],
        "mean_overlap": summary["mean_overlap"],
        "accept_overlap_gap": summary["accept_overlap_gap"],
        "mean_ce_gap": math.inf if summary["mean_ce_gap"] is None else summary["mean_ce_gap"],
        "chi2_stat": summary["chi2_stat"],
        "chi2_dof": summary["chi2_dof"],
        "p_value": summary["p_value"],
        "psi_bytes_max": summary["psi_bytes_max"],
    }


def seed_dir_name(seed: int) -> str:
    """Sub-folder of a seed's run inside the sweep folder."""
    return f"seed_{seed}"


def run_seed(sweep: SeedSweep, sweep_dir: str, seed: int) -> dict[str, Any]:
    """Run one seed exactly as ``run_m1 run --seed`` would, into ``sweep_dir/seed_<seed>``; return its row."""
    single_threaded_blas()
    run = prepare_run(sweep.config(seed))
    run_dir = Path(sweep_dir) / seed_dir_name(seed)
    run_dir.mkdir(exist_ok=True)
    summary = execute_run(run, run_dir)
    if summary.get("interrupted"):  # the run stopped early on Ctrl-C: the seed is not finished
        raise SeedInterrupted(f"seed {seed}: run interrupted after {summary.get('steps')} steps")
    return seed_row(summary)


def format_seed_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-seed table with a mean ± std (ddof = 1) row."""
    header = ("seed", "accept", "overlap", "|a-o|", "ce_gap", "chi2_p")
    columns = ("accept_rate", "mean_overlap", "accept_overlap_gap", "mean_ce_gap", "p_value")
    body = [(str(r["seed"]), *(_num(float(r[c])) for c in columns)) for r in rows]
    stats = []
    for column in columns:
        values = np.array([float(r[column]) for r in rows])
        if not np.all(np.isfinite(values)):
            stats.append("inf")
        elif len(values) < 2:
            stats.append(f"{values.mean():.4f} ± n/a")
        else:
            stats.append(f"{values.mean():.4f} ± {values.std(ddof=1):.4f}")
    body.append(("mean±std", *stats))
    return _table(header, body)


# --------------------------------------------------------------------------- CSV and the sweep driver


def _csv_text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    return str(value)


def _csv_line(fields: Sequence[str], row: Mapping[str, Any] | None = None) -> str:
    buffer = io.StringIO()
    cells = fields if row is None else [_csv_text(row[f]) for f in fields]
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


class CsvRows:
    """A CSV file written one whole, flushed line per finished configuration.

    Parameters
    ----------
    path : Path
        The file (created, with its header).
    fields : sequence of str
        Column names, in order.
    """

    def __init__(self, path: Path, fields: Sequence[str]) -> None:
        self.path = path
        self.fields = tuple(fields)
        self._out: IO[str] = path.open("w", encoding="utf-8", newline="")
        self._write(_csv_line(self.fields))

    def _write(self, line: str) -> None:
        self._out.write(line)  # one call per line: an interrupt never splits a row
        self._out.flush()

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row now."""
        self._write(_csv_line(self.fields, row))

    def close(self) -> None:
        """Close the file."""
        self._out.close()

    def rewrite(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the file, atomically, by `rows` in the given order."""
        self.close()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", encoding="utf-8", newline="") as out:
            out.write(_csv_line(self.fields))
            out.writelines(_csv_line(self.fields, r) for r in rows)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a sweep CSV as dicts of text."""
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass
class SweepOutcome:
    """What a sweep produced: rows in configuration order, and what is missing after an interrupt."""

    rows: list[dict[str, Any]]
    total: int
    elapsed_s: float
    interrupted: bool = False
    missing: list[int] = field(default_factory=list)


def run_sweep(
    task: Callable[[Any], dict[str, Any]],
    items: Sequence[Any],
    runner: TaskRunner,
    csv_path: Path,
    fields: Sequence[str],
    progress: Progress | None = None,
) -> SweepOutcome:
    """Run `task` on every item with `runner`, writing each row to `csv_path` as it finishes.

    On Ctrl-C the rows already finished stay in the file (whole lines, then put
    in configuration order) and the outcome says which configurations are missing.
    """
    started = time.perf_counter()
    done: dict[int, dict[str, Any]] = {}
    sink = CsvRows(csv_path, fields)
    interrupted = False
    try:
        for index, row in runner.map_unordered(task, items):
            sink.append(row)
            done[index] = row
            if progress is not None:
                progress.update(1)
    except (KeyboardInterrupt, SeedInterrupted):
        interrupted = True
    finally:
        ordered = [done[i] for i in sorted(done)]
        sink.rewrite(ordered)
    missing = [i for i in range(len(items)) if i not in done]
    return SweepOutcome(
        rows=ordered, total=len(items), elapsed_s=time.perf_counter() - started,
        interrupted=interrupted, missing=missing,
    )


def grid_task(sweep: GridSweep) -> Callable[[GridPoint], dict[str, Any]]:
    """`grid_row` bound to a sweep: picklable, so it runs in any worker."""
    return partial(grid_row, sweep)


def seed_task(sweep: SeedSweep, sweep_dir: Path) -> Callable[[int], dict[str, Any]]:
    """`run_seed` bound to a sweep and its folder: picklable, so it runs in any worker."""
    return partial(run_seed, sweep, str(sweep_dir))


def eps_spec_text(eps: EpsSpec) -> str:
    """ε as the user wrote it."""
    return eps if isinstance(eps, str) else repr(eps)
