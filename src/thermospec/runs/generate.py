"""Generate text from a Hugging Face model pair with the TSU in the loop: ``thermospec.generate``.

Each round (`thermospec.runs.decode`) crafts ψ from the draft model's row, lets
the TSU draft a token, a γ-block or a token tree, and verifies it with one target
forward pass; the emitted tokens are exactly the target's law.  The text is
streamed UTF-8-safe (a token that ends inside a multi-byte character is held
back until the character is whole); ``runs/<timestamp>/rounds.jsonl`` gets one
whole record per round and ``summary.json`` the totals, written atomically, and
marked ``interrupted`` after Ctrl-C or SIGTERM (the round in hand is dropped).

On CPU the same seed gives the same tokens (the rounds' uniforms come from named
streams of the seed, and PyTorch's CPU kernels are deterministic for a fixed
thread count).  On CUDA the uniforms are the same but the logits may differ in
their last bits between runs and GPUs, so a token whose uniform falls within
that much of a boundary can differ; every run is still exact.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thermospec import __version__
from thermospec.core.payload import EpsSpec
from thermospec.core.trees import MAX_TREE_NODES, tree_nodes
from thermospec.core.verifiers import PLANS
from thermospec.runs.config import ConfigError
from thermospec.runs.decode import Round, RoundSettings, decode_round, round_levels
from thermospec.runs.interrupts import ChunkAbandoned, interruption_guard, signal_name
from thermospec.runs.settings import check_runs_dir, open_run_dir
from thermospec.runs.storage import SUMMARY_FILE, RecordFile, write_json_atomic
from thermospec.targets.hf_models import (
    MODEL_DTYPES,
    CausalLM,
    ModelError,
    check_pair,
    context_length,
    libraries,
    load_model,
    shared_vocabulary,
)

__all__ = ["ROUNDS_FILE", "GenerateResult", "Pair", "TextStream", "check_generate_options", "generate", "load_pair"]

ROUNDS_FILE = "rounds.jsonl"


@dataclass
class Pair:
    """A loaded target (and draft) model, their shared tokenizer, vocabulary size and context length."""

    target: Any
    draft: Any | None
    tokenizer: Any
    V: int
    context: int | None
    names: tuple[str, str | None]


@dataclass
class GenerateResult:
    """What `generate` produced.

    Attributes
    ----------
    new_token_ids : list of int
        The generated ids, the end-of-sequence token included when it stopped the text.
    text : str
        Their decoding (special tokens skipped).
    prompt_ids : list of int
        The prompt's ids.
    summary : dict
        ``summary.json``'s document.
    run_dir : Path or None
        The run's folder (None when `runs_dir` was None).
    interrupted : int or None
        The signal that stopped the run, or None.
    """

    new_token_ids: list[int]
    text: str
    prompt_ids: list[int]
    summary: dict[str, Any]
    run_dir: Path | None = None
    interrupted: int | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list, repr=False)


class TextStream:
    """Decodes the ids generated so far and passes on only whole characters (no broken multi-byte ones)."""

    def __init__(self, tokenizer: Any, write: Callable[[str], Any] | None) -> None:
        self.tokenizer, self.write, self.shown = tokenizer, write, 0

    def text(self, ids: list[int]) -> str:
        """The decoding of `ids`, special tokens skipped."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def update(self, ids: list[int], final: bool = False) -> None:
        """Write what is new in the decoding of `ids`, holding back a trailing incomplete character."""
        text = self.text(ids)
        whole = len(text) if final else len(text.rstrip("\ufffd"))
        if self.write is not None and whole > self.shown:
            self.write(text[self.shown:whole])
        self.shown = max(self.shown, whole)


def load_pair(model: str, draft_model: str | None, *, device: str = "cpu", dtype: str = "float32",
              download: bool = False, probe: str = "") -> Pair:
    """Load the target and the draft (safely: `thermospec.targets.hf_models.load_model`), checked to agree."""
    if dtype not in MODEL_DTYPES:
        raise ModelError(f"--dtype: one of {', '.join(MODEL_DTYPES)}, got {dtype}")
    tokenizer, target = load_model(model, "--model", device=device, dtype=dtype, download=download)
    draft = None
    if draft_model is not None:
        draft_tokenizer, draft = load_model(draft_model, "--draft-model", device=device, dtype=dtype,
                                            download=download)
        check_pair(tokenizer, draft_tokenizer, draft_model, probe)
    models = [m for m in (target, draft) if m is not None]
    contexts = [c for c in (context_length(m, tokenizer) for m in models) if c is not None]
    return Pair(target, draft, tokenizer, shared_vocabulary(tokenizer, *models), min(contexts) if contexts else None,
                (model, draft_model))


