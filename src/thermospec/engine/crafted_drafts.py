"""N drafts on a move table's states: every state's ψ crafted at once, each state's verifier built when met.

Crafting ψ one context at a time (`Proposer.draft`: a few dozen NumPy calls, ~1 ms)
costs more than the rest of an order-N ``--drafts N`` run.  `craft_drafts` crafts
every state of a `ContextMoves` in blocks on threads (`state_drafts.craft_blocks`: the
bytes' F(ψ) and draft CDF, bit for bit the per-context drafts', checked on state 0
against the proposer's own draft) and keeps F(ψ), the draft CDF and the per-state
metrics (`CraftedDrafts`).
A state's verifier plan is built from its row and that F(ψ) when the chain first
meets it (`CraftedDrafts.tables`, the stepper's table source): the plan needs only
``(p, q)``, so it is the plan the per-context path builds.  The records and the
summary read the crafted metrics and each met state's verifier acceptance
(`CraftedDrafts.record`), not drafts crafted again.

It applies when the proposer crafts ψ from the target's own rows with one K
(`Proposer.psi_spec`), its TSU is the simulator (draws from F(ψ), reports ``log F(ψ)``),
the run visits a good share of the states (`worth_crafting`), and F(ψ) and the draft
CDF of every state fit in `CRAFTED_BYTES`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from thermospec.core.verifiers import VerifierTables, make_plan, plan_type
from thermospec.engine.draft_tables import DraftTableCache
from thermospec.engine.state_drafts import PsiSpec, StateMetrics, craft_blocks, worth_crafting
from thermospec.targets.order import ContextMoves
from thermospec.tsu.drafts import CraftedRecord, DraftSource
from thermospec.tsu.row_drafts import RowDrafts

__all__ = ["CRAFTED_BYTES", "STATES_PER_LOAD", "CraftedDrafts", "craft_drafts", "first_met"]

CRAFTED_BYTES = 512 * 1024 * 1024
"""Memory bound of every state's F(ψ) and draft CDF (two float64 arrays of states x V)."""

STATES_PER_LOAD = 512
"""States whose recursive tables are built at once, the block of a state met (a state's tables cost ~10 times
less in a block than alone; the states are numbered by falling corpus frequency, so a run meets most of the
first blocks' states and few of the last ones')."""


class CraftedDrafts:
    """Every state's crafted draft (F(ψ), its CDF, its metrics) and, once met, its verifier's acceptance.

    Parameters
    ----------
    moves : ContextMoves
    q, draft_cdf : ndarray of float64, shape (states, V)
    metrics : StateMetrics
    verifier : str
    n : int
        Drafts per step.
    """

    def __init__(self, moves: ContextMoves, q: NDArray[np.float64], draft_cdf: NDArray[np.float64],
                 metrics: StateMetrics, verifier: str, n: int) -> None:
        self.moves, self.q, self.draft_cdf, self.metrics = moves, q, draft_cdf, metrics
        self.verifier, self.n = verifier, n
        self.acceptance = np.full(moves.states, np.nan, dtype=np.float64)
        """The verifier's exact acceptance of each state whose plan was built (NaN before)."""

    def tables(self, state: int) -> tuple[NDArray[np.float64], VerifierTables]:
        """A state's draft CDF and verifier tables (`engine.draft_tables.DraftTableSource`), its plan built from
        its row and F(ψ) as `engine.drafts.plan_source` builds it; keeps the plan's acceptance."""
        plan = make_plan(self.verifier, self.moves.rows(np.array([state], dtype=np.int64))[0], self.q[state], self.n)
        self.acceptance[state] = plan.acceptance
        return self.draft_cdf[state], plan.tables()

    def load_blocks(self, cache: DraftTableCache) -> bool:
        """Have `cache` build the tables of `STATES_PER_LOAD` states at once (`VerifierPlan.rows`), the block of
        each state met first, when the verifier builds tables by rows (``recursive``) and `cache` has a slot per
        state; whether it will (else each state's plan is built when met)."""
        return (plan_type(self.verifier).row_tables and cache.keys == self.moves.states
                and cache.load_blocks(self.row_tables, STATES_PER_LOAD))

    def row_tables(self, states: NDArray[np.int64]
                   ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Draft CDFs, ratio levels and final CDFs of `states` (`draft_tables.RowTablesSource`); keeps their
        acceptance."""
        built = plan_type(self.verifier).rows(self.moves.rows(states), self.q[states], self.n)
        self.acceptance[states] = built.acceptance
        return self.draft_cdf[states], built.ratios, built.final_cdf

    def record(self, state: int) -> CraftedRecord:
        """What a state's records say of its draft: the crafted metrics, the overlap being the verifier's
        acceptance (the state's plan must have been built)."""
        m = self.metrics
        return CraftedRecord(K=m.K, tau=m.tau, eps_used=float(m.eps[state]), psi_bytes=m.psi_bytes,
                             topk_mass=float(m.topk_mass[state]), overlap_mass=float(self.acceptance[state]),
                             ce_gap_nats=float(m.ce_gap_nats[state]))


def first_met(states: NDArray[np.int64]) -> NDArray[np.int64]:
    """The distinct `states` in the order they first appear."""
    _, first = np.unique(states, return_index=True)
    ordered: NDArray[np.int64] = states[np.sort(first)]
    return ordered


def craft_drafts(moves: ContextMoves, psi: PsiSpec, drafts: DraftSource, verifier: str, n: int,
                 steps: int) -> CraftedDrafts | None:
    """Every state's draft crafted at once, or None when that does not apply (module docstring): another TSU, rows
    `draft_rows` leaves to the per-row path, a state 0 that is not the proposer's own draft, too few steps for
    the states, or too many states for `CRAFTED_BYTES`."""
    V = moves.target.V
    if not worth_crafting(moves, steps) or 16 * moves.states * V > CRAFTED_BYTES:
        return None
    q = np.empty((moves.states, V), dtype=np.float64)
    cdf = np.empty((moves.states, V), dtype=np.float64)

    def load(keys: NDArray[np.int64], rows: NDArray[np.float64], crafted: RowDrafts) -> None:
        q[keys[0] : keys[-1] + 1], cdf[keys[0] : keys[-1] + 1] = crafted.q, crafted.draft_cdf

    metrics = craft_blocks(moves, psi, drafts, load)
    return None if metrics is None else CraftedDrafts(moves, q, cdf, metrics, verifier, n)
