"""What every figure shares: print resolution, the canvas, a legend clear of the data, and the title line.

Each figure is drawn on a fresh `matplotlib.figure.Figure` with the Agg canvas
(matplotlib's object API: no display, no global pyplot state), saved at `DPI`
(print resolution), and titled with what was run — target and V (with its order
N or trace), K, τ, ε, N drafts and their verifier, seed(s) and steps, read from
the folder's ``summary.json`` or ``sweep.json`` — so that figures of different
runs never look alike.  Legends sit below the axes, where
they cover no data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from thermospec.experiments.sweeps import SWEEP_JSON
from thermospec.runs.storage import SUMMARY_FILE

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "OVERLAP",
    "AcceptanceName",
    "Drawn",
    "PlotError",
    "acceptance_name",
    "describe_config",
    "describe_run",
    "describe_sweep",
    "legend_below",
    "new_figure",
    "read_json",
    "save_figure",
    "seeds_text",
    "title_lines",
]


DPI = 200  # print resolution: a 6.4 in wide figure is 1280 px
TITLE_CHAR_POINTS = 4.9  # the mean width of a character of the 9 pt title line: longer lines are broken


class PlotError(ValueError):
    """A folder or file that cannot be plotted; the message names it and says why."""


class AcceptanceName(NamedTuple):
    """How the figures name a step's exact acceptance probability (the telemetry's ``overlap_mass``).

    Attributes
    ----------
    short : str
        In running text: ``"overlap"``.
    full : str
        On an axis or in a legend: ``"overlap Σ min(p, q)"``.
    """

    short: str
    full: str


OVERLAP = AcceptanceName("overlap", "overlap Σ min(p, q)")


def acceptance_name(config: Mapping[str, Any] | None) -> AcceptanceName:
    """What a run's ``overlap_mass`` is: Σ min(p, q), or a ``--drafts N`` run's verifier's exact acceptance."""
    drafts = (config or {}).get("drafts")
    if isinstance(drafts, int) and drafts > 1:
        verifier = (config or {}).get("verifier", "recursive")
        return AcceptanceName("exact acceptance", f"{verifier} verifier's exact acceptance (N = {drafts})")
    return OVERLAP


class Drawn(NamedTuple):
    """A figure written: where, and the figure itself (for inspection)."""

    path: Path
    figure: Figure


def new_figure(width: float, height: float, description: str) -> Figure:
    """A constrained-layout figure on the Agg canvas, its first title line `description` (what was run)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # deferred: only plotting pays for matplotlib

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title_lines(description, int(width * 72 / TITLE_CHAR_POINTS)), fontsize=9)
    return figure


def title_lines(description: str, width: int) -> str:
    """`description` broken at its " · " separators into lines of at most `width` characters (if it can be)."""
    lines = [""]
    for part in description.split(" · "):
        if lines[-1] and len(lines[-1]) + 3 + len(part) > width:
            lines.append(part)
        else:
            lines[-1] = f"{lines[-1]} · {part}" if lines[-1] else part
    return "\n".join(lines)


def save_figure(figure: Figure, path: Path) -> Drawn:
    """Write `figure` as a PNG at `DPI`; the same figure gives the same bytes."""
    try:
        figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    except OSError as exc:
        raise PlotError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    return Drawn(path, figure)


def legend_below(ax: Axes, columns: int = 2, **options: Any) -> None:
    """The axes' legend under its x label, outside the axes, so that it covers no data."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=columns, fontsize=8, frameon=False,
              **options)


