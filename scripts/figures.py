"""``python -m scripts.figures`` (or ``make figures``): regenerate the documentation's figures, ``docs/*.png``.

Each figure is made by the commands the documentation shows beside it, run as a
user would run them (each in a fresh interpreter, into a temporary runs folder),
then copied to ``docs/``.  Runs and sweeps are seeded and the plots carry no
date or path, so the same installation writes the same bytes every time.

Examples
--------
python -m scripts.figures                      # every figure, into docs/
python -m scripts.figures --only run_acceptance.png --out some/folder
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = "RUNS"  # stands for the temporary runs folder of a recipe
FOLDER = "FOLDER"  # stands for the one folder the recipe's first command created in it


@dataclass(frozen=True)
class Recipe:
    """Commands (``python -m`` module and arguments) and the PNGs they leave in the folder they create."""

    commands: tuple[tuple[str, ...], ...]
    outputs: dict[str, str]  # file written in FOLDER -> name in docs/


DEFAULT_RUN = ("scripts.run_m1", "run", "--vocab", "256", "--K", "64", "--eps", "auto", "--steps", "50000",
               "--seed", "7")
GUIDE_GRID = ("scripts.sweep_m1_grid", "--steps", "15000", "--Ks", "32", "64", "128", "--taus", "0.9", "1.0",
              "1.1", "--seeds", "7", "11")
GUIDE_SEEDS = ("scripts.sweep_m1", "--steps", "20000", "--seeds", "7", "11", "13", "17")
GAMMA_SWEEP = ("scripts.sweep_m1_grid", "--gammas", "1", "2", "4", "8", "--Ks", "64", "--taus", "1.0", "--seeds", "7",
               "--steps", "50000")
DRAFTS_SWEEP = ("scripts.sweep_drafts", "--corpus", "data/tinyshakespeare.txt", "--Ks", "8", "32",
                "--steps", "20000")
DRAFTS_SWEEP_SYNTHETIC = ("scripts.sweep_drafts", "--steps", "20000")
DRAFT_MODELS = ("scripts.draft_models_table", "--steps", "20000", "--figure")
PLOT = ("scripts.plot", FOLDER)

RECIPES = (
    Recipe((DEFAULT_RUN, PLOT), {"m1_acceptance.png": "run_acceptance.png",
                                 "m1_context_acceptance.png": "run_context_acceptance.png"}),
    Recipe((GUIDE_GRID, PLOT), {"m1_sweep_heatmaps.png": "sweep_grid_heatmaps.png"}),
    Recipe((GUIDE_SEEDS, PLOT), {"m1_seeds.png": "sweep_seeds.png"}),
    Recipe((GAMMA_SWEEP,), {"m1_speedup_vs_gamma.png": "speedup_vs_gamma.png"}),
    Recipe((DRAFTS_SWEEP,), {"m1_acceptance_vs_drafts.png": "drafts_acceptance.png"}),
    Recipe((DRAFTS_SWEEP_SYNTHETIC,), {"m1_acceptance_vs_drafts.png": "drafts_acceptance_synthetic.png"}),
    Recipe((DRAFT_MODELS,), {"losses_vs_K.png": "losses_vs_K.png"}),
)


def figure_names() -> list[str]:
    """Every ``docs/*.png`` this script writes."""
    return sorted(name for recipe in RECIPES for name in recipe.outputs.values())


def command_line(command: Sequence[str], runs: Path, folder: Path | None) -> list[str]:
    """The full argument list of one recipe command, with the runs folder and the created folder filled in."""
    module, *args = command
    filled = [str(folder) if a == FOLDER else a for a in args]
    if module != "scripts.plot":
        filled += ["--runs-dir", str(runs), "--quiet"]
    return [sys.executable, "-m", module, *filled]


def make(recipe: Recipe, out: Path, wanted: set[str]) -> list[Path]:
    """Run one recipe in a temporary folder and copy the figures it makes (those in `wanted`) to `out`."""
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="thermospec-figures-") as tmp:
        runs = Path(tmp) / "runs"
        folder: Path | None = None
        for command in recipe.commands:
            subprocess.run(command_line(command, runs, folder), cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            if folder is None:
                (folder,) = sorted(runs.iterdir())
        assert folder is not None
        for produced, name in recipe.outputs.items():
            if name in wanted:
                shutil.copyfile(folder / produced, out / name)
                written.append(out / name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="figures", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where the PNGs go (default: docs/)")
    parser.add_argument("--only", nargs="+", choices=figure_names(), metavar="NAME",
                        help="only these figures (default: all)")
    args = parser.parse_args(argv)
    wanted = set(args.only or figure_names())
    args.out.mkdir(parents=True, exist_ok=True)
    for recipe in RECIPES:
        if wanted & set(recipe.outputs.values()):
            for path in make(recipe, args.out, wanted):
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
