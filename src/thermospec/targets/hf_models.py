"""Hugging Face causal LMs as a context source: loaded safely, scored with a KV cache that rolls back.

`load_model` loads a tokenizer and a causal LM from a ``save_pretrained`` folder
or a Hub name already in the local cache (a download only with
``download=True``), from safetensors only (no pickles) and without the
repository's own code.  `check_pair` refuses a draft whose tokenizer does not
give the target's ids.  `CausalLM.rows` returns next-token rows as float64 (the
softmax of the logits cut to the shared vocabulary ``V``) for a context and a
batch of continuations of it, reusing the KV cache of whatever prefix of the
context it already holds: tokens that were scored but not kept (rejected
drafts, the other branches of a tree) are cropped away on the next call.

torch and transformers are imported on first use (the optional ``hf`` extra);
`ModelError` carries every refusal as one line.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["INSTALL_HINT", "MODEL_DTYPES", "CausalLM", "ModelError", "check_pair", "context_length", "libraries",
           "load_model", "model_source_error", "shared_vocabulary"]

MODEL_DTYPES = ("float32", "bfloat16", "float16")
INSTALL_HINT = "pip install torch==2.13.0 && pip install 'thermospec[hf]'"


class ModelError(Exception):
    """A model, tokenizer or device that cannot be used: one line, exit status 2, nothing written."""


def libraries() -> tuple[Any, Any]:
    """torch and transformers, or a `ModelError` naming the extra."""
    try:
        return importlib.import_module("torch"), importlib.import_module("transformers")
    except ImportError as exc:
        raise ModelError(f"needs the hf extra ({exc.name} is missing): {INSTALL_HINT}") from None


def model_source_error(name: str, flag: str) -> str | None:
    """Why `name` cannot be a model (``flag NAME: reason``), or None: a Hub name is left to the loader."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            return f"{flag} {name}: not a folder (a save_pretrained folder or a Hub name)"
        if not (path / "config.json").is_file():
            return f"{flag} {name}: the folder has no config.json (not a save_pretrained folder)"
        return None
    spelt_as_path = name.startswith((".", "/", "~", "\\")) or name.endswith("/") or name.count("/") > 1
    return f"{flag} {name}: no such folder" if spelt_as_path else None


def load_model(name: str, flag: str, *, device: str = "cpu", dtype: str = "float32",
               download: bool = False) -> tuple[Any, Any]:
    """The tokenizer and the causal LM `name`, in eval mode on `device`, or a `ModelError` in one line.

    Only local files unless `download`; weights from safetensors only; never the repository's code.
    """
    error = model_source_error(name, flag)
    if error:
        raise ModelError(error)
    torch, transformers = libraries()
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available")
    options: dict[str, Any] = {"trust_remote_code": False}
    if not download:
        options["local_files_only"] = True
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, **options)
        weights = "dtype" if int(str(transformers.__version__).split(".")[0]) >= 5 else "torch_dtype"
        model = transformers.AutoModelForCausalLM.from_pretrained(  # loaded in `dtype`: a 7 B model in bfloat16
            name, use_safetensors=True, **{weights: getattr(torch, dtype)}, **options)  # never holds float32
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not download and not Path(name).expanduser().exists():
            raise ModelError(f"{flag} {name}: not in the local Hugging Face cache; --download fetches it "
                             f"from the Hub ({first})") from None
        raise ModelError(f"{flag} {name}: not a causal LM with safetensors weights ({first})") from None
    return tokenizer, model.to(device=device, dtype=getattr(torch, dtype)).eval()


def context_length(model: Any, tokenizer: Any) -> int | None:
    """The model's context length (its config's ``n_positions``/``max_position_embeddings``/...), or None."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 1:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 1 < limit < 1_000_000 else None


def shared_vocabulary(tokenizer: Any, *models: Any) -> int:
    """V: the tokenizer's length, cut to the narrowest output layer (models of a family pad theirs differently)."""
    widths = [len(tokenizer)]
    for model in models:
        output = model.get_output_embeddings()
        widths.append(int(output.weight.shape[0]) if output is not None else int(model.config.vocab_size))
    return min(widths)


