"""Help examples spelt for the program that shows them: ``python -m scripts.NAME`` in a checkout, else `prog`."""

from __future__ import annotations

import re

__all__ = ["examples_for"]


def examples_for(text: str, script: str, prog: str) -> str:
    """`text` with ``python -m scripts.<script>`` written as `prog` when `prog` is not the script's own name.

    ``thermospec run --help`` then shows ``thermospec run --K 8``, which an installed package can
    run, where ``python -m scripts.run_m1 run --help`` keeps its checkout spelling.
    """
    if prog == script:
        return text
    return re.sub(rf"python -m scripts\.{re.escape(script)}\b", prog, text)
