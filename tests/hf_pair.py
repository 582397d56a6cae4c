"""Tiny random Hugging Face causal LMs saved locally, for tests that need a real model (no download).

`train_tokenizer` trains a small byte-level BPE with ``tokenizers`` on a text;
`save_gpt2` builds a random GPT-2 from a config and saves it with its tokenizer
(``save_pretrained``: safetensors, no pickles); `save_pair` saves a target and a
draft that share one tokenizer, with different seeds.  ``peaked=True`` draws the
weights wide (``initializer_range`` 0.5 instead of GPT-2's 0.02), so that the
next-token laws are far from uniform, as a trained model's are.

Needs the optional ``hf`` extra (torch, transformers) and ``tokenizers``: import
this module only after ``pytest.importorskip`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers

__all__ = ["PEAKED_RANGE", "ModelPair", "save_gpt2", "save_pair", "train_tokenizer"]

PEAKED_RANGE = 0.5
"""``initializer_range`` of a peaked model: weights drawn wide, so rows are peaked (GPT-2's default is 0.02)."""


def train_tokenizer(text: str, vocab_size: int = 300) -> Any:
    """A byte-level BPE of `vocab_size` tokens trained on `text`, as a `transformers.PreTrainedTokenizerFast`."""
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([text], trainer=trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe)


def save_gpt2(folder: Path, tokenizer: Any, *, seed: int, n_positions: int = 64, n_embd: int = 32,
              n_layer: int = 1, n_head: int = 2, peaked: bool = True, eos_token_id: int | None = None) -> Path:
    """Build a random GPT-2 with `tokenizer`'s vocabulary from `seed` and save both to `folder`.

    Parameters
    ----------
    folder : Path
        Created if needed; gets ``config.json``, ``model.safetensors`` and the tokenizer's files.
    tokenizer : transformers.PreTrainedTokenizerFast
        Saved beside the model (its length is the model's vocabulary size).
    seed : int
        Seeds ``torch.manual_seed`` before the weights are drawn.
    n_positions, n_embd, n_layer, n_head : int
        GPT-2's shape (context length, width, layers, heads).
    peaked : bool
        Weights drawn with ``initializer_range`` `PEAKED_RANGE` (peaked rows) instead of 0.02 (near-uniform rows).
    eos_token_id : int or None
        The model's end-of-sequence id (None: generation stops only at the length asked for).

    Returns
    -------
    Path
        `folder`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=None, eos_token_id=eos_token_id, initializer_range=PEAKED_RANGE if peaked else 0.02,
    )
    torch.manual_seed(seed)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class ModelPair:
    """Folders of a saved target and draft model sharing one tokenizer."""

    target: Path
    draft: Path


def save_pair(root: Path, text: str, *, target_seed: int = 0, draft_seed: int = 1, peaked: bool = True,
              vocab_size: int = 300, n_positions: int = 128, target_layers: int = 2, draft_layers: int = 1,
              n_embd: int = 32, blend: float | None = None) -> ModelPair:
    """A target and a draft GPT-2 in ``root/target`` and ``root/draft``, one tokenizer trained on `text`.

    The target is the deeper model (`target_layers`), the draft the shallower; their seeds differ, so their
    next-token laws differ (the draft is a poor but not useless proposer with ``peaked=True``).  With `blend`
    the draft is instead the target's shape with weights ``(1 - blend)·target + blend·random`` (random from
    `draft_seed`): a closer proposer (mean overlap ~0.5 at blend 0.1; ~0.2 at 0.3), so that drafts are often accepted.
    """
    tokenizer = train_tokenizer(text, vocab_size)
    target = save_gpt2(root / "target", tokenizer, seed=target_seed, n_layer=target_layers,
                       n_positions=n_positions, n_embd=n_embd, peaked=peaked)
    draft = save_gpt2(root / "draft", tokenizer, seed=draft_seed, n_layer=target_layers if blend else draft_layers,
                      n_positions=n_positions, n_embd=n_embd, peaked=peaked)
    if blend:
        mixed = transformers.GPT2LMHeadModel.from_pretrained(draft, local_files_only=True)
        reference = transformers.GPT2LMHeadModel.from_pretrained(target, local_files_only=True).state_dict()
        seen: set[int] = set()
        with torch.no_grad():
            for name, tensor in mixed.state_dict().items():
                if tensor.data_ptr() not in seen:  # tied weights (lm_head = wte) are blended once
                    seen.add(tensor.data_ptr())
                    tensor.mul_(blend).add_(reference[name], alpha=1.0 - blend)
        mixed.save_pretrained(draft)
    return ModelPair(target=target, draft=draft)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.hf_pair OUT TEXT``: save the tiny peaked pair (draft blended at 0.1) to OUT."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.hf_pair", description=main.__doc__)
    parser.add_argument("out", type=Path, help="folder to create (gets target/ and draft/)")
    parser.add_argument("text", type=Path, help="UTF-8 text the tokenizer is trained on (its first 50,000 chars)")
    parser.add_argument("--blend", type=float, default=0.1, help="the draft's share of random weights (default 0.1)")
    args = parser.parse_args(argv)
    pair = save_pair(args.out, args.text.read_text(encoding="utf-8")[:50_000], blend=args.blend or None)
    print(f"target: {pair.target}\ndraft: {pair.draft}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
