"""The results table of docs/generate.md: ``generate`` in each mode beside plain and assisted sampling.

``python -m scripts.generate_table --model TARGET --draft-model DRAFT [--prompt TEXT] [--max-new-tokens N]
[--K K] [--seeds S] [--threads T]`` prints one Markdown row per configuration: the means over seeds
0 .. S-1 of tokens per target call, TSU draws and ψ bytes per token, acceptance against its expectation,
and the wall time per token split into target, draft, TSU and host; then plain sampling and
transformers' assisted generation (γ = 3) on the same prompt and seeds.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
import transformers

from thermospec.runs.generate import generate, load_pair
from thermospec.runs.generate_compare import plain_and_assisted

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("M1, ψ from the target (no draft model)", {"draft": False}),
    ("M1, ψ from the draft", {}),
    ("γ = 3", {"gamma": 3}),
    ("γ = 6", {"gamma": 6}),
    ("tree γ = 2, N = 2 (recursive)", {"gamma": 2, "drafts": 2}),
    ("tree γ = 3, N = 2 (spectr)", {"gamma": 3, "drafts": 2, "verifier": "spectr"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--draft-model", required=True)
    parser.add_argument("--prompt", default="First Citizen:\nBefore we proceed any further, hear me speak.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--K", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: tiny models)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    pair = load_pair(args.model, args.draft_model, probe=args.prompt)
    target_only = load_pair(args.model, None)
    print("| configuration | tokens / target call | TSU draws / token | ψ bytes / token | acceptance (expected) "
          "| ms / token: total (target, draft, TSU, host) |")
    print("|---|---|---|---|---|---|")
    for name, options in CONFIGS:
        use = pair if options.pop("draft", True) else target_only
        runs = [generate(use, prompt=args.prompt, max_new_tokens=args.max_new_tokens, K=args.K, seed=seed,
                         runs_dir=None, **options).summary for seed in range(args.seeds)]

        def mean(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.fmean(float(s[key]) for s in runs)

        def ms(part: str, runs: list[dict[str, Any]] = runs) -> float:
            return 1000 * sum(float(s["seconds"][part]) for s in runs) / sum(int(s["new_tokens"]) for s in runs)

        print(f"| {name} | {mean('tokens_per_target_call'):.3f} | {mean('tsu_draws_per_token'):.2f} | "
              f"{mean('psi_bytes_per_token'):.1f} | {mean('acceptance'):.3f} ({mean('expected_acceptance'):.3f}) | "
              f"{ms('total'):.1f} ({ms('target'):.1f}, {ms('draft'):.1f}, {ms('tsu'):.2f}, {ms('host'):.1f}) |")
    prompt_ids = [int(i) for i in pair.tokenizer(args.prompt)["input_ids"]]
    baselines = [plain_and_assisted(pair, prompt_ids, args.max_new_tokens, seed, 3) for seed in range(args.seeds)]
    for key, name in (("plain", "plain sampling (transformers)"), ("assisted", "assisted generation, γ = 3")):
        rows = [row for b in baselines if (row := b[key]) is not None]
        tokens = sum(r["new_tokens"] for r in rows)
        per_call = statistics.fmean(r["tokens_per_target_call"] for r in rows)
        total = 1000 * sum(r["seconds"] for r in rows) / tokens
        print(f"| {name} | {per_call:.3f} | – | – | – | {total:.1f} |")


if __name__ == "__main__":
    main()
