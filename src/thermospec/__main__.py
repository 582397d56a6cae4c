"""``python -m thermospec``: the ``thermospec`` command (`thermospec.cli.commands`)."""

import sys

from thermospec.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
