"""``python -m scripts.sweep_m1``: one full M1 run per seed, a table and m1_seeds.csv; see ``--help``."""

import sys

from thermospec.cli.sweep import seed_main

if __name__ == "__main__":
    sys.exit(seed_main())
