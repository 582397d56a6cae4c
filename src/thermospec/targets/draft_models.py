"""Draft models of a corpus (``--draft-order M``): the rows ψ is crafted from when it is not the target's own.

In a deployment the host crafts ψ for contexts the target has not scored yet, so ψ
comes from a cheaper draft model.  `OrderDraftModel` is the order-M back-off model
of the target's own corpus (Laplace +1, the longest suffix of the last M - 1
characters seen in the corpus followed by a character; M = 1 is the unigram), over
the target's vocabulary.  Its row for a target key is its row after the key's
characters (`row_after`): for an order-N context (M <= N) the last M - 1 of the
context's own characters.  That is exact even when the order-N context backed off
to fewer than M - 1 characters: a suffix the corpus never shows followed by a
character is never seen by the order-M model either, which backs off as far.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from thermospec.targets.corpus import read_characters
from thermospec.targets.order import MAX_ORDER, OrderTarget, order_target

__all__ = ["OrderDraftModel"]


class OrderDraftModel:
    """The order-M back-off character model of a corpus, as a draft model (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The corpus (the target's own).
    order : int
        M, 1 .. `MAX_ORDER`.
    vocabulary : sequence of str
        The target's characters, in its id order: the model's must be the same.

    Raises
    ------
    CorpusError
        As the target's corpus.
    ValueError
        An order out of range, or a vocabulary that is not the corpus' (a different file).
    """

    def __init__(self, path: str | Path, order: int, vocabulary: Sequence[str]) -> None:
        if not 1 <= order <= MAX_ORDER:
            raise ValueError(f"--draft-order: must be an integer in [1, {MAX_ORDER}], got {order}")
        self.order = order
        self._model: OrderTarget | None = None
        self._unigram: NDArray[np.float64] = np.zeros(0)
        if order >= 2:
            self._model = order_target(path, order)
            model_vocabulary = self._model.vocabulary
        else:
            characters = read_characters(path, dense=False)
            model_vocabulary = characters.vocabulary
            counts = np.zeros(characters.V, dtype=np.int64)
            for tokens in characters.token_chunks():
                counts += np.bincount(tokens, minlength=characters.V)
            self._unigram = ((counts + 1.0) / float(counts.sum() + characters.V)).astype(np.float64)  # Laplace +1
        if tuple(model_vocabulary) != tuple(vocabulary):
            raise ValueError("--draft-order: the draft model's characters are not the target's")
        self.V = len(vocabulary)

    def row_after(self, history: Sequence[int]) -> NDArray[np.float64]:
        """The model's next-character row after `history` (token ids, oldest first; >= 1 token)."""
        if self._model is None:
            return self._unigram
        return self._model.row(self._model.context_id(history[-(self.order - 1):]))
