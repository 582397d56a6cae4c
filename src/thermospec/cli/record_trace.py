"""Record a trace from a Hugging Face causal LM: ``thermospec record-trace --help``.

Tokenises a UTF-8 text with the model's own tokenizer, runs the model
teacher-forced over windows of its context length, and writes a .npz trace
(docs/traces.md): ``logprobs`` (T, V), the model's log-softmax at positions
0 .. T-1 (row t predicts token t + 1), ``tokens`` (the observed token t + 1),
``vocab`` (the tokenizer's spelling of each id) and ``meta`` (model, text,
window).  The first window covers positions 0 .. L-1; each later one adds
`--stride` new positions with the L - stride tokens before them as context.

With ``--draft-model DIR --draft-out FILE`` the same pass over the same token ids
(same windows) also records a draft model, for ``run --trace --draft-trace``.  Its
tokenizer must give the same ids for the text and spell ids alike, else it is
refused.  Both traces are cut to the V ids that the tokenizer and both models'
logits share (models of one family often pad their output layer: Qwen2.5 0.5B has
151,936 logits, 7B 152,064, for one tokenizer of 151,665 ids), each row the
log-softmax over those V logits; alone, V is the width of the model's logits.

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
thermospec record-trace --model Qwen/Qwen2.5-7B --draft-model Qwen/Qwen2.5-0.5B --text a.txt --positions 2048 \
    --out q7b.npz --draft-out q05b.npz
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thermospec.cli.make_trace import STOPS, abandon, stopped, trace_bytes
from thermospec.cli.options import EXIT_USAGE, OneLineParser, int_at_least
from thermospec.runs.interrupts import install_termination_handler
from thermospec.targets.corpus import CorpusError, read_corpus
from thermospec.targets.hf_models import model_source_error
from thermospec.targets.trace import TraceWriter

__all__ = ["RecordError", "context_length", "main", "vocabulary", "windows"]

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


def _libraries() -> tuple[Any, Any]:
    """torch and transformers, or a `RecordError` naming the extra."""
    try:
        return importlib.import_module("torch"), importlib.import_module("transformers")
    except ImportError as exc:
        raise RecordError(f"needs the hf extra ({exc.name} is missing): {INSTALL_HINT}") from None


def _pretrained(flag: str, name: str, auto: Any, options: dict[str, Any]) -> Any:
    """``auto.from_pretrained(name)``, or a `RecordError` in one line naming `flag` (a model not in the cache...)."""
    try:
        return auto.from_pretrained(name, **options)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if options.get("local_files_only") and not Path(name).expanduser().exists():
            raise RecordError(f"{flag} {name}: not in the local Hugging Face cache; --download fetches it "
                              f"from the Hub ({first})") from None
        raise RecordError(f"{flag} {name}: {first}") from None


def _ids(args: argparse.Namespace, tokenizer: Any, text: str) -> list[int]:
    """The text's token ids, or a `RecordError` when they are fewer than T + 1."""
    ids = [int(i) for i in tokenizer(text)["input_ids"]]
    if len(ids) < args.positions + 1:
        raise RecordError(f"--positions: {args.text} has {len(ids)} tokens, so at most "
                          f"{max(len(ids) - 1, 0)} positions")
    return ids


def _same_tokenizer(args: argparse.Namespace, tokenizer: Any, draft: Any, ids: list[int], text: str) -> int:
    """How many ids both tokenizers have, once they give the same ids for the text and spell those ids alike.

    Raises
    ------
    RecordError
        The draft's tokenizer gives other ids for the text, or spells an id otherwise (one line, the first).
    """
    draft_ids = [int(i) for i in draft(text)["input_ids"]]
    if draft_ids != ids:
        n = min(len(ids), len(draft_ids))
        i = next((i for i in range(n) if ids[i] != draft_ids[i]), n)
        a, b = (str(x[i]) if i < len(x) else "none" for x in (ids, draft_ids))
        raise RecordError(f"--draft-model {args.draft_model}: its tokenizer gives other ids for {args.text} than "
                          f"--model's (token {i}: {b}, not {a}); a draft trace needs the same token ids")
    known = min(len(tokenizer), len(draft))
    words, draft_words = vocabulary(tokenizer, known), vocabulary(draft, known)
    if words != draft_words:
        i = next(i for i in range(known) if words[i] != draft_words[i])
        raise RecordError(f"--draft-model {args.draft_model}: its tokenizer spells id {i} {draft_words[i]!r} where "
                          f"--model's spells it {words[i]!r}; a draft trace needs the same vocabulary")
    return known


