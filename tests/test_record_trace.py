"""``thermospec record-trace`` on a tiny random GPT-2 saved locally: rows are the model's log-softmax.

Needs the optional ``hf`` extra (torch, transformers); nothing is downloaded: the
tokenizer is trained here with ``tokenizers`` and the model built from a config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import thermospec
from thermospec.cli import record_trace
from thermospec.core.payload import craft_payload, decode_payload, encode_payload
from thermospec.core.proposal import proposal_distribution
from thermospec.runs.interrupts import Terminated
from thermospec.targets.trace import TraceWriter, load_trace, softmax64
from thermospec.targets.trace_pair import load_draft_trace

torch: Any = pytest.importorskip("torch", reason="the hf extra (torch) is not installed: make test EXTRAS=hf")
transformers: Any = pytest.importorskip(
    "transformers", reason="the hf extra (transformers) is not installed: make test EXTRAS=hf"
)
tokenizers: Any = pytest.importorskip("tokenizers", reason="tokenizers is not installed")

from tests.hf_pair import ModelPair, save_gpt2, save_pair, train_tokenizer  # noqa: E402  (needs the hf extra)

WINDOW = 64
STRIDE = 24


@pytest.fixture(scope="module")
def tiny_model(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1-layer GPT-2 (n_embd 32) with a 300-token byte-level BPE, saved to a folder, and a text file."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    corpus = shakespeare.read_text(encoding="utf-8")
    save_gpt2(folder, train_tokenizer(corpus[:20_000], 300), seed=0, n_positions=WINDOW)  # peaked rows
    text = folder / "text.txt"
    text.write_text(corpus[:700], encoding="utf-8")
    return folder, text


def forward_logprobs(folder: Path, ids: list[int], V: int | None = None) -> Any:
    """The model's log-softmax over `ids` (over its first `V` logits) in one direct forward pass, float64."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).float().eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :, :V]
    return torch.log_softmax(logits.double(), dim=-1).numpy()


def test_windows_cover_every_position_once() -> None:
    spans = record_trace.windows(150, WINDOW, STRIDE)
    assert spans[0] == (0, 0, WINDOW) and spans[1] == (WINDOW + STRIDE - WINDOW, WINDOW, WINDOW + STRIDE)
    covered = [t for _, first, end in spans for t in range(first, end)]
    assert covered == list(range(150))
    assert all(end - start <= WINDOW for start, _, end in spans)


