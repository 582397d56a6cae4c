"""``python -m scripts.audit_run RUN_DIR``: ``thermospec audit`` in a checkout (the same parser); see ``--help``."""

import sys

from thermospec.cli.audit import main

if __name__ == "__main__":
    sys.exit(main())
