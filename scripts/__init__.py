"""Thin command-line entry points: ``python -m scripts.run_m1`` and the sweeps."""