def _window(args: argparse.Namespace, models: Sequence[tuple[str, Any, Any]]) -> tuple[int, int]:
    """(L, S): the window asked for, within every model's context length, and the stride.

    `models` holds ``(what, model, tokenizer)``; L defaults to the shortest context length.
    """
    contexts = [(what, context_length(model, tokenizer)) for what, model, tokenizer in models]
    known = [c for _, c in contexts if c is not None]
    window: int | None = args.window if args.window is not None else min(known, default=None)
    if window is None:
        raise RecordError("--window: the model states no context length; give --window L")
    for what, context in contexts:
        if context is not None and window > context:
            raise RecordError(f"--window: {what}'s context length is {context}, got {window}")
    stride = args.stride if args.stride is not None else max(1, window // 2)
    if stride > window:
        raise RecordError(f"--stride: must be in 1 .. {window} (the window), got {stride}")
    return window, stride


def _check_room(outs: Sequence[Path], size: int, T: int, V: int) -> None:
    """Refuse (`RecordError`) traces of `size` bytes each that do not fit in the free space of their folders."""
    need: dict[int, list[Path]] = {}
    for out in outs:
        need.setdefault(out.resolve().parent.stat().st_dev, []).append(out.parent)
    for folders in need.values():
        free = shutil.disk_usage(folders[0]).free
        if size * len(folders) > free:
            raise RecordError(f"--positions {T}: the trace{'s need' if len(folders) > 1 else ' needs'} "
                              f"{size * len(folders) / 2**30:,.1f} GiB (V = {V}), more than the "
                              f"{free / 2**30:,.1f} GiB free in {folders[0]}")


def record(args: argparse.Namespace) -> list[Path]:
    """Load the model(s) and tokenizer(s), run the windows, write the trace(s); return their paths.

    With ``--draft-model`` one pass over the same token ids writes the target's trace (``--out``) and the
    draft model's (``--draft-out``), both cut to the V ids their tokenizer and both models' logits share.
    """
    pair = args.draft_model is not None
    flags, names = ["--model", "--draft-model"][:1 + pair], [args.model, args.draft_model][:1 + pair]
    for flag, name in zip(flags, names, strict=True):
        folder_error = model_source_error(name, flag)
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
    tokenizer = _pretrained("--model", args.model, transformers.AutoTokenizer, options)
    ids = _ids(args, tokenizer, text)
    tokenizers, known = [tokenizer], None
    if pair:
        tokenizers.append(_pretrained("--draft-model", args.draft_model, transformers.AutoTokenizer, options))
        known = _same_tokenizer(args, tokenizer, tokenizers[1], ids, text)
    dtype = getattr(torch, args.model_dtype)
    models = [_pretrained(flag, name, transformers.AutoModelForCausalLM, options).to(device=args.device, dtype=dtype)
              .eval() for flag, name in zip(flags, names, strict=True)]
    window, stride = _window(args, list(zip(("the model", "the draft model"), models, tokenizers, strict=False)))
    for flag, name, model in zip(flags, names, models, strict=True):
        embedding = model.get_input_embeddings()
        rows_in = getattr(embedding, "num_embeddings", None)
        if isinstance(rows_in, int) and max(ids[:args.positions + 1]) >= rows_in:  # was an IndexError traceback
            raise RecordError(f"--text {args.text}: token id {max(ids[:args.positions + 1])} is not among the "
                              f"{rows_in} ids that {flag} {name} reads (its tokenizer is longer than its embedding)")
    T = args.positions
    spans = windows(T, window, stride)
    outs = [Path(args.out), Path(args.draft_out)] if pair else [Path(args.out)]

    def run(model: Any, span: tuple[int, int, int]) -> Any:
        start, first, end = span
        with torch.inference_mode():
            inputs = torch.tensor([ids[start:end]], dtype=torch.long, device=args.device)
            return model(input_ids=inputs).logits[0, first - start:].float()

    def rows(logits: Any, V: int) -> Any:
        return torch.log_softmax(logits[:, :V], dim=-1).cpu().numpy()

    metas = [{
        "recorder": "scripts.record_trace", "model": str(name), "text": Path(args.text).name,
        "text_sha256": text_sha256, "window": window, "stride": stride, "model_dtype": args.model_dtype,
        "device": args.device, "transformers": transformers.__version__, "torch": torch.__version__,
    } for name in names]
    with tqdm(total=T, unit="pos", desc="record_trace", file=sys.stderr, disable=args.quiet) as bar:
        firsts = [run(model, spans[0]) for model in models]
        widths = [int(logits.shape[-1]) for logits in firsts]  # the width of each model's logits
        V = min([*widths, known]) if known is not None else widths[0]
        if pair:
            _pair_meta(metas, names, widths)
        if max(ids[1:T + 1]) >= V:  # an observed token no row gives (a tokenizer longer than the logits)
            raise RecordError(f"--text {args.text}: token id {max(ids[1:T + 1])} is not among the V = {V} ids "
                              f"that {'both models score' if pair else 'the model scores'}")
        _check_room(outs, trace_bytes(T, V, args.dtype, True), T, V)
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(TraceWriter(out, T, V, args.dtype)) for out in outs]
            for span in spans:
                blocks = firsts if span is spans[0] else [run(model, span) for model in models]
                for writer, logits in zip(writers, blocks, strict=True):
                    writer.write(rows(logits, V))
                bar.update(span[2] - span[1])
            tokens, words = np.asarray(ids[1:T + 1], dtype=np.int64), vocabulary(tokenizer, V)
            done: list[Path] = []
            try:
                for writer, meta in zip(writers, metas, strict=True):
                    done.append(writer.finish(tokens=tokens, vocabulary=words, meta=meta))
            except BaseException:
                for path in done:  # both traces or neither
                    path.unlink(missing_ok=True)
                raise
            return done


