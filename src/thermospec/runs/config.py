"""A run's configuration, its target, and how its seed becomes independent random streams."""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from thermospec.core.payload import EpsSpec
from thermospec.core.streams import Stream, random_stream
from thermospec.core.verifiers import VERIFIERS
from thermospec.engine.trees import MAX_TREE_NODES, tree_nodes
from thermospec.targets.bigram import BigramTarget
from thermospec.targets.bpe import bpe_target, parse_tokenizer
from thermospec.targets.characters import character_target
from thermospec.targets.order import MAX_ORDER, order_target
from thermospec.targets.synthetic import DENSE_VOCAB_MAX, lazy_synthetic_target, synthetic_target
from thermospec.targets.trace import TraceError, load_trace

__all__ = ["MAX_STEPS", "ConfigError", "RunConfig", "load_target", "option_name"]


class ConfigError(ValueError):
    """An option value that cannot be used; the message names the option and the reason."""


def _as_float32(value: float) -> float:
    """The value a float32 payload field would carry (inf where it overflows)."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


MAX_SYNTHETIC_VOCAB = 65_536
"""Largest synthetic vocabulary (issue 4's scale; rows above 4,096 tokens are generated lazily)."""


MAX_SEED = 2**63 - 1
"""Largest seed, the largest signed 64-bit integer: readers with 64-bit integers (Python, jq 1.7, Rust) keep it
exact in summary.json; larger seeds are refused rather than written as 20-digit numbers (JavaScript numbers
are exact only up to 2^53: keep seeds below that for a browser)."""
MAX_DRAFTS = 64
"""Most drafts per step (``--drafts``)."""
MAX_STEPS = 10**12
"""Most steps of a run (``--steps``): about 8 hours at the fastest measured 36 M tokens/s, and about 250 TB of
JSONL records (~250 bytes a step); larger counts are refused rather than left to fill a disk."""
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
"""Smallest normal float32: a smaller τ would reach ψ as a subnormal, rounded to another value."""


@dataclass(frozen=True)
class RunConfig:
    """Options of an M1 run, with the guide's defaults."""

    corpus: str | None = None
    vocab: int = 256
    c: float = 50.0
    K: int = 64
    tau: float = 1.0
    eps: EpsSpec = "auto"
    steps: int = 50_000
    seed: int = 7
    # Beyond M1 (issue 6): left out of `as_dict` at their defaults, so M1 summaries are unchanged.
    gamma: int | None = None
    cost_ratio: float = 0.0
    tokenizer: str | None = None
    tsu: str = "sim"
    drafts: int = 1
    verifier: str = "recursive"
    trace: str | None = None
    order: int = 2

    def __post_init__(self) -> None:
        self._check_types()
        if not 2 <= self.vocab <= MAX_SYNTHETIC_VOCAB:
            raise ConfigError(f"--vocab: must be an integer in [2, {MAX_SYNTHETIC_VOCAB}], got {self.vocab}")
        if not (np.isfinite(self.c) and self.c > 0):
            raise ConfigError(f"--c: must be a finite number > 0, got {self.c}")
        if self.K < 1:
            raise ConfigError(f"--K: must be an integer >= 1, got {self.K}")
        tau32 = _as_float32(self.tau)
        if not (np.isfinite(tau32) and tau32 > 0):
            raise ConfigError(f"--tau: must be a finite number > 0 that float32 (ψ's field) can hold, got {self.tau}")
        if tau32 < FLOAT32_TINY:  # a subnormal: float32 keeps a few bits of it, so ψ would carry another τ
            raise ConfigError(f"--tau: {self.tau} is below float32's smallest normal number {FLOAT32_TINY:.8g} "
                              f"(ψ's field would hold {tau32:.8g})")
        if self.eps != "auto" and not (np.isfinite(_as_float32(self.eps)) and self.eps >= 0):
            raise ConfigError(f"--eps: must be 'auto' or a finite number >= 0 that float32 can hold, got {self.eps}")
        if self.eps != "auto" and self.eps > 0 and _as_float32(self.eps) == 0:
            raise ConfigError(f"--eps: {self.eps} rounds to 0 in ψ's float32 field (use 0 to mean no tail)")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"--steps: must be an integer in [1, {MAX_STEPS:,}], got {self.steps}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed: must be an integer in [0, {MAX_SEED}], got {self.seed}")
        if self.gamma is not None and not 1 <= self.gamma <= 1024:
            raise ConfigError(f"--gamma: must be an integer in 1 .. 1024, got {self.gamma}")
        if not (np.isfinite(self.cost_ratio) and self.cost_ratio >= 0):
            raise ConfigError(f"--cost-ratio: must be a finite number >= 0, got {self.cost_ratio}")
        if not 1 <= self.drafts <= MAX_DRAFTS:
            raise ConfigError(f"--drafts: must be an integer in [1, {MAX_DRAFTS}], got {self.drafts}")
        if self.gamma is not None and self.drafts > 1 and tree_nodes(self.gamma, self.drafts) > MAX_TREE_NODES:
            raise ConfigError(f"--gamma {self.gamma} --drafts {self.drafts}: a token tree of "
                              f"{tree_nodes(self.gamma, self.drafts):,} drafted nodes per target call; at most "
                              f"{MAX_TREE_NODES:,} (N + N^2 + ... + N^γ: the chip drafts every node)")
        if self.verifier not in VERIFIERS:
            raise ConfigError(f"--verifier: must be one of {', '.join(VERIFIERS)}, got {self.verifier!r}")
        if self.tsu not in ("sim", "thrml"):
            raise ConfigError(f"--tsu: must be 'sim' or 'thrml', got {self.tsu!r}")
        self._check_trace_and_order()
        self._check_options_apply()
        if self.tokenizer is not None:
            try:
                parse_tokenizer(self.tokenizer)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            if self.corpus is None:
                raise ConfigError("--tokenizer: needs --corpus (the tokenizer is trained on the corpus)")

    def _check_types(self) -> None:
        """Each option's type, checked in one place: integers, numbers or text (``bool`` is none of them).

        An integer option takes any integer (``numpy.int64`` too) and a number option any real
        number, stored as ``int`` and ``float``: the summary records the same values whether the
        command line or Python gave them.  ``"8"``, ``8.0`` for an integer, ``"1.0"`` for a number
        or ``None`` for a required option are refused.
        """
        for item in fields(self):
            name, value = item.name, getattr(self, item.name)
            kind = _OPTION_TYPES[name]
            if value is None and name in _OPTIONAL:
                continue
            if name == "eps" and isinstance(value, str) and value == "auto":
                continue
            if kind == "text":
                if not isinstance(value, str):
                    raise ConfigError(f"{option_name(name)}: must be text, got {value!r} ({type(value).__name__})")
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral if kind == "integer"
                                                           else numbers.Real):
                wanted = ("an integer" if kind == "integer"
                          else "'auto' or a number" if name == "eps" else "a number")
                raise ConfigError(f"{option_name(name)}: must be {wanted}, got {value!r} ({type(value).__name__})")
            try:
                normal = int(value) if isinstance(value, numbers.Integral) and kind == "integer" else float(value)
            except OverflowError:  # an integer too large for a float64
                raise ConfigError(f"{option_name(name)}: must be a finite number, got {value!r}") from None
            object.__setattr__(self, name, normal)

    def options_set(self) -> list[str]:
        """The options beyond M1 set away from their defaults, as the command line spells them (``--drafts``...)."""
        return [option_name(name) for name, default in _EXTENSION_DEFAULTS.items() if getattr(self, name) != default]

    def _check_options_apply(self) -> None:
        """Options that would be recorded in the summary without changing the run are refused."""
        if (self.corpus is not None or self.trace is not None) and (self.vocab != 256 or self.c != 50.0):
            given = " ".join(o for o, v in (("--vocab", self.vocab != 256), ("--c", self.c != 50.0)) if v)
            source = "--corpus" if self.corpus is not None else "--trace"
            raise ConfigError(f"{given}: set the synthetic target; {source} gives the target (drop {given})")

    def _check_trace_and_order(self) -> None:
        """``--trace`` and ``--order``: their ranges and the combinations that are not implemented."""
        if not 2 <= self.order <= MAX_ORDER:
            raise ConfigError(f"--order: must be an integer in [2, {MAX_ORDER}], got {self.order!r}")
        if self.order > 2 and self.trace is not None:
            raise ConfigError("--trace: the trace is the target and has no character contexts; drop --order")
        if self.order > 2:
            if self.corpus is None:
                raise ConfigError("--order: needs --corpus (contexts are the last N - 1 characters of a text)")
            if self.tokenizer is not None:
                raise ConfigError("--order: contexts of BPE tokens are not implemented (character contexts "
                                  "only); drop --tokenizer or --order")
            if self.drafts > 1 and self.gamma is None:
                raise ConfigError("--drafts: the N-draft engine's next context is the emitted token; on order-N "
                                  "contexts add --gamma G (a token tree of N drafts per level) or drop --drafts")
        if self.trace is None:
            return
        if not self.trace.strip():
            raise ConfigError("--trace: must name a .npy or .npz file, got an empty string")
        for given, option in ((self.corpus is not None, "--corpus"), (self.tokenizer is not None, "--tokenizer"),
                              (self.order > 2, "--order")):
            if given:
                raise ConfigError(f"--trace: the trace is the target; drop {option}")
        if self.drafts > 1 and self.gamma is None:
            raise ConfigError("--drafts: the N-draft engine's next context is the emitted token; on a trace add "
                              "--gamma G (a token tree of N drafts per level) or drop --drafts")

    def as_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values: issue 6's options only when set, and the synthetic
        target's ``vocab`` and ``c`` only when the target is synthetic (a corpus or a trace ignores them)."""
        values = asdict(self)
        for name, default in _EXTENSION_DEFAULTS.items():
            if values[name] == default:
                del values[name]
        if self.corpus is not None or self.trace is not None:
            del values["vocab"], values["c"]
        return values