def check_generate_options(max_new_tokens: int, K: int, gamma: int | None, drafts: int, verifier: str,
                           has_draft: bool, runs_dir: str | Path | None) -> None:
    """One `ModelError` line for an option that is wrong whatever the models are: checked before loading them.

    Loading a pair takes seconds (about 10 for GPT-2 sized models); what needs the models (the
    vocabulary, the context length, the prompt's tokens) is checked after, by `generate`.

    Parameters
    ----------
    has_draft : bool
        Whether a draft model gives ψ (without one, γ ≤ 1).
    runs_dir : str, Path or None
        Where the run's folder will go (None: nothing is written).
    """
    if max_new_tokens < 1:
        raise ModelError(f"--max-new-tokens: must be >= 1, got {max_new_tokens}")
    if K < 1:
        raise ModelError(f"--K: must be >= 1, got {K}")
    if gamma is not None and gamma < 1:
        raise ModelError(f"--gamma: must be >= 1, got {gamma}")
    if not has_draft and (gamma or 1) > 1:
        raise ModelError(f"--gamma {gamma}: without --draft-model ψ comes from the target's own row, known only "
                         "one token ahead, so only --gamma 1 is possible")
    if drafts < 1:
        raise ModelError(f"--drafts: must be >= 1, got {drafts}")
    nodes = tree_nodes(gamma or 1, drafts)
    if nodes > MAX_TREE_NODES:
        raise ModelError(f"--gamma {gamma} --drafts {drafts}: a tree of {nodes:,} drafted nodes per round; at most "
                         f"{MAX_TREE_NODES:,} (N + N^2 + ... + N^γ)")
    if verifier not in PLANS:
        raise ModelError(f"--verifier: one of {', '.join(PLANS)}, got {verifier}")
    if runs_dir is not None:
        try:
            check_runs_dir(runs_dir)
        except ConfigError as exc:
            raise ModelError(str(exc)) from None


def _check_pair(pair: Pair, prompt_ids: list[int], max_new_tokens: int, K: int, eps: EpsSpec = "auto") -> None:
    """One `ModelError` line for options that cannot apply to this pair and prompt."""
    if eps != "auto" and not (pair.V - min(K, pair.V)) * float(np.float32(eps)) < 1:
        raise ModelError(f"--eps: (V - K) * eps must be < 1, got ({pair.V} - {min(K, pair.V)}) * {eps} = "
                         f"{(pair.V - min(K, pair.V)) * float(np.float32(eps)):.6g} (V: the models' vocabulary)")
    if not prompt_ids:
        raise ModelError("--prompt: empty (the prompt gives no tokens)")
    if pair.context is not None and len(prompt_ids) + max_new_tokens > pair.context:
        raise ModelError(f"--max-new-tokens {max_new_tokens}: the prompt's {len(prompt_ids)} tokens plus "
                         f"{max_new_tokens} new ones exceed the model's context length {pair.context}")
    if not 1 <= K <= pair.V:
        raise ModelError(f"--K: must be in 1 .. {pair.V} (the vocabulary), got {K}")


def _open_run_dir(runs_dir: str | Path | None) -> Path | None:
    """The run's fresh folder (None: write nothing); one that cannot be made is a `ModelError` line."""
    if runs_dir is None:
        return None
    try:
        return open_run_dir(runs_dir)
    except ConfigError as exc:
        raise ModelError(str(exc)) from None


def _versions() -> dict[str, str]:
    torch, transformers = libraries()
    return {"thermospec": __version__, "torch": str(torch.__version__), "transformers": str(transformers.__version__),
            "numpy": np.__version__, "python": platform.python_version()}


def _summary(rounds: list[Round], new_ids: list[int], seconds: dict[str, float], stopped_by: str,
             interrupted: int | None) -> dict[str, Any]:
    tokens = len(new_ids)
    calls = sum(r.target_calls for r in rounds)
    verified = sum(len(r.overlap) for r in rounds)
    return {
        "new_tokens": tokens, "rounds": len(rounds), "target_calls": calls,
        "draft_calls": sum(r.draft_calls for r in rounds),
        "tokens_per_target_call": tokens / calls if calls else 0.0,
        "tsu_draws": sum(r.tsu_draws for r in rounds),
        "tsu_draws_per_token": sum(r.tsu_draws for r in rounds) / tokens if tokens else 0.0,
        "psi_bytes": sum(r.psi_bytes for r in rounds),
        "psi_bytes_per_token": sum(r.psi_bytes for r in rounds) / tokens if tokens else 0.0,
        "verified_positions": verified,
        "acceptance": sum(r.accepted for r in rounds) / verified if verified else 0.0,
        "expected_acceptance": sum(sum(r.expected) for r in rounds) / verified if verified else 0.0,
        "mean_overlap": sum(sum(r.overlap) for r in rounds) / verified if verified else 0.0,
        "mean_draft_overlap": sum(sum(r.draft_overlap) for r in rounds) / verified if verified else 0.0,
        "seconds": {key: round(value, 6) for key, value in seconds.items()},
        "stopped_by": stopped_by, "interrupted": interrupted is not None,
        "interrupted_by": signal_name(interrupted) if interrupted is not None else None,
    }