def _pair_meta(metas: list[dict[str, Any]], names: Sequence[str], widths: Sequence[int]) -> None:
    """Add to a pair's ``meta`` the other model and the width of each model's logits before the cut to V."""
    metas[0].update({"draft_model": str(names[1]), "logits_width": widths[0]})
    metas[1].update({"target_model": str(names[0]), "logits_width": widths[1]})


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
                        help="tokens per window, at most each model's context length (default: the shortest of them)")
    parser.add_argument("--stride", type=int_at_least(1), metavar="S",
                        help="new positions per later window, 1 .. L (default: L // 2)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    network = parser.add_mutually_exclusive_group()
    network.add_argument("--download", action="store_true",
                         help="let transformers download a Hub model missing from the local cache (default: never)")
    network.add_argument("--local-files-only", action="store_true",
                         help="never download (the default now; accepted so that earlier command lines still run)")
    parser.add_argument("--draft-model", metavar="NAME_OR_DIR",
                        help="also record this model (same tokenizer) over the same token ids, to --draft-out")
    parser.add_argument("--draft-out", metavar="FILE.npz", help="the draft model's trace (with --draft-model)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "record_trace") -> int:
    """Entry point of ``thermospec record-trace`` (and ``python -m scripts.record_trace``); returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    outs = [Path(args.out)]
    if (args.draft_model is None) != (args.draft_out is None):
        parser.error("--draft-model and --draft-out go together (the draft model's trace and where it goes)")
    if args.draft_out is not None:
        outs.append(Path(args.draft_out))
        if outs[1].resolve() == outs[0].resolve():
            parser.error(f"--draft-out: {args.draft_out} is --out; the two traces need two files")
    for flag, out in zip(("--out", "--draft-out"), outs, strict=False):
        if out.suffix != ".npz":
            parser.error(f"{flag}: a recorded trace is a .npz (logprobs, tokens, vocab), got {out}")
        if not out.parent.is_dir():
            parser.error(f"{flag}: folder {out.parent} does not exist")
    install_termination_handler()
    try:
        paths = record(args)
    except RecordError as exc:
        return abandon(prog, outs, f"error: {exc}", EXIT_USAGE)
    except CorpusError as exc:
        return abandon(prog, outs, f"error: --text {exc}", EXIT_USAGE)
    except STOPS as exc:
        return stopped(prog, outs, exc)
    for path in paths:
        print(f"wrote {path}: {args.positions} positions, {path.stat().st_size / 2**20:.1f} MiB")
    return 0
