"""Baselines for ``generate --compare``: plain sampling and `transformers`' assisted generation.

Both run on the same prompt and seed as thermospec's decoding (`torch.manual_seed(seed)` before each),
sample from the target's full law (``top_k=0, top_p=1, temperature=1``) and stop at the same number of
new tokens or the end-of-sequence token.  Target calls are counted by a forward hook on the target, so
the three are counted alike (the prompt's forward pass included).  Assisted generation uses the draft
model with a constant schedule of ``num_assistant_tokens = G`` (G = γ, 1 without ``--gamma``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from thermospec.runs.generate import Pair
from thermospec.targets.hf_models import libraries

__all__ = ["compare_table", "counted_calls", "plain_and_assisted"]


@contextmanager
def counted_calls(model: Any) -> Iterator[list[int]]:
    """A one-element list that counts `model`'s forward passes while the block runs."""
    count = [0]

    def hook(*_args: Any) -> None:
        count[0] += 1

    handle = model.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def _sample(pair: Pair, prompt_ids: list[int], max_new_tokens: int, seed: int,
            assistant: Any | None, gamma: int) -> dict[str, Any]:
    torch, _ = libraries()
    device = next(pair.target.parameters()).device
    inputs = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    eos = pair.tokenizer.eos_token_id
    options: dict[str, Any] = {
        "do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "max_new_tokens": max_new_tokens,
        "eos_token_id": eos, "pad_token_id": eos if eos is not None else 0,
        "attention_mask": torch.ones_like(inputs),
    }
    if assistant is not None:
        assistant.generation_config.num_assistant_tokens = gamma
        assistant.generation_config.num_assistant_tokens_schedule = "constant"
        assistant.generation_config.assistant_confidence_threshold = 0.0
        options["assistant_model"] = assistant
    torch.manual_seed(seed)
    started = time.perf_counter()
    with counted_calls(pair.target) as calls, torch.inference_mode():
        out = pair.target.generate(inputs, **options)
    seconds = time.perf_counter() - started
    tokens = int(out.shape[1]) - len(prompt_ids)
    return {"new_tokens": tokens, "target_calls": calls[0],
            "tokens_per_target_call": tokens / calls[0] if calls[0] else 0.0, "seconds": seconds}


def plain_and_assisted(pair: Pair, prompt_ids: list[int], max_new_tokens: int, seed: int,
                       gamma: int | None) -> dict[str, dict[str, Any] | None]:
    """``{"plain": …, "assisted": …}``: new tokens, target calls, tokens per call, seconds (assisted: None
    without a draft model)."""
    plain = _sample(pair, prompt_ids, max_new_tokens, seed, None, 1)
    assisted = None if pair.draft is None else _sample(pair, prompt_ids, max_new_tokens, seed, pair.draft,
                                                       gamma or 1)
    return {"plain": plain, "assisted": assisted}


def compare_table(thermospec: dict[str, Any], baselines: dict[str, dict[str, Any] | None]) -> str:
    """The side-by-side lines ``--compare`` prints: tokens per target call and wall time of each."""
    rows = [("thermospec", {"new_tokens": thermospec["new_tokens"], "target_calls": thermospec["target_calls"],
                            "tokens_per_target_call": thermospec["tokens_per_target_call"],
                            "seconds": thermospec["seconds"]["total"]})]
    rows += [(name, row) for name, row in (("plain sampling", baselines["plain"]),
                                            ("transformers assisted", baselines["assisted"])) if row is not None]
    lines = [f"{'':<22} {'new tokens':>10} {'target calls':>12} {'tokens/call':>11} {'seconds':>9}"]
    lines += [f"{name:<22} {row['new_tokens']:>10} {row['target_calls']:>12} {row['tokens_per_target_call']:>11.3f} "
              f"{row['seconds']:>9.3f}" for name, row in rows]
    if baselines["assisted"] is None:
        lines.append("transformers assisted: needs --draft-model")
    return "\n".join(lines)
