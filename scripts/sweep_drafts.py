"""``python -m scripts.sweep_drafts``: ``thermospec drafts-sweep`` in a checkout (the same parser); see ``--help``."""

import sys

from thermospec.cli.drafts_sweep import main

if __name__ == "__main__":
    sys.exit(main())
