"""A run's configuration, its target, and how its seed becomes independent random streams."""

from __future__ import annotations

import numbers
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from thermospec.core.payload import EpsSpec
from thermospec.core.trees import MAX_TREE_NODES, tree_nodes
from thermospec.core.verifiers import PLANS
from thermospec.targets.bpe import parse_tokenizer
from thermospec.targets.order import MAX_ORDER

__all__ = ["CORPUS_HELP", "DEFAULTS", "MAX_STEPS", "OPTIONS", "ConfigError", "Option", "RunConfig", "option_name"]


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
CORPUS_HELP = ("UTF-8 text: char-level bigram counts, +1 Laplace (a leading byte-order mark is dropped; "
               "line ends are kept as they are, so CRLF makes \\r a token)")
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
"""Smallest normal float32: a smaller τ would reach ψ as a subnormal, rounded to another value."""


@dataclass(frozen=True)
class Option:
    """How a run option is declared, once: its type, its range, its help, and where it applies.

    `RunConfig`'s fields carry one each (`option`); the command lines build their flags from them
    (``cli/options.py``), the API's `config` takes their names as keywords, the sweeps offer those
    that apply to them, and the summary records the options beyond M1 only when they are set.
    """

    kind: str
    """``"integer"``, ``"number"`` or ``"text"`` (what `RunConfig` accepts; ``bool`` is none of them)."""
    help: str
    group: str = "beyond"
    """Where the command lines list it: ``"target"``, ``"psi"``, ``"run"`` or ``"beyond"``."""
    extension: bool = False
    """Beyond M1 (issue 6 on): `RunConfig.as_dict` records it only when set, so M1 summaries stay as they were."""
    low: float | None = None
    high: float | None = None
    strict: bool = False
    """A number must be > `low` (else >= `low`)."""
    choices: Collection[str] = ()
    """What the command line accepts: a live collection (`PLANS`: a verifier registered later is one)."""
    metavar: str | None = None
    eps: bool = False
    """The ε spelling: ``auto`` or a number."""
    path: bool = False
    """Text that names a file (a `Path` is taken too)."""
    grid: bool = False
    """Whether a fixed-context grid sweep applies it (the target's options and ε)."""


def option(default: Any, kind: str, help: str, **declared: Any) -> Any:
    """A `RunConfig` field with its `Option` (the one place an option is declared); beyond M1 unless its
    group is the target's, ψ's or the run's (`Option.extension`)."""
    declared.setdefault("extension", declared.get("group", "beyond") == "beyond")
    return field(default=default, metadata={"option": Option(kind, help, **declared)})


