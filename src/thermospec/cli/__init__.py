"""Layer 7, the command lines (``scripts/*.py`` call these): options parsed into a config, one line on bad input."""