def test_recorded_rows_are_the_models_log_softmax(
    tiny_model: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, text = tiny_model
    seen: list[dict[str, Any]] = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    out = tmp_path / "trace.npz"
    positions = WINDOW + 2 * STRIDE + 5
    argv = ["--model", str(folder), "--text", str(text), "--positions", str(positions), "--out", str(out),
            "--dtype", "float32", "--stride", str(STRIDE), "--local-files-only", "--quiet"]
    assert record_trace.main(argv) == 0
    assert seen and all("trust_remote_code" not in kwargs for kwargs in seen)  # never unless asked
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", original)

    trace = load_trace(out)
    ids = transformers.AutoTokenizer.from_pretrained(folder)(text.read_text(encoding="utf-8"))["input_ids"]
    assert trace.positions == positions and trace.V == len(trace.vocabulary or ()) == 300
    assert trace.tokens is not None and trace.tokens.tolist() == ids[1:positions + 1]
    assert trace.metadata["window"] == WINDOW and trace.metadata["stride"] == STRIDE
    first = forward_logprobs(folder, ids[:WINDOW])  # positions 0 .. 63: one window
    second = forward_logprobs(folder, ids[STRIDE:WINDOW + STRIDE])  # positions 64 .. 87, context from 24
    for t in (0, 1, 17, WINDOW - 1):
        np.testing.assert_allclose(trace.row(t), np.exp(first[t]), rtol=1e-5, atol=1e-9)
    for t in (WINDOW, WINDOW + STRIDE - 1):
        np.testing.assert_allclose(trace.row(t), np.exp(second[t - STRIDE]), rtol=1e-5, atol=1e-9)
    # negative controls: a row one position off, or the same position with its window one token later, differs
    assert np.abs(np.log(trace.row(5)) - first[4]).max() > 0.1
    shifted = forward_logprobs(folder, ids[STRIDE + 1:WINDOW + STRIDE + 1])
    assert np.abs(np.log(trace.row(WINDOW)) - shifted[WINDOW - STRIDE - 1]).max() > 1e-3
    np.testing.assert_allclose(trace.row(WINDOW), softmax64(second[WINDOW - STRIDE]), rtol=1e-5, atol=1e-9)


def test_float16_storage_and_refusals(tiny_model: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    folder, text = tiny_model
    out = tmp_path / "half.npz"
    base = ["--model", str(folder), "--text", str(text), "--local-files-only", "--quiet"]
    assert record_trace.main([*base, "--positions", "40", "--out", str(out)]) == 0
    trace = load_trace(out)
    assert trace.dtype == "float16"
    ids = transformers.AutoTokenizer.from_pretrained(folder)(text.read_text(encoding="utf-8"))["input_ids"]
    exact = forward_logprobs(folder, ids[:40])
    np.testing.assert_allclose(np.log(trace.row(10)), exact[10], atol=0.02)  # float16 logprobs: ~1e-2 nats
    capsys.readouterr()
    for argv, reason in [
        ([*base, "--positions", "100000", "--out", str(tmp_path / "x.npz")], "at most"),
        ([*base, "--positions", "10", "--out", str(tmp_path / "x.npy")], "--out"),
        (["--model", str(folder), "--text", str(tmp_path / "none.txt"), "--positions", "5",
          "--out", str(tmp_path / "x.npz"), "--local-files-only"], "no such file"),
    ]:
        assert exit_status(argv) == 2
        err = capsys.readouterr().err
        assert reason in err and err.count("\n") == 1, err
        assert not (tmp_path / "x.npz").exists() and not (tmp_path / "x.npz.part").exists()


def exit_status(argv: list[str]) -> int:
    """`record_trace.main`'s status, whether it returns it or argparse exits with it."""
    try:
        return record_trace.main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


@pytest.mark.parametrize(("extra", "reason"), [
    (["--window", "1000"], "context length is 64, got 1000"),  # was an IndexError traceback
    (["--window", "1"], "--window: must be an integer >= 2"),  # was "the model states no context length"
    (["--stride", "0"], "--stride: must be an integer >= 1"),  # was silently L // 2
    (["--window", "16", "--stride", "17"], "--stride: must be in 1 .. 16"),
])
def test_window_and_stride_are_checked_against_the_model(
    tiny_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], reason: str
) -> None:
    folder, text = tiny_model
    out = tmp_path / "t.npz"
    argv = ["--model", str(folder), "--text", str(text), "--positions", "30", "--out", str(out), "--quiet", *extra]
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert reason in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("model", "reason"), [
    ("./no-such-model", "no such folder"),  # was transformers' "Repo id must be in the form ..."
    ("nobody-here/no-such-model", "--download"),  # a Hub name not in the cache: never fetched unless asked
])
def test_a_missing_model_is_named_and_nothing_is_downloaded(
    tiny_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    model: str, reason: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt would fail differently, not hang
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-cache"))
    _, text = tiny_model
    assert exit_status(["--model", model, "--text", str(text), "--positions", "5", "--out", "t.npz"]) == 2
    err = capsys.readouterr().err
    assert reason in err and f"--model {model}" in err and err.count("\n") == 1, err
    assert not (tmp_path / "t.npz").exists() and not (tmp_path / "t.npz.part").exists()


def test_downloads_only_with_download(tiny_model: tuple[Path, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder, text = tiny_model
    seen: list[dict[str, Any]] = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = auto.from_pretrained

        def spy(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            seen.append(kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    base = ["--model", str(folder), "--text", str(text), "--positions", "8", "--quiet"]
    assert record_trace.main([*base, "--out", str(tmp_path / "a.npz")]) == 0
    assert len(seen) == 2 and all(kwargs.get("local_files_only") is True for kwargs in seen)
    seen.clear()
    assert record_trace.main([*base, "--out", str(tmp_path / "b.npz"), "--download"]) == 0
    assert len(seen) == 2 and all("local_files_only" not in kwargs for kwargs in seen)


@pytest.mark.parametrize(("stop", "status", "says"), [
    (KeyboardInterrupt, 130, "interrupted"),  # was a KeyboardInterrupt traceback
    (Terminated, 143, "terminated (SIGTERM)"),  # SIGTERM left the .part file
    (OSError(28, "No space left on device"), 1, "No space left on device"),
])
def test_a_stop_mid_recording_is_one_line_and_leaves_nothing(
    tiny_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, stop: BaseException, status: int, says: str,
) -> None:
    folder, text = tiny_model
    write = TraceWriter.write
    calls: list[int] = []

    def write_then_stop(self: Any, rows: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the second window: the part file holds the first
            assert self.path.with_name(self.path.name + ".part").exists()
            raise stop
        write(self, rows)

    monkeypatch.setattr(TraceWriter, "write", write_then_stop)
    out = tmp_path / "t.npz"
    argv = ["--model", str(folder), "--text", str(text), "--positions", str(WINDOW + STRIDE), "--out", str(out),
            "--stride", str(STRIDE), "--quiet"]
    assert record_trace.main(argv) == status
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def pair(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelPair, Path]:
    """A target (2 layers) and a draft (1 layer) GPT-2 sharing one 300-token BPE (tests.hf_pair), and a text."""
    root = tmp_path_factory.mktemp("tiny-pair")
    corpus = shakespeare.read_text(encoding="utf-8")
    models = save_pair(root, corpus[:20_000], vocab_size=300, n_positions=WINDOW)
    text = root / "text.txt"
    text.write_text(corpus[:700], encoding="utf-8")
    return models, text


def members(path: Path) -> dict[str, Any]:
    """A .npz trace's members as arrays (``meta`` as a dict)."""
    with np.load(path, allow_pickle=False) as archive:
        found = {name: archive[name] for name in archive.files}
    found["meta"] = json.loads(str(found["meta"]))
    return found


def test_a_pair_is_one_pass_over_the_same_ids(pair: tuple[ModelPair, Path], tmp_path: Path) -> None:
    models, text = pair
    positions = WINDOW + STRIDE + 7  # two windows
    base = ["--text", str(text), "--positions", str(positions), "--dtype", "float32", "--stride", str(STRIDE),
            "--quiet"]
    target, draft, alone = tmp_path / "t.npz", tmp_path / "d.npz", tmp_path / "alone.npz"
    assert record_trace.main(["--model", str(models.target), *base, "--out", str(alone)]) == 0
    assert record_trace.main(["--model", str(models.target), "--draft-model", str(models.draft), *base,
                              "--out", str(target), "--draft-out", str(draft)]) == 0
    pairs, single = members(target), members(alone)
    # the target's trace is the one the recorder writes alone (its meta also names the draft)
    for name in ("logprobs", "tokens", "vocab"):
        assert single[name].tobytes() == pairs[name].tobytes(), name
    assert pairs["meta"].pop("draft_model") == str(models.draft) and pairs["meta"].pop("logits_width") == 300
    assert pairs["meta"] == single["meta"]
    loaded = load_draft_trace(draft, load_trace(target))
    assert loaded.metadata["model"] == str(models.draft) and loaded.metadata["target_model"] == str(models.target)
    assert (loaded.V, loaded.positions) == (300, positions)
    assert loaded.tokens is not None and loaded.tokens.tolist() == pairs["tokens"].tolist()
    ids = transformers.AutoTokenizer.from_pretrained(models.draft)(text.read_text(encoding="utf-8"))["input_ids"]
    first = forward_logprobs(models.draft, ids[:WINDOW])
    second = forward_logprobs(models.draft, ids[STRIDE:WINDOW + STRIDE])
    np.testing.assert_allclose(np.log(loaded.row(3)), first[3], atol=1e-5)
    np.testing.assert_allclose(np.log(loaded.row(WINDOW + 1)), second[WINDOW + 1 - STRIDE], atol=1e-5)
    assert np.abs(np.log(load_trace(target).row(3)) - first[3]).max() > 0.1  # the draft's rows, not the target's
    # the pair drives a run: ψ from the draft model's row t, verified against the target's row t (issue 17)
    plain = thermospec.run(trace=target, K=16, steps=2 * positions, runs_dir=tmp_path / "runs")
    drafted = thermospec.run(trace=target, draft_trace=draft, K=16, steps=2 * positions, runs_dir=tmp_path / "runs")
    record = drafted.summary.record
    assert plain.summary.record["loss_draft_model"] == 0.0 < record["loss_draft_model"]
    one_draft = 1.0 - record["loss_draft_model"] - record["loss_top_k"] - record["loss_quantisation"]
    assert abs(one_draft - record["mean_overlap"]) < 1e-9
    q = proposal_distribution(decode_payload(encode_payload(craft_payload(loaded.row(3), 16, 1.0, "auto"))))
    with open(drafted.run_dir / "m1_metrics.jsonl", encoding="utf-8") as lines:
        third = [json.loads(line) for line in lines][3]
    assert abs(float(np.minimum(load_trace(target).row(3), q).sum()) - third["overlap_mass"]) < 1e-9


def test_both_traces_are_cut_to_the_vocabulary_they_share(pair: tuple[ModelPair, Path], tmp_path: Path) -> None:
    models, text = pair
    padded = tmp_path / "padded"  # the draft with 20 more logits than its tokenizer has ids (as Qwen2.5 pads)
    config = transformers.AutoConfig.from_pretrained(models.draft, local_files_only=True)
    config.vocab_size = 320
    torch.manual_seed(3)
    transformers.GPT2LMHeadModel(config).save_pretrained(padded)
    transformers.AutoTokenizer.from_pretrained(models.draft).save_pretrained(padded)
    target, draft = tmp_path / "t.npz", tmp_path / "d.npz"
    assert record_trace.main(["--model", str(models.target), "--draft-model", str(padded), "--text", str(text),
                              "--positions", "20", "--out", str(target), "--draft-out", str(draft),
                              "--dtype", "float32", "--quiet"]) == 0
    trace, cut = load_trace(target), load_draft_trace(draft, load_trace(target))
    assert trace.V == cut.V == 300 and cut.metadata["logits_width"] == 320 and trace.metadata["logits_width"] == 300
    ids = transformers.AutoTokenizer.from_pretrained(padded)(text.read_text(encoding="utf-8"))["input_ids"]
    exact = forward_logprobs(padded, ids[:21], V=300)  # the log-softmax over the first 300 logits
    np.testing.assert_allclose(np.log(cut.row(5)), exact[5], atol=1e-5)
    assert np.abs(np.log(cut.row(5)) - forward_logprobs(padded, ids[:21])[5, :300]).max() > 1e-3  # not renormalised


def test_a_pair_refused_before_anything_is_written(
    pair: tuple[ModelPair, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    models, text = pair
    corpus = text.read_text(encoding="utf-8")
    other = save_gpt2(tmp_path / "other", train_tokenizer(corpus * 3, 280), seed=1, n_positions=WINDOW)
    short = save_gpt2(tmp_path / "short", transformers.AutoTokenizer.from_pretrained(models.draft), seed=1,
                      n_positions=32)
    renamed = Path(shutil.copytree(models.draft, tmp_path / "renamed"))  # one id, absent from the text, respelt
    spec = json.loads((renamed / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    vocab["<respelt>"] = vocab.pop(next(word for word, i in vocab.items() if i == 200))  # a byte in no merge
    (renamed / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    capsys.readouterr()  # save_pretrained's progress bars
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt would fail differently, not hang
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-cache"))
    written = tmp_path / "out"
    written.mkdir()
    t, d = str(written / "t.npz"), str(written / "d.npz")
    base = ["--model", str(models.target), "--text", str(text), "--positions", "20", "--quiet"]
    for argv, reason in [
        ([*base, "--draft-model", str(other), "--out", t, "--draft-out", d], "its tokenizer gives other ids"),
        ([*base, "--draft-model", str(renamed), "--out", t, "--draft-out", d], "spells id 200 '<respelt>' where"),
        ([*base, "--draft-model", "nobody-here/no-such-draft", "--out", t, "--draft-out", d],
         "--draft-model nobody-here/no-such-draft: not in the local Hugging Face cache; --download"),
        ([*base, "--draft-model", str(tmp_path / "none"), "--out", t, "--draft-out", d], "no such folder"),
        ([*base, "--draft-model", str(short), "--out", t, "--draft-out", d, "--window", "64"],
         "--window: the draft model's context length is 32, got 64"),
        ([*base, "--draft-model", str(models.draft), "--out", t], "--draft-model and --draft-out go together"),
        ([*base, "--out", t, "--draft-out", d], "--draft-model and --draft-out go together"),
        ([*base, "--draft-model", str(models.draft), "--out", t, "--draft-out", t], "the two traces need two files"),
        ([*base, "--draft-model", str(models.draft), "--out", t, "--draft-out", d[:-1] + "y"], "--draft-out: a"),
    ]:
        assert exit_status(argv) == 2, argv
        err = capsys.readouterr().err
        assert reason in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert list(written.iterdir()) == []
    # the control: the short draft is recorded with the default window, the shorter context length
    assert exit_status([*base, "--draft-model", str(short), "--out", t, "--draft-out", d]) == 0
    assert load_trace(t).metadata["window"] == 32


@pytest.mark.parametrize(("stop", "status", "says"), [
    (KeyboardInterrupt, 130, "interrupted"),
    (OSError(28, "No space left on device"), 1, "No space left on device"),
])
@pytest.mark.parametrize("where", ["write", "finish"])
def test_a_pair_stopped_leaves_neither_trace(
    pair: tuple[ModelPair, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, stop: BaseException, status: int, says: str, where: str,
) -> None:
    models, text = pair
    original = getattr(TraceWriter, where)
    calls: list[int] = []

    def then_stop(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == (3 if where == "write" else 2):  # the target's second window, or the draft's finish
            raise stop
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TraceWriter, where, then_stop)
    argv = ["--model", str(models.target), "--draft-model", str(models.draft), "--text", str(text),
            "--positions", str(WINDOW + STRIDE), "--stride", str(STRIDE), "--quiet",
            "--out", str(tmp_path / "t.npz"), "--draft-out", str(tmp_path / "d.npz")]
    assert record_trace.main(argv) == status
    err = capsys.readouterr().err
    assert says in err and "t.npz and " in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # the target, finished first, is removed with the draft's part


@pytest.mark.parametrize("with_draft", [True, False])
def test_a_text_token_no_row_gives_is_refused(
    pair: tuple[ModelPair, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], with_draft: bool
) -> None:
    models, text = pair
    grown = transformers.AutoTokenizer.from_pretrained(models.target)
    grown.add_tokens(["<odd>"])  # id 300: the tokenizer has it, neither model's 300 logits score it
    target, draft = (Path(shutil.copytree(folder, tmp_path / folder.name)) for folder in (models.target, models.draft))
    for folder in (target, draft):
        grown.save_pretrained(folder)
    corpus = text.read_text(encoding="utf-8")
    odd = tmp_path / "odd.txt"
    odd.write_text(corpus[:40] + "<odd>" + corpus[40:], encoding="utf-8")  # about token 30
    out = tmp_path / "out"
    out.mkdir()
    argv = ["--model", str(target), "--text", str(odd), "--positions", "60", "--out", str(out / "t.npz"), "--quiet"]
    if with_draft:
        argv += ["--draft-model", str(draft), "--draft-out", str(out / "d.npz")]
    assert exit_status(argv) == 2  # was an IndexError traceback from the model's embedding
    err = capsys.readouterr().err
    assert "token id 300 is not among the 300 ids that --model" in err and err.count("\n") == 1, err
    assert list(out.iterdir()) == []
    assert exit_status([*argv[:3], str(text), *argv[4:]]) == 0  # the control: the text without the token