_EXTENSION_DEFAULTS: dict[str, Any] = {"gamma": None, "cost_ratio": 0.0, "tokenizer": None, "tsu": "sim",
                                       "drafts": 1, "verifier": "recursive", "trace": None, "order": 2}
_OPTION_TYPES = {"corpus": "text", "vocab": "integer", "c": "number", "K": "integer", "tau": "number",
                 "eps": "number", "steps": "integer", "seed": "integer", "gamma": "integer", "cost_ratio": "number",
                 "tokenizer": "text", "tsu": "text", "drafts": "integer", "verifier": "text", "trace": "text",
                 "order": "integer"}
_OPTIONAL = {"corpus", "gamma", "tokenizer", "trace"}


def option_name(field: str) -> str:
    """The command line's spelling of a configuration field: ``cost_ratio`` is ``--cost-ratio``."""
    return "--" + field.replace("_", "-")


def load_target(config: RunConfig) -> BigramTarget:
    """The target a configuration names: a trace, the corpus' (order N), or the synthetic one.

    A trace is position-indexed (`targets.trace.TraceTarget`, no pi): its runs are
    teacher-forced and its summaries say so; it passes here as a `BigramTarget`
    for what every run shares (V, rows, supports, where it came from).

    Raises
    ------
    ConfigError
        A trace that cannot be used (``--trace PATH: reason``, one line).
    CorpusError
        A corpus that cannot be used.
    """
    if config.trace is not None:
        try:
            return load_trace(config.trace)
        except TraceError as exc:
            raise ConfigError(f"--trace {exc}") from None
    if config.corpus is not None and config.order > 2:
        return order_target(config.corpus, config.order)
    if config.corpus is not None and config.tokenizer is not None:
        return bpe_target(config.corpus, parse_tokenizer(config.tokenizer))
    if config.corpus is not None:
        return character_target(config.corpus)
    rng = random_stream(config.seed, Stream.TARGET)
    if config.vocab > DENSE_VOCAB_MAX:  # no dense V x V table: rows on demand (see LazySyntheticTarget)
        return lazy_synthetic_target(config.vocab, config.c, rng)
    return synthetic_target(config.vocab, config.c, rng)


def check_eps(config: RunConfig, V: int) -> None:
    """Check a numeric ε against SPEC's range ``(V - K) * eps < 1`` for this vocabulary."""
    if config.eps == "auto":
        return
    k = min(config.K, V)
    eps32 = float(np.float32(config.eps))
    if not (V - k) * eps32 < 1:
        raise ConfigError(
            f"--eps: (V - K) * eps must be < 1, got ({V} - {k}) * {config.eps} = {(V - k) * eps32:.6g}"
        )
