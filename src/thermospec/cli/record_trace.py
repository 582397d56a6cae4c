"""Record a trace from a Hugging Face causal LM: ``thermospec record-trace --help``.

Tokenises a UTF-8 text with the model's own tokenizer, runs the model
teacher-forced over windows of its context length, and writes a .npz trace
(docs/traces.md): ``logprobs`` (T, V), the model's log-softmax at positions
0 .. T-1 (row t predicts token t + 1), ``tokens`` (the observed token t + 1),
``vocab`` (the tokenizer's spelling of each id) and ``meta`` (model, text,
window).  The first window covers positions 0 .. L-1; each later one adds
`--stride` new positions with the L - stride tokens before them as context.

Needs the optional extra: ``pip install torch==2.13.0`` (the CPU wheel), then
``pip install 'thermospec[hf]'``.  Nothing is downloaded unless ``--download``
is given: the model is a local ``save_pretrained`` folder, or a Hub name already
in the local Hugging Face cache.  ``--trust-remote-code`` runs the model
repository's own Python code: pass it only for a model you trust.

Exit status: 0 written; 2 nothing written because of an option, a file or the
model (one line saying which); 1 a failed write (a full disk); 130 Ctrl-C, 143
SIGTERM.  In every failure the partial ``FILE.part`` is removed.  In a checkout,
``python -m scripts.record_trace`` is the same command.

Examples
--------
thermospec record-trace --model ./my-model --text notes.txt --positions 512 --out t.npz
thermospec record-trace --model gpt2 --text data/tinyshakespeare.txt --positions 2048 --out gpt2.npz --download
thermospec record-trace --model NAME --text a.txt --positions 4096 --out t.npz --device cuda --dtype float32
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thermospec.cli.make_trace import abandon, trace_bytes
from thermospec.cli.options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    OneLineParser,
    int_at_least,
)
from thermospec.runs.interrupts import Terminated, install_termination_handler
from thermospec.targets.corpus import CorpusError, read_corpus
from thermospec.targets.trace import TraceWriter

__all__ = ["RecordError", "context_length", "main", "model_folder_error", "vocabulary", "windows"]

MODEL_DTYPES = ("float32", "bfloat16", "float16")
INSTALL_HINT = "pip install torch==2.13.0 && pip install 'thermospec[hf]'"


class RecordError(Exception):
    """An option, file or model that the recorder cannot use: one line, exit status 2, nothing written."""


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


def model_folder_error(name: str) -> str | None:
    """Why `name` cannot be a model, when it is (or is spelt as) a folder of this machine; None otherwise.

    A Hub name is ``NAME`` or ``OWNER/NAME``; anything else (``./x``, ``/x``, ``~/x``, ``a/b/c``)
    is a folder, which must exist and hold a ``config.json``.
    """
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            return f"--model {name}: not a folder (a save_pretrained folder or a Hub name)"
        if not (path / "config.json").is_file():
            return f"--model {name}: the folder has no config.json (not a save_pretrained folder)"
        return None
    spelt_as_path = name.startswith((".", "/", "~", "\\")) or name.endswith("/") or name.count("/") > 1
    return f"--model {name}: no such folder" if spelt_as_path else None


def _libraries() -> tuple[Any, Any]:
    """torch and transformers, or a `RecordError` naming the extra."""
    try:
        return importlib.import_module("torch"), importlib.import_module("transformers")
    except ImportError as exc:
        raise RecordError(f"needs the hf extra ({exc.name} is missing): {INSTALL_HINT}") from None


def _load(
    args: argparse.Namespace, transformers: Any, options: dict[str, Any], text: str
) -> tuple[Any, Any, list[int]]:
    """The tokenizer, the model and the text's token ids, or a `RecordError` in one line."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model, **options)
        ids = list(tokenizer(text)["input_ids"])
        if len(ids) < args.positions + 1:
            raise RecordError(f"--positions: {args.text} has {len(ids)} tokens, so at most "
                              f"{max(len(ids) - 1, 0)} positions")
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, **options)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if options.get("local_files_only") and model_folder_error(args.model) is None \
                and not Path(args.model).expanduser().exists():
            raise RecordError(f"--model {args.model}: not in the local Hugging Face cache; --download fetches it "
                              f"from the Hub ({first})") from None
        raise RecordError(f"--model {args.model}: {first}") from None
    return tokenizer, model, ids