def generate(model: str | Pair, draft_model: str | None = None, prompt: str = "", max_new_tokens: int = 64,
             K: int = 16, tau: float = 1.0, eps: EpsSpec = "auto", gamma: int | None = None, drafts: int = 1,
             verifier: str = "recursive", seed: int = 0, device: str = "cpu", dtype: str = "float32",
             runs_dir: str | Path | None = "runs", download: bool = False,
             stream: Callable[[str], Any] | None = None) -> GenerateResult:
    """Decode `prompt` with the target `model`, ψ from `draft_model`, the TSU drafting (module docstring).

    Parameters
    ----------
    model : str or Pair
        The target: a ``save_pretrained`` folder or a Hub name in the local cache; or a `Pair` from `load_pair`.
    draft_model : str or None
        ψ's source (sharing the target's tokenizer); None: the target's own row, and γ ≤ 1.
    prompt : str
        The text to continue (at least one token).
    max_new_tokens, K, tau, eps, gamma, drafts, verifier, seed
        As ``python -m scripts.generate``: γ None is M1's step (no bonus token); N drafts per node.
    device, dtype, download
        Where and in what precision the models run; `download` lets transformers fetch a missing Hub model.
    runs_dir : str, Path or None
        ``runs_dir/<timestamp>/`` gets ``rounds.jsonl`` and ``summary.json``; None writes nothing.
    stream : callable or None
        Receives the text as it is generated, whole characters only.

    Raises
    ------
    ModelError
        One line: a missing model, a non-causal one, disagreeing tokenizers, an empty or too long prompt,
        an option out of range.
    """
    started = time.perf_counter()
    has_draft = model.draft is not None if isinstance(model, Pair) else draft_model is not None
    check_generate_options(max_new_tokens, K, gamma, drafts, verifier, has_draft, runs_dir)
    pair = model if isinstance(model, Pair) else load_pair(model, draft_model, device=device, dtype=dtype,
                                                           download=download, probe=prompt)
    tokenizer = pair.tokenizer
    prompt_ids = [int(i) for i in tokenizer(prompt)["input_ids"]] if prompt else []
    _check_pair(pair, prompt_ids, max_new_tokens, K, eps)
    settings = RoundSettings(K, tau, eps, gamma, drafts, verifier, seed)
    target = CausalLM(pair.target, pair.V)
    draft = CausalLM(pair.draft, pair.V) if pair.draft is not None else None
    eos = tokenizer.eos_token_id
    run_dir = _open_run_dir(runs_dir)
    records = RecordFile(run_dir / ROUNDS_FILE) if run_dir is not None else None
    text = TextStream(tokenizer, stream)
    committed, new_ids, rounds = list(prompt_ids), list[int](), list[Round]()
    stopped_by, interrupted, tsu, closed = "max_new_tokens", None, 0.0, False
    try:
        with interruption_guard() as stop:
            while len(new_ids) < max_new_tokens:
                levels = round_levels(settings, len(committed), pair.context, max_new_tokens - len(new_ids))
                try:
                    with stop.cutting():
                        done = decode_round(len(rounds), committed, target, draft, settings, levels)
                except ChunkAbandoned:
                    break
                emitted = done.emitted[: max_new_tokens - len(new_ids)]
                if eos is not None and eos in emitted:
                    emitted, stopped_by = emitted[: emitted.index(eos) + 1], "eos"
                done.emitted = emitted
                rounds.append(done)
                tsu += done.tsu_seconds
                if records is not None:
                    records.write(json.dumps(done.record(), separators=(",", ":")) + "\n")
                committed += emitted
                new_ids += emitted
                try:
                    text.update(new_ids)
                except BrokenPipeError:  # the reader of the text went away (piped into head): stop, keep the run
                    stopped_by, closed = "output closed", True
                if stopped_by != "max_new_tokens" or stop.requested:
                    break
            interrupted = stop.signum
    finally:
        if records is not None:
            records.close()
    if not closed:
        try:
            text.update(new_ids, final=True)
        except BrokenPipeError:
            stopped_by, closed = "output closed", True
    total = time.perf_counter() - started
    seconds = {"total": total, "target": target.seconds, "draft": draft.seconds if draft else 0.0, "tsu": tsu}
    seconds["host"] = total - seconds["target"] - seconds["draft"] - tsu
    summary = {
        "command": "generate", "model": pair.names[0], "draft_model": pair.names[1], "prompt_tokens": len(prompt_ids),
        "max_new_tokens": max_new_tokens, "K": K, "tau": tau, "eps": eps, "gamma": gamma, "drafts": drafts,
        "verifier": verifier if drafts > 1 else None, "seed": seed, "device": device, "dtype": dtype, "V": pair.V,
        **_summary(rounds, new_ids, seconds, "interrupted" if interrupted is not None else stopped_by, interrupted),
        "versions": _versions(),
    }
    if run_dir is not None:
        write_json_atomic(run_dir / SUMMARY_FILE, summary)
    if closed:  # the summary says "output closed"; the command exits as a shell tool on a closed pipe does
        raise BrokenPipeError("the generated text's reader closed its end")
    return GenerateResult(new_ids, text.text(new_ids), prompt_ids, summary, run_dir, interrupted,
                          [r.record() for r in rounds])
