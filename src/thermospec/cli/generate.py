"""Generate text from a Hugging Face model pair with the TSU drafting: ``thermospec generate --help``.

Each round the draft model's next-token row gives ψ, the TSU draws a token (a
γ-block with ``--gamma G``, a token tree with ``--drafts N`` too), the target
verifies it in one forward pass, and the emitted tokens follow the target's law
exactly.  Without ``--draft-model`` ψ comes from the target's own row (M1) and
only ``--gamma 1`` is possible.  The text goes to stdout as it is generated;
``RUNS_DIR/<timestamp>/`` gets ``rounds.jsonl`` (one record per round) and
``summary.json``; a headline goes to stderr, and with ``--compare`` the same
prompt and seed through plain sampling and `transformers`' assisted generation.

Models are ``save_pretrained`` folders or Hub names already in the local cache
(``--download`` lets transformers fetch one), loaded from safetensors, never
with the repository's own code.  Needs the optional extra: ``pip install
'thermospec[hf]'`` (docs/generate.md).

Exit status: 0 done; 2 bad input (one line: a model, the tokenizers, the prompt,
an option); 1 a failed write; 130 Ctrl-C and 143 SIGTERM (the rounds written are
whole and the summary is marked interrupted).

Examples
--------
thermospec generate --model ./target --draft-model ./draft --prompt "To be" --max-new-tokens 64 --K 16 --seed 0
thermospec generate --model ./target --draft-model ./draft --prompt-file p.txt --max-new-tokens 64 --K 16 \\
    --gamma 4 --seed 1 --compare
thermospec generate --model ./target --draft-model ./draft --prompt "Hi" --max-new-tokens 32 --K 16 \\
    --gamma 2 --drafts 2 --verifier spectr --seed 2
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from thermospec.cli.options import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    OneLineParser,
    eps_option,
    int_at_least,
    positive_float,
)
from thermospec.core.verifiers import PLANS
from thermospec.runs.generate import GenerateResult, check_generate_options, generate, load_pair
from thermospec.runs.generate_compare import compare_table, plain_and_assisted
from thermospec.runs.interrupts import Terminated, exit_status, install_termination_handler
from thermospec.runs.storage import OutputError
from thermospec.targets.hf_models import MODEL_DTYPES, ModelError, libraries

__all__ = ["build_parser", "headline", "main"]

PSI_BUDGET_REFUSAL = ("--psi-budget: not with generate: a budget allocates K over contexts weighted in advance, "
                      "and generated text has no contexts before it exists")


def build_parser(prog: str = "generate") -> argparse.ArgumentParser:
    """The ``generate`` parser."""
    doc = __doc__ or ""
    parser = OneLineParser(prog=prog, description=doc.split("\n\n")[0],
                           epilog="\n\n".join(doc.split("\n\n")[1:]),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="TARGET", help="the target: a folder or a cached Hub name")
    parser.add_argument("--draft-model", metavar="DRAFT", help="ψ's source, sharing the target's tokenizer "
                        "(default: the target's own row, M1)")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="the text to continue")
    prompt.add_argument("--prompt-file", metavar="PATH", help="a UTF-8 file holding the prompt")
    parser.add_argument("--max-new-tokens", type=int_at_least(1), required=True, metavar="N")
    parser.add_argument("--K", type=int_at_least(1), required=True, help="ids per ψ")
    parser.add_argument("--tau", type=positive_float, default=1.0, help="ψ's temperature (default: 1)")
    parser.add_argument("--eps", type=eps_option, default="auto", help="ψ's tail (default: auto)")
    parser.add_argument("--gamma", type=int_at_least(1), metavar="G",
                        help="G drafted tokens per target call and a bonus token (default: M1's one-token step)")
    parser.add_argument("--drafts", type=int_at_least(1), metavar="N",
                        help="N drafts per node (a token tree with --gamma)")
    parser.add_argument("--verifier", choices=PLANS, help="the N-draft verifier (with --drafts; default recursive)")
    parser.add_argument("--seed", type=int_at_least(0), required=True, metavar="S")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="(default: cpu)")
    parser.add_argument("--dtype", choices=MODEL_DTYPES, default="float32",
                        help="the models' weights (default: float32)")
    parser.add_argument("--runs-dir", default="runs", metavar="DIR", help="where the run's folder goes (default: runs)")
    parser.add_argument("--compare", action="store_true",
                        help="also plain sampling and transformers' assisted generation, same prompt and seed")
    parser.add_argument("--download", action="store_true", help="let transformers fetch a Hub model (default: never)")
    parser.add_argument("--psi-budget", metavar="BYTES", help=argparse.SUPPRESS)
    return parser


def headline(result: GenerateResult) -> str:
    """What ``generate`` prints on stderr after the text."""
    s, t = result.summary, result.summary["seconds"]
    stopped = "interrupted" if s["interrupted"] else f"stopped by {s['stopped_by']}"
    return (f"{s['new_tokens']} new tokens in {s['rounds']} rounds, {s['target_calls']} target calls "
            f"({s['tokens_per_target_call']:.3f} tokens/call); per token {s['tsu_draws_per_token']:.2f} TSU draws, "
            f"{s['psi_bytes_per_token']:.1f} B of ψ; acceptance {s['acceptance']:.3f} (expected "
            f"{s['expected_acceptance']:.3f}); {t['total']:.2f} s: target {t['target']:.2f}, draft {t['draft']:.2f}, "
            f"TSU {t['tsu']:.2f}, host {t['host']:.2f}; {stopped}"
            + (f"; {result.run_dir}" if result.run_dir is not None else ""))


def _prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return str(args.prompt)
    try:
        return Path(args.prompt_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"--prompt-file {args.prompt_file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ModelError(f"--prompt-file {args.prompt_file}: not UTF-8 text") from None


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _run(args: argparse.Namespace, prog: str) -> int:
    if args.psi_budget is not None:
        raise ModelError(PSI_BUDGET_REFUSAL)
    if args.verifier is not None and args.drafts is None:
        raise ModelError("--verifier: applies to N drafts per node; give --drafts N")
    prompt = _prompt(args)
    if not prompt:
        raise ModelError("--prompt: empty (the prompt gives no tokens)")
    check_generate_options(args.max_new_tokens, args.K, args.gamma, args.drafts or 1, args.verifier or "recursive",
                           args.draft_model is not None, args.runs_dir)  # before the models' seconds of loading
    _, transformers = libraries()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    pair = load_pair(args.model, args.draft_model, device=args.device, dtype=args.dtype, download=args.download,
                     probe=prompt)
    result = generate(pair, prompt=prompt, max_new_tokens=args.max_new_tokens, K=args.K, tau=args.tau, eps=args.eps,
                      gamma=args.gamma, drafts=args.drafts or 1, verifier=args.verifier or "recursive", seed=args.seed,
                      device=args.device, dtype=args.dtype, runs_dir=args.runs_dir, stream=_write)
    _write("\n")
    print(f"{prog}: {headline(result)}", file=sys.stderr)
    if result.interrupted is not None:
        return exit_status(result.interrupted)
    if args.compare:
        baselines = plain_and_assisted(pair, result.prompt_ids, args.max_new_tokens, args.seed, args.gamma)
        print(compare_table(result.summary, baselines), file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "generate") -> int:
    """Entry point of ``thermospec generate`` (and ``python -m scripts.generate``); returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    install_termination_handler()
    try:
        return _run(args, prog)
    except ModelError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # stdout closed early (piped into head): quietly, as a shell tool would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OutputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
