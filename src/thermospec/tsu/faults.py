"""Fault injection: TSUs that report F(ψ) but do something else, to measure what the checks catch.

A trustworthy TSU samples F(ψ) and reports ``log F(ψ)[y]`` with each draw.  The
faults below break that contract in the ways a chip could:

==============  ===========================================================  =====================
kind            what the faulty TSU does                                     SIZE
==============  ===========================================================  =====================
``bias``        the most probable token of F(ψ) is drawn with a relative     relative excess, > -1
                excess SIZE (capped at probability 1), the rest renormalised
``stale``       a fraction SIZE of the draws come from the ψ of another      fraction in [0, 1]
                context (context ``x + 1 mod V``): a stale payload
``tail``        a fraction SIZE of the tail mass ``(V - K) ε`` is dropped     fraction in [0, 1]
                when sampling, the ids renormalised (1 = ε ignored)
``tau``         samples with the temperature ``τ (1 + SIZE)``: τ drift        relative drift, > -1
``misreport``   samples F(ψ) correctly but reports ``log q + SIZE``           offset in nats, != 0
==============  ===========================================================  =====================

The first four *sample* from something else while reporting F(ψ): only
statistics can catch them (`thermospec.analysis.checks`).  ``misreport`` is refused at
its first draw by the host's consistency check (`thermospec.engine.ReportVerifier`).
Every faulty TSU keeps the attribute ``q`` = F(ψ) (what it claims, what the host
computes) and replaces ``cdf`` with the cumulative distribution it really samples,
so the reference path, the fast engine and the fixed-context draws all see the fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Final

import numpy as np
from numpy.typing import NDArray

from thermospec.core.payload import Payload
from thermospec.core.proposal import proposal_distribution
from thermospec.tsu.drafts import ContextDraft, Proposer
from thermospec.tsu.sim import SimTSU

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "FaultError",
    "FaultyProposer",
    "FaultyTSU",
    "biased_distribution",
    "drifted_distribution",
    "dropped_tail_distribution",
    "faulty_tsu",
    "stale_distribution",
]


FAULT_KINDS: Final = ("bias", "stale", "tail", "tau", "misreport")


class FaultError(ValueError):
    """A fault specification that cannot be used; the message names it and the reason."""


@dataclass(frozen=True)
class Fault:
    """One injected fault: its kind (one of `FAULT_KINDS`) and its size."""

    kind: str
    size: float

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise FaultError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {self.kind!r}")
        s = self.size
        if not math.isfinite(s):
            raise FaultError(f"{self.kind}: SIZE must be a finite number, got {s!r}")
        if self.kind in ("stale", "tail") and not 0 <= s <= 1:
            raise FaultError(f"{self.kind}: SIZE is a fraction and must be in [0, 1], got {s!r}")
        if self.kind in ("bias", "tau") and not s > -1:
            raise FaultError(f"{self.kind}: SIZE is a relative change and must be > -1, got {s!r}")
        if self.kind == "misreport" and s == 0:
            raise FaultError("misreport: SIZE is the offset of the reported log q in nats and must be != 0")

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Parse ``KIND:SIZE`` (for example ``bias:0.05``).

        Raises
        ------
        FaultError
            Not of that form, an unknown kind, or a size out of the kind's range.
        """
        kind, sep, size_text = text.partition(":")
        if not sep:
            raise FaultError(f"expected KIND:SIZE (kinds: {', '.join(FAULT_KINDS)}), got {text!r}")
        try:
            size = float(size_text)
        except ValueError:
            raise FaultError(f"{kind}: SIZE must be a number, got {size_text!r}") from None
        return cls(kind.strip().lower(), size)

    def __str__(self) -> str:
        return f"{self.kind}:{self.size:g}"


def biased_distribution(q: NDArray[np.float64], size: float) -> NDArray[np.float64]:
    """The most probable token's probability times ``1 + size`` (capped at 1), the rest renormalised.

    Parameters
    ----------
    q : ndarray of float64, shape (V,)
        The distribution claimed, F(ψ).
    size : float
        Relative excess, > -1.

    Returns
    -------
    ndarray of float64, shape (V,)
        The distribution sampled.  Ties for the most probable token go to the lower id.
    """
    top = int(np.argmax(q))
    q_top = float(q[top])
    new_top = min(q_top * (1.0 + size), 1.0)
    rest = 1.0 - q_top
    out = q * ((1.0 - new_top) / rest) if rest > 0 else np.zeros_like(q)
    out[top] = new_top
    return out


def stale_distribution(q: NDArray[np.float64], q_stale: NDArray[np.float64], size: float) -> NDArray[np.float64]:
    """``(1 - size) q + size q_stale``: a fraction `size` of the draws come from a stale ψ."""
    mixed: NDArray[np.float64] = (1.0 - size) * q + size * q_stale
    return mixed


