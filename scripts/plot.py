"""``python -m scripts.plot PATH...``: PNG figures beside the data of run and sweep folders; see ``--help``.

Any run folder (JSONL or Parquet telemetry, ``--gamma``, ``--chains``) and any
sweep folder (grid, seeds, γ): `thermospec.experiments.plots`.
"""

import sys

from thermospec.cli.sweep import plot_main

if __name__ == "__main__":
    sys.exit(plot_main())