def read_json(path: Path, needed: bool = False) -> dict[str, Any] | None:
    """A JSON object file, or None if it is absent (or unreadable, unless `needed`).

    Raises
    ------
    PlotError
        `needed` and the file is absent, unreadable or not a JSON object.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if needed:
            raise PlotError(f"{path}: not found") from None
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if needed:
            raise PlotError(f"{path}: cannot be read as JSON ({exc})") from None
        return None
    if not isinstance(document, dict):
        if needed:
            raise PlotError(f"{path}: is not a JSON object")
        return None
    return document


def seeds_text(seeds: Sequence[int]) -> str:
    """``"seed 7"``, ``"seeds 1, 2, 3"``, ``"10 seeds 1–10"``."""
    seeds = sorted(seeds)
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if len(seeds) <= 4:
        return "seeds " + ", ".join(map(str, seeds))
    return f"{len(seeds)} seeds {seeds[0]}–{seeds[-1]}"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _target_text(config: Mapping[str, Any], target: Mapping[str, Any] | None) -> str:
    V = (target or {}).get("V")
    V_text = f", V = {V:,}" if V is not None else ""
    if config.get("trace"):
        return f"trace {Path(str(config['trace'])).name}{V_text} (teacher-forced positions)"
    corpus = config.get("corpus")
    if corpus:
        tokenizer = config.get("tokenizer")
        kind = str(tokenizer).replace("bpe:", "BPE-") if tokenizer else "chars"
        order = config.get("order")
        kind += f", order {order}" if isinstance(order, int) and order > 2 else ""
        return f"{Path(str(corpus)).name} {kind}{V_text}"
    V = V if V is not None else config.get("vocab")
    c = config.get("c")
    return f"synthetic V = {V:,}" + (f" (c = {_number(c)})" if c is not None else "")


def describe_config(config: Mapping[str, Any], target: Mapping[str, Any] | None = None,
                    seeds: Sequence[int] | None = None, steps: str = "steps") -> str:
    """One line naming a run or a sweep: target and V, K, τ, ε, γ, drafts, seed(s), steps (absent ones left out).

    Parameters
    ----------
    config : mapping
        ``RunConfig.as_dict()`` as in ``summary.json`` / ``sweep.json`` (None for a swept value).
    target : mapping, optional
        The summary's ``target`` section (V of a corpus target).
    seeds : sequence of int, optional
        The seeds of a sweep (else the config's ``seed``).
    steps : str
        What the steps are (``"fixed-context steps"``...).
    """
    parts = [_target_text(config, target)]
    K = config.get("K_used", config.get("K"))
    if K is not None:
        parts.append(f"K = {K}")
    if config.get("tau") is not None:
        parts.append(f"τ = {_number(config['tau'])}")
    if config.get("eps") is not None:
        parts.append(f"ε = {_number(config['eps'])}")
    if config.get("gamma") is not None:
        parts.append(f"γ = {config['gamma']}")
    drafts = config.get("drafts")
    if isinstance(drafts, int) and drafts > 1:
        parts.append(f"N = {drafts} drafts, {config.get('verifier', 'recursive')} verifier")
    if config.get("tsu", "sim") != "sim":
        parts.append(f"TSU {config['tsu']}")
    if seeds:
        parts.append(seeds_text(seeds))
    elif config.get("seed") is not None:
        parts.append(f"seed {config['seed']}")
    if config.get("steps") is not None:
        chains = config.get("chains")
        each = f"{chains} chains × " if isinstance(chains, int) and chains > 1 else ""
        parts.append(f"{each}{config['steps']:,} {steps}")
    return " · ".join(parts)


def describe_run(folder: Path) -> str:
    """The title line of a run folder, from its ``summary.json`` (or its parent's, for ``chain_<b>/``).

    Without a readable summary: the folder's name and that the summary is missing.
    """
    summary = read_json(folder / SUMMARY_FILE)
    chain = summary.get("chain") if summary else None
    if summary is not None and "config" not in summary and isinstance(chain, int):
        parent = read_json(folder.parent / SUMMARY_FILE)  # a chain's own summary has no configuration
        if parent is not None and isinstance(parent.get("config"), Mapping):
            config = dict(parent["config"]) | {"chains": None}
            return f"{describe_config(config, parent.get('target'))} · chain {chain}"
    if summary is None or not isinstance(summary.get("config"), Mapping):
        return f"run {folder.name} (no readable {SUMMARY_FILE}: configuration unknown)"
    return describe_config(summary["config"], summary.get("target"))


def describe_sweep(folder: Path, seeds: Sequence[int], steps: str, fallback: str,
                   overrides: Mapping[str, Any] | None = None) -> str:
    """The title line of a sweep folder, from its ``sweep.json`` if readable, else `fallback`.

    `overrides` replace configuration values (the K and τ a figure shows, say).
    """
    sweep = read_json(folder / SWEEP_JSON)
    if sweep is None or not isinstance(sweep.get("config"), Mapping):
        return fallback
    return describe_config(dict(sweep["config"]) | dict(overrides or {}), seeds=seeds, steps=steps)