def _window(args: argparse.Namespace, model: Any, tokenizer: Any) -> tuple[int, int]:
    """(L, S): the window asked for, within the model's context length, and the stride."""
    context = context_length(model, tokenizer)
    window: int | None = args.window if args.window is not None else context
    if window is None:
        raise RecordError("--window: the model states no context length; give --window L")
    if context is not None and window > context:
        raise RecordError(f"--window: the model's context length is {context}, got {window}")
    stride = args.stride if args.stride is not None else max(1, window // 2)
    if stride > window:
        raise RecordError(f"--stride: must be in 1 .. {window} (the window), got {stride}")
    return window, stride


def record(args: argparse.Namespace) -> Path:
    """Load the model and tokenizer, run the windows, write the trace; return its path."""
    folder_error = model_folder_error(args.model)
    if folder_error:
        raise RecordError(folder_error)
    text, text_sha256 = read_corpus(args.text)
    torch, transformers = _libraries()
    tqdm = importlib.import_module("tqdm").tqdm
    transformers.logging.set_verbosity_error()  # no "sequence longer than the model" warning: we cut windows
    options: dict[str, Any] = {} if args.download else {"local_files_only": True}
    if args.trust_remote_code:
        options["trust_remote_code"] = True
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RecordError("--device cuda: no CUDA device is available")
    if args.quiet:
        transformers.utils.logging.disable_progress_bar()
    tokenizer, model, ids = _load(args, transformers, options, text)
    model = model.to(device=args.device, dtype=getattr(torch, args.model_dtype)).eval()
    window, stride = _window(args, model, tokenizer)
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
        V = int(rows.shape[-1])  # the width of the model's logits
        size, free = trace_bytes(T, V, args.dtype, True), shutil.disk_usage(Path(args.out).parent).free
        if size > free:
            raise RecordError(f"--positions {T}: the trace needs {size / 2**30:,.1f} GiB (V = {V}), more than the "
                              f"{free / 2**30:,.1f} GiB free in {Path(args.out).parent}")
        with TraceWriter(args.out, T, V, args.dtype) as writer:
            for span in spans:
                rows = rows if span is spans[0] else run(span)
                writer.write(rows)
                bar.update(span[2] - span[1])
            return writer.finish(tokens=np.asarray(ids[1:T + 1], dtype=np.int64),
                                 vocabulary=vocabulary(tokenizer, writer.vocab_size), meta=meta)


def build_parser(prog: str = "record_trace") -> argparse.ArgumentParser:
    """The ``record_trace`` parser."""
    doc = __doc__ or ""
    parser = OneLineParser(
        prog=prog, description=doc.split("\n\n")[0],
        epilog="\n\n".join(doc.split("\n\n")[1:]), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="NAME_OR_DIR",
                        help="a save_pretrained folder, or a Hub name (in the local cache, or with --download)")
    parser.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text, tokenised by the model's tokenizer")
    parser.add_argument("--positions", type=int_at_least(1), required=True, metavar="T", help="positions to record")
    parser.add_argument("--out", required=True, metavar="FILE.npz", help="the trace to write")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="(default: cpu)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="how logprobs are stored (default: float16)")
    parser.add_argument("--model-dtype", choices=MODEL_DTYPES, default="float32",
                        help="the model's weights while it runs (default: float32)")
    parser.add_argument("--window", type=int_at_least(2), metavar="L",
                        help="tokens per window, at most the model's context length (default: that length)")
    parser.add_argument("--stride", type=int_at_least(1), metavar="S",
                        help="new positions per later window, 1 .. L (default: L // 2)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    network = parser.add_mutually_exclusive_group()
    network.add_argument("--download", action="store_true",
                         help="let transformers download a Hub model missing from the local cache (default: never)")
    network.add_argument("--local-files-only", action="store_true",
                         help="never download: the default, kept so that earlier command lines still run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "record_trace") -> int:
    """Entry point of ``thermospec record-trace`` (and ``python -m scripts.record_trace``); returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".npz":
        parser.error(f"--out: a recorded trace is a .npz (logprobs, tokens, vocab), got {args.out}")
    if not out.parent.is_dir():
        parser.error(f"--out: folder {out.parent} does not exist")
    install_termination_handler()
    try:
        path = record(args)
    except RecordError as exc:
        return abandon(prog, out, f"error: {exc}", EXIT_USAGE)
    except CorpusError as exc:
        return abandon(prog, out, f"error: --text {exc}", EXIT_USAGE)
    except (OSError, MemoryError) as exc:
        reason = "not enough memory" if isinstance(exc, MemoryError) else (exc.strerror or str(exc))
        return abandon(prog, out, f"error: {out}: {reason}", EXIT_FAILED)
    except KeyboardInterrupt:
        return abandon(prog, out, f"interrupted; {out} was not written", EXIT_INTERRUPTED)
    except Terminated:
        return abandon(prog, out, f"terminated (SIGTERM); {out} was not written", EXIT_TERMINATED)
    print(f"wrote {path}: {args.positions} positions, {path.stat().st_size / 2**20:.1f} MiB")
    return 0

