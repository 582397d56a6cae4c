"""The shape of a token tree (SPEC §8): γ levels, N children per node, every node drafted before the target call."""

from __future__ import annotations

__all__ = ["MAX_TREE_NODES", "tree_nodes"]

MAX_TREE_NODES = 4096
"""Most drafted nodes in one block's tree (``N + N² + … + N^γ``): the chip drafts all of them per target call."""


def tree_nodes(gamma: int, n: int) -> int:
    """Drafted nodes of a full tree: ``N + N² + … + N^γ``.

    Examples
    --------
    >>> tree_nodes(3, 2)
    14
    """
    return sum(n**d for d in range(1, gamma + 1))
