"""``python -m scripts.make_trace``: ``thermospec make-trace`` in a checkout (the same parser); see ``--help``."""

import sys

from thermospec.cli.make_trace import main, write_trace, zipf_row

__all__ = ["main", "write_trace", "zipf_row"]

if __name__ == "__main__":
    sys.exit(main())
