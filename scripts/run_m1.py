"""``python -m scripts.run_m1 run|check``: see ``--help``."""

import sys

from thermospec.cli.m1 import main

if __name__ == "__main__":
    sys.exit(main())