def dropped_tail_distribution(payload: Payload, size: float) -> NDArray[np.float64]:
    """F(ψ) with a fraction `size` of its tail mass ``(V - K) ε`` dropped and the ids renormalised.

    With ``size = 1`` ε is ignored: the tokens not sent are never drawn.
    """
    q = proposal_distribution(payload)
    tail = np.ones(q.shape[0], dtype=np.bool_)
    tail[payload.ids] = False
    kept_tail = (1.0 - size) * payload.tail_mass
    head_mass = 1.0 - payload.tail_mass
    out = q.copy()
    out[tail] = payload.eps * (1.0 - size)
    out[~tail] = q[~tail] * ((1.0 - kept_tail) / head_mass)
    return out


def drifted_distribution(payload: Payload, size: float) -> NDArray[np.float64]:
    """F of the payload with its temperature ``τ (1 + size)``: a drifting chip temperature."""
    return proposal_distribution(replace(payload, tau=payload.tau * (1.0 + size)))


class FaultyTSU(SimTSU):
    """A TSU that claims F(ψ) but samples another distribution and/or misreports ``log q``.

    Parameters
    ----------
    payload : Payload or bytes
        The ψ it was programmed with; ``q`` stays F(ψ).
    sampling : ndarray of float64, shape (V,), optional
        The distribution it really samples (default: F(ψ)).
    report_offset : float
        Added to every reported ``log q`` (0: honest reports).
    fault : Fault, optional
        The fault this TSU carries, for messages.
    """

    samples_payload: ClassVar[bool] = False

    def __init__(
        self,
        payload: Payload | bytes,
        sampling: NDArray[np.float64] | None = None,
        report_offset: float = 0.0,
        fault: Fault | None = None,
    ) -> None:
        super().__init__(payload)
        self.fault = fault
        self.report_offset = float(report_offset)
        if sampling is not None:
            cdf = np.cumsum(np.asarray(sampling, dtype=np.float64))
            cdf.flags.writeable = False
            self.cdf = cdf
        sampled = np.diff(self.cdf, prepend=0.0)
        sampled.flags.writeable = False
        self.sampling: NDArray[np.float64] = sampled

    def report_log_q(self, tokens: NDArray[np.int64]) -> NDArray[np.float64]:
        """The (possibly wrong) ``log q`` reported with each drawn token."""
        return super().report_log_q(tokens) + self.report_offset


def faulty_tsu(tsu: SimTSU, fault: Fault, stale: SimTSU | None = None) -> FaultyTSU:
    """A faulty copy of a correct TSU.

    Parameters
    ----------
    tsu : SimTSU
        The correct TSU (its payload and F(ψ) are kept as the claim).
    fault : Fault
    stale : SimTSU, optional
        For ``stale``: the TSU of the other context whose ψ leaks in (required).

    Raises
    ------
    FaultError
        ``stale`` without a stale source, or a stale source of another vocabulary size.
    """
    payload, q = tsu.payload, tsu.q
    if fault.kind == "misreport":
        return FaultyTSU(payload, report_offset=fault.size, fault=fault)
    if fault.kind == "bias":
        sampling = biased_distribution(q, fault.size)
    elif fault.kind == "stale":
        if stale is None or stale.q.shape != q.shape:
            raise FaultError("stale: needs the TSU of another context over the same vocabulary")
        sampling = stale_distribution(q, stale.q, fault.size)
    elif fault.kind == "tail":
        sampling = dropped_tail_distribution(payload, fault.size)
    else:
        sampling = drifted_distribution(payload, fault.size)
    return FaultyTSU(payload, sampling=sampling, fault=fault)


class FaultyProposer(Proposer):
    """A proposer whose every context is drafted by a faulty TSU.

    The payload bytes and the host's metrics (topk, overlap, CE gap) are those of
    the correct ψ: the host cannot see the fault, only its statistics.

    Parameters
    ----------
    base : Proposer
        The correct proposer.
    fault : Fault
    vocab_size : int
        V, to pick the stale context ``x + 1 mod V``.
    """

    samples_payload = False

    def __init__(self, base: Proposer, fault: Fault, vocab_size: int) -> None:
        super().__init__(base.row, base.K, base.tau, base.eps, draft_row=base.draft_row, K_of=base.K_of)
        self.base = base
        self.fault = fault
        self.vocab_size = vocab_size
        self._faulty: dict[int, ContextDraft] = {}

    def draft(self, context: int) -> ContextDraft:
        """The (cached) draft of one context, with its faulty TSU."""
        found = self._faulty.get(context)
        if found is None:
            correct = self.base.draft(context)
            stale = self.base.draft((context + 1) % self.vocab_size).tsu if self.fault.kind == "stale" else None
            found = replace(correct, tsu=faulty_tsu(correct.tsu, self.fault, stale))
            self._faulty[context] = found
        return found
