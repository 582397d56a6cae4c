"""Benchmarks of thermospec: ``python -m benchmarks.run`` (or ``make bench``) prints the figures of the README."""
