"""``python -m scripts.sweep_m1_grid``: a (K, τ, seed) grid on a fixed context and m1_sweep.csv; see ``--help``."""

import sys

from thermospec.cli.sweep import grid_main

if __name__ == "__main__":
    sys.exit(grid_main())
