"""``python -m scripts.record_trace``: ``thermospec record-trace`` in a checkout (the same parser); see ``--help``."""

import sys

from thermospec.cli.record_trace import context_length, main, vocabulary, windows

__all__ = ["context_length", "main", "vocabulary", "windows"]

if __name__ == "__main__":
    sys.exit(main())
