"""Layer 7, the command lines: the ``thermospec`` command (`commands`) and its subcommands' parsers, which
``scripts/*.py`` also call in a checkout; options parsed into a config, one line on bad input."""
