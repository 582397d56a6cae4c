"""The figure of a drafts sweep (``m1_drafts_sweep.csv``): acceptance and modelled speed-up against N.

Top row, one panel per K: each verifier's exact acceptance (line, hollow circles)
and its measured acceptance (×, ±2 s.e.), the optimum over every exact verifier
and the bound Σ min(p, 1 − (1 − q)^N).  Bottom row: the modelled speed-up of one
γ = 1 block per target call, (1 + acceptance) / (d c + 1), ``c`` the TSU draw /
target call cost ratio and ``d`` the TSU draws a step costs: solid, the draws the
verifier uses (the CSV's ``expected_draws``: recursive and SpecTr stop at the
first acceptance, so well under N); dashed, every one of the N draws charged
(the CSV's ``speedup`` column, right for a TSU that draws all N at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thermospec.experiments.drafts_sweep import DRAFTS_CSV, DRAFTS_PNG
from thermospec.experiments.plot_base import Drawn, PlotError, describe_sweep, new_figure, save_figure
from thermospec.experiments.sweeps import SWEEP_JSON, read_csv_rows

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DRAFTS_COLUMNS", "drafts_figure", "draw_drafts_sweep", "read_drafts_rows", "speedup"]

DRAFTS_COLUMNS = ("K", "N", "steps", "accept_rate", "accept_se", "exact_acceptance", "optimum", "bound",
                  "expected_draws", "cost_ratio")


def speedup(acceptance: float, draws: float, cost_ratio: float) -> float:
    """Tokens per unit of time of one γ = 1 block per target call, relative to the target alone.

    A step emits ``1 + acceptance`` tokens on average and costs one target call
    plus `draws` TSU draws of `cost_ratio` target calls each.
    """
    return (1 + acceptance) / (draws * cost_ratio + 1)


def read_drafts_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of ``m1_drafts_sweep.csv``: ``verifier`` as text, the `DRAFTS_COLUMNS` as numbers.

    Raises
    ------
    PlotError
        Unreadable file, no rows, a missing column or a cell that is not a number.
    """
    try:
        rows = read_csv_rows(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise PlotError(f"{path}: cannot be read ({exc})") from None
    if not rows:
        raise PlotError(f"{path}: has no rows")
    missing = [c for c in ("verifier", *DRAFTS_COLUMNS) if c not in rows[0]]
    if missing:
        raise PlotError(f"{path}: missing column(s) {', '.join(missing)}")
    parsed: list[dict[str, Any]] = []
    for number, row in enumerate(rows, start=2):
        try:
            values: dict[str, Any] = {c: float(row[c]) for c in DRAFTS_COLUMNS}
        except (TypeError, ValueError):
            raise PlotError(f"{path}: line {number} has a value that is not a number") from None
        values["K"], values["N"], values["steps"] = int(values["K"]), int(values["N"]), int(values["steps"])
        parsed.append(values | {"verifier": str(row["verifier"])})
    return parsed


def drafts_figure(rows: Sequence[dict[str, Any]], description: str) -> Figure:
    """Acceptance against N per verifier with the optimum and the bound; the modelled speed-up both ways."""
    from matplotlib.lines import Line2D

    Ks = sorted({int(r["K"]) for r in rows})
    figure = new_figure(max(6.4, 5.2 * len(Ks)), 7.2, description)
    axes = figure.subplots(2, len(Ks), squeeze=False, sharex=True)
    colours: dict[str, str] = {}
    for column, K in enumerate(Ks):
        top, bottom = axes[0][column], axes[1][column]
        mine = [r for r in rows if int(r["K"]) == K]
        Ns = sorted({int(r["N"]) for r in mine})
        first = {int(r["N"]): r for r in mine if r["verifier"] == mine[0]["verifier"]}
        top.plot(Ns, [first[n]["bound"] for n in Ns], color="grey", linestyle=":")
        top.plot(Ns, [first[n]["optimum"] for n in Ns], color="black", linestyle="--")
        for verifier in dict.fromkeys(r["verifier"] for r in mine):
            colour = colours.setdefault(verifier, f"C{len(colours)}")
            these = sorted((r for r in mine if r["verifier"] == verifier), key=lambda r: int(r["N"]))
            x = [int(r["N"]) for r in these]
            top.plot(x, [r["exact_acceptance"] for r in these], marker="o", markerfacecolor="none", color=colour)
            top.errorbar(x, [r["accept_rate"] for r in these], yerr=[2 * r["accept_se"] for r in these],
                         linestyle="none", marker="x", color=colour, zorder=3)
            drawn = [speedup(r["exact_acceptance"], r["expected_draws"], r["cost_ratio"]) for r in these]
            charged = [speedup(r["exact_acceptance"], r["N"], r["cost_ratio"]) for r in these]
            bottom.plot(x, drawn, marker="o", color=colour)
            bottom.plot(x, charged, linestyle="--", marker=".", color=colour, alpha=0.6)
        top.set_title(f"K = {K}: acceptance against N", fontsize=10)
        top.set_ylabel("acceptance (exact: line; measured: ×)")
        top.grid(True, alpha=0.3)
        costs = sorted({r["cost_ratio"] for r in mine})
        bottom.set_title(f"modelled speed-up (1 + acceptance) / (d c + 1), c = {costs[0]:g}", fontsize=10)
        bottom.set_xscale("log", base=2)
        bottom.set_xticks(Ns, [str(n) for n in Ns])
        bottom.set_xlabel("drafts per target call N")
        bottom.set_ylabel("speed-up over the target alone")
        bottom.grid(True, alpha=0.3)
    handles = [Line2D([], [], color="grey", linestyle=":", label="bound Σ min(p, 1 − (1 − q)^N)"),
               Line2D([], [], color="black", linestyle="--", label="optimum (any exact verifier)")]
    handles += [Line2D([], [], color=c, marker="o", markerfacecolor="none", label=f"{v}: exact acceptance")
                for v, c in colours.items()]
    handles += [Line2D([], [], color="black", marker="x", linestyle="none", label="measured acceptance (±2 s.e.)"),
                Line2D([], [], color="black", marker="o", label="speed-up, d = the TSU draws the verifier uses"),
                Line2D([], [], color="black", marker=".", linestyle="--", alpha=0.6,
                       label="speed-up, d = N (every draft charged)")]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(3, 1 + len(Ks)), fontsize=8, frameon=False)
    return figure


def draw_drafts_sweep(folder: Path, fallback: str | None = None) -> list[Drawn]:
    """The figure of a drafts-sweep folder, from its CSV, titled from its ``sweep.json`` (else `fallback`)."""
    rows = read_drafts_rows(folder / DRAFTS_CSV)
    steps = sorted({int(r["steps"]) for r in rows})
    fallback = fallback or f"drafts sweep · {steps[0]:,} steps per point (no {SWEEP_JSON})"
    swept = {"K": None, "K_used": None, "drafts": None, "verifier": None}
    description = describe_sweep(folder, [], "steps per point", fallback, swept)
    return [save_figure(drafts_figure(rows, description), folder / DRAFTS_PNG)]
