"""Record a trace from a Hugging Face causal LM: ``python -m scripts.record_trace --help``.

Tokenises a UTF-8 text with the model's own tokenizer, runs the model
teacher-forced over windows of its context length, and writes a .npz trace
(docs/traces.md): ``logprobs`` (T, V), the model's log-softmax at positions
0 .. T-1 (row t predicts token t + 1), ``tokens`` (the observed token t + 1),
``vocab`` (the tokenizer's spelling of each id) and ``meta`` (model, text,
window).  The first window covers positions 0 .. L-1; each later one adds
`--stride` new positions with the L - stride tokens before them as context.

Needs the optional extra: ``pip install torch==2.13.0`` (the CPU wheel on this
machine's disk), then ``pip install -e '.[hf]'``.  A model named on the Hub is
downloaded by transformers (``--local-files-only`` forbids it); a local folder
(``save_pretrained``) never touches the network.  ``--trust-remote-code`` runs
the model repository's own Python code: pass it only for a model you trust.

Examples
--------
python -m scripts.record_trace --model gpt2 --text data/tinyshakespeare.txt --positions 2048 --out gpt2.npz
python -m scripts.record_trace --model ./my-model --text notes.txt --positions 512 --out t.npz --local-files-only
python -m scripts.record_trace --model NAME --text a.txt --positions 4096 --out t.npz --device cuda --dtype float32
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from thermospec.targets.corpus import CorpusError, read_corpus
from thermospec.targets.trace import TraceWriter

MODEL_DTYPES = ("float32", "bfloat16", "float16")


class _Parser(argparse.ArgumentParser):
    """Errors on one line (no usage block): ``record_trace: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def context_length(model: Any, tokenizer: Any) -> int | None:
    """The model's context length: its config's ``n_positions``/``max_position_embeddings``/``n_ctx``."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 1 < limit < 1_000_000 else None


def windows(positions: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, first, end)`` of each window: input tokens ``[start, end)``, new positions ``[first, end)``."""
    spans = [(0, 0, min(window, positions))]
    while spans[-1][2] < positions:
        first = spans[-1][2]
        end = min(first + stride, positions)
        spans.append((end - window, first, end))
    return spans


def vocabulary(tokenizer: Any, V: int) -> list[str]:
    """The tokenizer's spelling of ids 0 .. V-1 (``""`` for ids the model has but the tokenizer lacks)."""
    known = min(V, len(tokenizer))
    words = tokenizer.convert_ids_to_tokens(list(range(known)))
    return [w if isinstance(w, str) else "" for w in words] + [""] * (V - known)


def record(args: argparse.Namespace, parser: _Parser) -> Path:
    """Load the model and tokenizer, run the windows, write the trace; return its path."""
    try:
        torch = importlib.import_module("torch")
        transformers = importlib.import_module("transformers")
    except ImportError as exc:
        parser.exit(1, f"record_trace: error: needs the hf extra ({exc.name} is missing): "
                       "pip install torch==2.13.0 && pip install -e '.[hf]'\n")
    tqdm = importlib.import_module("tqdm").tqdm
    transformers.logging.set_verbosity_error()  # no "sequence longer than the model" warning: we cut windows
    options: dict[str, Any] = {"local_files_only": True} if args.local_files_only else {}
    if args.trust_remote_code:
        options["trust_remote_code"] = True
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(1, "record_trace: error: --device cuda: no CUDA device is available\n")
    if args.quiet:
        transformers.utils.logging.disable_progress_bar()
    text, text_sha256 = read_corpus(args.text)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model, **options)
        ids = list(tokenizer(text)["input_ids"])
        if len(ids) < args.positions + 1:
            parser.exit(2, f"record_trace: error: --positions: {args.text} has {len(ids)} tokens, "
                           f"so at most {max(len(ids) - 1, 0)} positions\n")
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, **options)
    except (OSError, ValueError) as exc:
        parser.exit(1, f"record_trace: error: --model {args.model}: {str(exc).strip().splitlines()[0]}\n")
    model = model.to(device=args.device, dtype=getattr(torch, args.model_dtype)).eval()
    window = args.window or context_length(model, tokenizer)
    if window is None or window < 2:
        parser.exit(2, "record_trace: error: --window: the model states no context length; give --window L\n")
    stride = args.stride or max(1, window // 2)
    if not 1 <= stride <= window:
        parser.exit(2, f"record_trace: error: --stride: must be in 1 .. {window}, got {stride}\n")
    T = args.positions
    spans = windows(T, window, stride)

    def run(span: tuple[int, int, int]) -> Any:
        start, first, end = span
        with torch.inference_mode():
            inputs = torch.tensor([ids[start:end]], dtype=torch.long, device=args.device)
            logits = model(input_ids=inputs).logits[0, first - start:]
            return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()

    meta = {
        "recorder": "scripts.record_trace", "model": str(args.model), "text": Path(args.text).name,
        "text_sha256": text_sha256, "window": window, "stride": stride, "model_dtype": args.model_dtype,
        "device": args.device, "transformers": transformers.__version__, "torch": torch.__version__,
    }
    with tqdm(total=T, unit="pos", desc="record_trace", file=sys.stderr, disable=args.quiet) as bar:
        rows = run(spans[0])
        with TraceWriter(args.out, T, int(rows.shape[-1]), args.dtype) as writer:  # V: the model's logits
            for span in spans:
                rows = rows if span is spans[0] else run(span)
                writer.write(rows)
                bar.update(span[2] - span[1])
            return writer.finish(tokens=np.asarray(ids[1:T + 1], dtype=np.int64),
                                 vocabulary=vocabulary(tokenizer, writer.vocab_size), meta=meta)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="record_trace", description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="NAME_OR_DIR", help="a Hub name or a save_pretrained folder")
    parser.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text, tokenised by the model's tokenizer")
    parser.add_argument("--positions", type=int, required=True, metavar="T", help="positions to record, >= 1")
    parser.add_argument("--out", required=True, metavar="FILE.npz", help="the trace to write")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="(default: cpu)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="how logprobs are stored (default: float16)")
    parser.add_argument("--model-dtype", choices=MODEL_DTYPES, default="float32",
                        help="the model's weights while it runs (default: float32)")
    parser.add_argument("--window", type=int, metavar="L", help="tokens per window (default: the model's context)")
    parser.add_argument("--stride", type=int, metavar="S", help="new positions per later window (default: L // 2)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    parser.add_argument("--local-files-only", action="store_true", help="never download (a local folder never does)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.positions < 1:
        parser.error(f"--positions: must be >= 1, got {args.positions}")
    if Path(args.out).suffix != ".npz":
        parser.error(f"--out: a recorded trace is a .npz (logprobs, tokens, vocab), got {args.out}")
    if not Path(args.out).parent.is_dir():
        parser.error(f"--out: folder {Path(args.out).parent} does not exist")
    try:
        path = record(args, parser)
    except CorpusError as exc:
        parser.exit(1, f"record_trace: error: --text {exc}\n")
    except OSError as exc:
        parser.exit(1, f"record_trace: error: {args.out}: {exc.strerror or exc}\n")
    print(f"wrote {path}: {args.positions} positions, {path.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
