"""The checkout's commands: ``python -m scripts.run_m1`` and the others are two-line entry points into
`thermospec.cli` (installed, the same parsers are the ``thermospec`` command: docs/commands.md), beside the
measurement scripts that reproduce the documentation's tables."""