@dataclass(frozen=True)
class RunConfig:
    """Options of a run, with the guide's defaults: each field declares its option once (`Option`)."""

    corpus: str | None = option(None, "text", CORPUS_HELP, group="target", metavar="PATH", path=True, grid=True)
    vocab: int = option(256, "integer", "synthetic V, 2 to 65536 (default: 256); above 4096 each row is a lazily "
                        "generated mixture of 256 Dirichlet atoms, not Dirichlet(c/V): README, Performance",
                        group="target", low=2, high=MAX_SYNTHETIC_VOCAB, metavar="V", grid=True)
    c: float = option(50.0, "number", "synthetic Dirichlet concentration, alpha = c/V (default: 50)",
                      group="target", low=0, strict=True, grid=True)
    K: int = option(64, "integer", "top-K ids sent (default: 64; clamped to V)", group="psi", low=1)
    tau: float = option(1.0, "number", "temperature τ > 0 (default: 1.0)", group="psi", low=0, strict=True)
    eps: EpsSpec = option("auto", "number", "per-token tail probability, 'auto' to spread the target's tail mass, "
                          "or a number with (V - K) * eps < 1 (default: auto)", group="psi", eps=True, grid=True)
    steps: int = option(50_000, "integer", "number of emitted tokens (default: 50000)", group="run", low=1)
    seed: int = option(7, "integer", "RNG seed, 0 to 2^63 - 1 (default: 7)", group="run", low=0, high=MAX_SEED)
    # Beyond M1 (issue 6 on): left out of `as_dict` at their defaults, so M1 summaries are unchanged.
    gamma: int | None = option(None, "integer", "γ-token speculative blocks: G drafts per target call, telemetry "
                               "per block in m1_blocks.jsonl (default: M1, one draft and no bonus token)",
                               low=1, metavar="G")
    cost_ratio: float = option(0.0, "number", "TSU draft time / target call time, for the modelled speed-up "
                               "(default: 0)", low=0, metavar="C")
    tokenizer: str | None = option(None, "text", "with --corpus: train a byte-level BPE of N tokens on it; token "
                                   "bigram target", metavar="bpe:N")
    tsu: str = option("sim", "text", "TSU backend: SimTSU, or Extropic's THRML sampler (extra 'thrml') "
                      "(default: sim)", choices=("sim", "thrml"))
    drafts: int = option(1, "integer", "N i.i.d. TSU drafts per target call, verified exactly (default: 1, M1)",
                         low=1, high=MAX_DRAFTS, metavar="N")
    verifier: str = option("recursive", "text", "how N drafts are verified: recursive rejection (SpecInfer), "
                           "SpecTr's k-sequential selection, or the optimal transport verifier (default: recursive)",
                           choices=PLANS)
    trace: str | None = option(None, "text", "recorded next-token log-probabilities, a (T, V) float16/float32 .npy "
                               "or .npz (docs/traces.md; make one with scripts.make_trace or scripts.record_trace): "
                               "step s drafts and corrects at position s mod T, teacher-forced (no x0, no π); e.g. "
                               "--trace zipf.npy --K 64", group="target", metavar="PATH", path=True,
                               extension=True)
    order: int = option(2, "integer", f"with --corpus: the context is the last N - 1 characters (BPE tokens with "
                        f"--tokenizer), backed off to the longest suffix the corpus has seen; 2 to {MAX_ORDER} "
                        "(default: 2, M1's bigram); e.g. --corpus data/tinyshakespeare.txt --order 5",
                        group="target", low=2, high=MAX_ORDER, metavar="N", extension=True)
    # Issue 17: where the acceptance goes (a draft source) and a ψ byte budget.
    draft_order: int | None = option(None, "integer", "with --corpus: craft ψ from the order-M back-off model of "
                                     "the same corpus (Laplace +1; M = 1 is the unigram) and verify against the "
                                     "target's rows; 1 <= M <= the target's order (2 for M1's bigram); the summary "
                                     "splits the loss (docs/draft-models.md)", group="target", low=1,
                                     high=MAX_ORDER, metavar="M", extension=True)
    draft_trace: str | None = option(None, "text", "with --trace: craft ψ at position t from this draft model's "
                                     "trace, row t (same V, positions and tokens; scripts.record_trace "
                                     "--draft-model writes one)", group="target", metavar="PATH", path=True,
                                     extension=True)
    psi_budget: float | None = option(None, "number", "mean ψ bytes: K per context (at most --K) chosen to "
                                      "maximise the weighted mean one-draft overlap under this mean size "
                                      "(docs/draft-models.md)", group="psi", low=0, strict=True, metavar="BYTES",
                                      extension=True)

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
        if self.verifier not in PLANS:  # the registry itself: a verifier registered after import is one
            raise ConfigError(f"--verifier: must be one of {', '.join(PLANS)}, got {self.verifier!r}")
        if self.tsu not in ("sim", "thrml"):
            raise ConfigError(f"--tsu: must be 'sim' or 'thrml', got {self.tsu!r}")
        self._check_trace_and_order()
        self._check_draft_source()
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
        """``--trace`` and ``--order``: their ranges and what they need."""
        if not 2 <= self.order <= MAX_ORDER:
            raise ConfigError(f"--order: must be an integer in [2, {MAX_ORDER}], got {self.order!r}")
        if self.order > 2 and self.trace is not None:
            raise ConfigError("--trace: the trace is the target and has no character contexts; drop --order")
        if self.order > 2 and self.corpus is None:
            raise ConfigError("--order: needs --corpus (contexts are the last N - 1 characters of a text)")
        if self.trace is None:
            return
        if not self.trace.strip():
            raise ConfigError("--trace: must name a .npy or .npz file, got an empty string")
        for given, option in ((self.corpus is not None, "--corpus"), (self.tokenizer is not None, "--tokenizer"),
                              (self.order > 2, "--order")):
            if given:
                raise ConfigError(f"--trace: the trace is the target; drop {option}")

    def _check_draft_source(self) -> None:
        """``--draft-order``, ``--draft-trace`` and ``--psi-budget``: their ranges and what they need."""
        if self.draft_order is not None:
            if self.corpus is None:
                raise ConfigError("--draft-order: needs --corpus (the draft model is an order-M model of its text)")
            if self.tokenizer is not None:
                raise ConfigError("--draft-order: order-M draft models are of a corpus' characters, and --tokenizer "
                                  "makes the target's tokens BPE tokens; drop one")
            if not 1 <= self.draft_order <= self.order:
                raise ConfigError(f"--draft-order: must be an integer in [1, {self.order}] (the target's order: a "
                                  f"larger M needs more history than the target's key), got {self.draft_order}")
        if self.draft_trace is not None:
            if not self.draft_trace.strip():
                raise ConfigError("--draft-trace: must name a .npy or .npz file, got an empty string")
            if self.trace is None:
                raise ConfigError("--draft-trace: needs --trace (the draft trace's row t drafts the target "
                                  "trace's position t)")
        if self.psi_budget is not None and not (np.isfinite(self.psi_budget) and self.psi_budget > 0):
            raise ConfigError(f"--psi-budget: must be a finite number of bytes > 0, got {self.psi_budget}")

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


OPTIONS: dict[str, Option] = {item.name: item.metadata["option"] for item in fields(RunConfig)}
"""Every run option by its field name, as `RunConfig` declares it."""
DEFAULTS: dict[str, Any] = {item.name: item.default for item in fields(RunConfig)}
"""Each option's default."""
_EXTENSION_DEFAULTS = {name: DEFAULTS[name] for name, declared in OPTIONS.items() if declared.extension}
_OPTION_TYPES = {name: declared.kind for name, declared in OPTIONS.items()}
_OPTIONAL = {name for name, default in DEFAULTS.items() if default is None}


def option_name(field: str) -> str:
    """The command line's spelling of a configuration field: ``cost_ratio`` is ``--cost-ratio``."""
    return "--" + field.replace("_", "-")


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
