"""``python -m scripts.generate``: see ``--help``."""

import sys

from thermospec.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
