"""``python -m scripts.sweep_m1``: one full M1 run per seed, a table and m1_seeds.csv; see ``--help``."""

import sys

from thermospec.sweep_cli import seed_main

if __name__ == "__main__":
    sys.exit(seed_main())
