"""Context sources: which key a step drafts and verifies in, and which key follows an emitted token.

A run is a walk over *keys*.  The key of a step names the target row ``p`` it is
verified against and the ψ its draft is crafted from; after a token is emitted
the source says which key comes next.  Every verifier that drafts ahead (γ-token
blocks) asks the same question of a *drafted* token, so one protocol serves the
chain and the blocks alike:

=================  ============================  ==================================  ==================
source             key                           next key after token y              start
=================  ============================  ==================================  ==================
bigram / BPE       the previous token            y                                   ``x0 ~ pi`` (one uniform)
order N            the back-off context's id     ``next_context(key, y)``            ``x0 ~ pi``, its context
trace              the position t                ``t + 1`` (teacher-forced, mod T)   position 0 (no uniform)
=================  ============================  ==================================  ==================

On a trace the rows are teacher-forced: the row of position t + 1 does not
condition on the token emitted at t, so a block's later drafts are verified
against the recorded rows, whatever was drafted (the estimate offline acceptance
studies use).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from thermospec.engine.chain import start_token
from thermospec.targets.bigram import RowSource
from thermospec.targets.order import ContextMoves, OrderTarget
from thermospec.targets.trace import PositionTarget

__all__ = ["BigramSource", "ChainLaw", "ChainRows", "ContextSource", "OrderSource", "PositionSource",
           "memoised_advance"]


class ContextSource(Protocol):
    """The context-source axis of a run (see the module docstring)."""

    @property
    def V(self) -> int:
        """Tokens."""
        ...

    @property
    def keys_are_tokens(self) -> bool:
        """Whether a key is the previous token (then ``pi`` is the chain's law and the N·π χ² applies)."""
        ...

    @property
    def token_free(self) -> bool:
        """Whether the next key does not depend on the token (teacher-forced positions)."""
        ...

    @property
    def keys_are_text(self) -> bool:
        """Whether `key_json` writes a key as text (an order-N context), not as an integer."""
        ...

    def start(self, rng: np.random.Generator) -> int:
        """The first key, drawn from `rng` where the source starts at random."""
        ...

    def advance(self, key: int, token: int) -> int:
        """The key after `token` is emitted (or drafted) in `key`."""
        ...

    def row(self, key: int) -> NDArray[np.float64]:
        """The target row ``p(. | key)``."""
        ...

    def key_json(self, key: int) -> str:
        """The key as a JSON value for telemetry (a token id, a context's text, a position)."""
        ...

    def moves(self) -> ContextMoves | None:
        """The keys' move table when the source has one (order N: its states, each state's next state
        after every token, and each state's key), else None (the keys are tokens, or met on demand)."""
        ...

    def move_state(self, key: int) -> int:
        """The state of `moves()` that is `key` (-1 if none, or no move table)."""
        ...

    @property
    def positions(self) -> int:
        """How many keys a token-free source cycles through (a trace's positions: key t moves to t + 1 mod
        this); 0 for a source whose moves depend on the token."""
        ...


class ChainLaw(Protocol):
    """What a bigram chain's source reads of its target: V, the rows and the start law pi."""

    @property
    def V(self) -> int: ...

    @property
    def pi(self) -> NDArray[np.float64]: ...

    def row(self, x: int) -> NDArray[np.float64]: ...


@dataclass(frozen=True)
class ChainRows:
    """A bigram chain given by its rows and start law alone (a `ChainLaw`, e.g. for `BigramSource`)."""

    rows: RowSource
    pi: NDArray[np.float64]

    @property
    def V(self) -> int:
        return int(self.pi.shape[0])

    def row(self, x: int) -> NDArray[np.float64]:
        return self.rows(x)


class BigramSource:
    """Bigram chains (synthetic, corpus characters, BPE tokens): the key is the previous token."""

    keys_are_tokens = True
    token_free = False
    positions = 0
    keys_are_text = False

    def __init__(self, target: ChainLaw) -> None:
        self.target = target

    @property
    def V(self) -> int:
        return self.target.V

    def start(self, rng: np.random.Generator) -> int:
        return start_token(self.target.pi, rng)

    def advance(self, key: int, token: int) -> int:
        return token

    def row(self, key: int) -> NDArray[np.float64]:
        return self.target.row(key)

    def key_json(self, key: int) -> str:
        return str(key)

    def moves(self) -> ContextMoves | None:
        return None

    def move_state(self, key: int) -> int:
        return -1


class OrderSource:
    """Order-N contexts of a corpus: the key is the id of the longest seen suffix of the last N - 1 tokens."""

    keys_are_tokens = False
    token_free = False
    keys_are_text = True
    positions = 0

    def __init__(self, target: OrderTarget) -> None:
        self.target = target
        self._text: dict[int, str] = {}

    @property
    def V(self) -> int:
        return self.target.V

    def start(self, rng: np.random.Generator) -> int:
        return self.target.context_id([start_token(self.target.pi, rng)])

    def advance(self, key: int, token: int) -> int:
        return self.target.next_context(key, token)

    def row(self, key: int) -> NDArray[np.float64]:
        return self.target.row(key)

    def key_json(self, key: int) -> str:
        text = self._text.get(key)
        if text is None:
            text = self._text[key] = json.dumps(self.target.context_text(key))
        return text

    def moves(self) -> ContextMoves | None:
        return self.target.moves()

    def move_state(self, key: int) -> int:
        moves = self.target.moves()
        if moves is None:
            return -1
        state = int(moves.states_of(np.array([key], dtype=np.int64))[0])
        if state >= 0:
            return state
        # a context the target interned itself (`OrderTarget.next_context`): walked to from its tokens, the
        # one-token context first, then the longest seen suffix after each token
        tokens = self.target.context_tokens(key)
        state = tokens[0]
        for token in tokens[1:]:
            state = int(moves.next[state * self.V + token])
        return state if 0 <= state < moves.states and moves.context(state) == key else -1


class PositionSource:
    """The positions of a trace, teacher-forced: the key is the position; the next one is t + 1 (mod T)."""

    keys_are_tokens = False
    token_free = True
    keys_are_text = False

    def __init__(self, target: PositionTarget) -> None:
        self.target = target

    @property
    def V(self) -> int:
        return self.target.V

    def start(self, rng: np.random.Generator) -> int:
        return 0

    def advance(self, key: int, token: int) -> int:
        return (key + 1) % self.target.positions

    def row(self, key: int) -> NDArray[np.float64]:
        return self.target.row(key)

    def key_json(self, key: int) -> str:
        return str(key)

    def moves(self) -> ContextMoves | None:
        return None

    def move_state(self, key: int) -> int:
        return -1

    @property
    def positions(self) -> int:
        return self.target.positions


def memoised_advance(source: ContextSource, max_entries: int = 1 << 21) -> Callable[[int, int], int]:
    """`source.advance`, remembered for up to `max_entries` (key, token) pairs (cleared beyond); a source whose
    next key is the token or the next position (O(1), nothing to remember) advances as it is."""
    if source.keys_are_tokens or source.token_free:
        return source.advance
    moves: dict[tuple[int, int], int] = {}

    def advance(key: int, token: int) -> int:
        found = moves.get((key, token))
        if found is None:
            if len(moves) >= max_entries:
                moves.clear()
            found = moves[(key, token)] = source.advance(key, token)
        return found

    return advance
