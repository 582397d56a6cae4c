"""``thermospec record-trace`` on a tiny random GPT-2 saved locally: rows are the model's log-softmax.

Needs the optional ``hf`` extra (torch, transformers); nothing is downloaded: the
tokenizer is trained here with ``tokenizers`` and the model built from a config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thermospec.cli import record_trace
from thermospec.runs.interrupts import Terminated
from thermospec.targets.trace import TraceWriter, load_trace, softmax64

torch: Any = pytest.importorskip("torch", reason="the hf extra (torch) is not installed: make test EXTRAS=hf")
transformers: Any = pytest.importorskip(
    "transformers", reason="the hf extra (transformers) is not installed: make test EXTRAS=hf"
)
tokenizers: Any = pytest.importorskip("tokenizers", reason="tokenizers is not installed")

from tests.hf_pair import save_gpt2, train_tokenizer  # noqa: E402  (needs torch, transformers, tokenizers)

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


def forward_logprobs(folder: Path, ids: list[int]) -> Any:
    """The model's log-softmax over `ids` in one direct forward pass, float64."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).float().eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
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