def check_pair(target_tokenizer: Any, draft_tokenizer: Any, draft_name: str, probe: str) -> None:
    """Refuse a draft tokenizer that disagrees with the target's (vocabulary, end of sequence, or `probe`'s ids)."""
    if target_tokenizer.get_vocab() != draft_tokenizer.get_vocab():
        raise ModelError(f"--draft-model {draft_name}: its tokenizer's vocabulary differs from the target's "
                         f"({len(draft_tokenizer)} vs {len(target_tokenizer)} tokens); the pair must share one")
    if target_tokenizer.eos_token_id != draft_tokenizer.eos_token_id:
        raise ModelError(f"--draft-model {draft_name}: its end-of-sequence id {draft_tokenizer.eos_token_id} "
                         f"differs from the target's {target_tokenizer.eos_token_id}")
    if list(target_tokenizer(probe)["input_ids"]) != list(draft_tokenizer(probe)["input_ids"]):
        raise ModelError(f"--draft-model {draft_name}: its tokenizer gives other ids than the target's for the "
                         "prompt; the pair must share one tokenizer")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class CausalLM:
    """One causal LM scored with a KV cache: next-token rows for a context and continuations of it.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        In eval mode, on its device.
    V : int
        Rows are the softmax of the first `V` logits (`shared_vocabulary`).

    Attributes
    ----------
    calls : int
        Forward passes so far (a batch of continuations is one).
    seconds : float
        Wall time spent in them, rows converted to float64 included.
    """

    def __init__(self, model: Any, V: int) -> None:
        self.torch, _ = libraries()
        self.model = model
        self.V = V
        self.device = next(model.parameters()).device
        self.calls = 0
        self.seconds = 0.0
        self.cache: Any = None
        self.cached: list[list[int]] = []  # the tokens whose keys and values each batch row of the cache holds
        self.cache_keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def _settle(self, context: Sequence[int]) -> int:
        """Keep in the cache the longest prefix of `context` it holds, short of its last token; return its length."""
        if self.cache is None or not self.cached:
            return 0
        try:
            if len(self.cached) > 1:  # a batch of branches: keep the one that shares most with the context
                best = max(range(len(self.cached)), key=lambda b: _common_prefix(self.cached[b], context))
                self.cache.batch_select_indices(self.torch.tensor([best], device=self.device))
                self.cached = [self.cached[best]]
            keep = min(_common_prefix(self.cached[0], context), len(context) - 1)
            if 0 < keep < len(self.cached[0]):
                self.cache.crop(keep - len(self.cached[0]))  # a negative count: tokens removed from the end
                self.cached = [self.cached[0][:keep]]
        except (AttributeError, NotImplementedError, ValueError):  # a cache that cannot be cut: score afresh
            keep = 0
        if keep == 0:
            self.cache, self.cached = None, []
        return keep

    def rows(self, context: Sequence[int], paths: Sequence[Sequence[int]] = ((),)) -> NDArray[np.float64]:
        """Next-token rows after ``context + path[:j]`` for each path and ``j = 0 .. len(path)``.

        Parameters
        ----------
        context : sequence of int
            At least one token.
        paths : sequence of sequences of int
            Continuations of one length (a batch of B paths is one forward pass).

        Returns
        -------
        ndarray of float64, shape (B, L + 1, V)
            Row ``[b, j]`` is p(· | context + paths[b][:j]).
        """
        started = time.perf_counter()
        torch = self.torch
        keep = self._settle(context)
        width = {len(p) for p in paths}
        if len(width) != 1 or not context:
            raise ValueError("rows: needs a context and paths of one length")
        cache, self.cache, self.cached = self.cache, None, []  # an interrupted forward leaves no stale cache
        if len(paths) > 1 and cache is not None:
            try:
                cache.batch_repeat_interleave(len(paths))  # in place: the batch replaces it
            except (AttributeError, NotImplementedError, ValueError):  # a cache that cannot be copied per path
                cache, keep = None, 0
        fed = [list(context[keep:]) + list(p) for p in paths]
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor(fed, dtype=torch.long, device=self.device),
                             use_cache=True, **{self.cache_keyword: cache})
            first = len(context) - keep - 1
            logits = out.logits[:, first:, : self.V].double()
            probs = torch.softmax(logits, dim=-1).cpu().numpy()
        self.cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        prefix = list(context[:keep])
        self.cached = [prefix + f for f in fed] if self.cache is not None else []
        self.calls += 1
        self.seconds += time.perf_counter() - started
        rows: NDArray[np.float64] = np.ascontiguousarray(probs, dtype=np.float64)
        return rows

    def row(self, context: Sequence[int]) -> NDArray[np.float64]:
        """p(· | context), shape (V,)."""
        row: NDArray[np.float64] = self.rows(context)[0, 0]
        return row
