"""``generate`` on a tiny random GPT-2 pair saved locally: exact output, KV rollback, files, refusals.

The pair (tests/hf_pair.py) shares one byte-level BPE of 300 tokens; its rows are
peaked (weights drawn wide) and the draft is a blend of the target's weights with
random ones, so drafts are accepted about half the time and rollback after both
acceptance and rejection is exercised.  Exactness: the first emitted token's law
is the target's row computed directly with transformers (χ²), and every emitted
token passes a randomised probability-integral transform against the target's
row recomputed from the emitted prefix without any cache; the same tests against
the draft model's rows (the negative control) fail.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thermospec.core.statistics import pooled_chi2

torch: Any = pytest.importorskip("torch", reason="the hf extra (torch) is not installed: make test EXTRAS=hf")
transformers: Any = pytest.importorskip(
    "transformers", reason="the hf extra (transformers) is not installed: make test EXTRAS=hf"
)
pytest.importorskip("tokenizers", reason="tokenizers is not installed")

from tests.hf_pair import ModelPair, save_gpt2, save_pair, train_tokenizer  # noqa: E402
from thermospec.cli import generate as cli  # noqa: E402
from thermospec.runs import decode  # noqa: E402
from thermospec.runs import generate as api  # noqa: E402
from thermospec.targets.hf_models import CausalLM, ModelError  # noqa: E402

PROMPT = "First Citizen:\nBefore we proceed"
MODES = {  # name: (gamma, drafts, verifier)
    "m1": (None, 1, "recursive"),
    "gamma3": (3, 1, "recursive"),
    "tree": (2, 2, "recursive"),
}


@pytest.fixture(scope="module")
def folders(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelPair:
    torch.set_num_threads(1)  # tiny models: one thread is ~10x faster than two on a busy machine
    text = shakespeare.read_text(encoding="utf-8")[:50_000]
    return save_pair(tmp_path_factory.mktemp("hf-pair"), text, blend=0.1)


@pytest.fixture(scope="module")
def pair(folders: ModelPair) -> api.Pair:
    transformers.utils.logging.disable_progress_bar()
    return api.load_pair(str(folders.target), str(folders.draft))


def direct_rows(model: Any, ids: list[int], V: int) -> Any:
    """p(· | ids[:t + 1]) for every t, from one forward pass without a cache, float64."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :, :V].double()
    return torch.softmax(logits, dim=-1).numpy()


def pit_values(rows: Any, tokens: list[int], rng: np.random.Generator) -> Any:
    """Randomised PIT of each token against its row, tokens ranked by that row's probability (most likely
    first): ``F(y⁻) + U·p(y)`` is uniform iff y follows the row; a token more (or less) likely under the true
    law than under the row tested shows as too many small (or large) values."""
    order = np.argsort(-rows, axis=1, kind="stable")
    ranked = np.take_along_axis(rows, order, axis=1)
    rank = np.argmax(order == np.asarray(tokens)[:, None], axis=1)
    index = np.arange(len(tokens))
    p_y = ranked[index, rank]
    return np.cumsum(ranked, axis=1)[index, rank] - p_y + rng.random(len(tokens)) * p_y


@pytest.mark.parametrize("mode", sorted(MODES))
def test_generated_tokens_follow_the_target(pair: api.Pair, mode: str) -> None:
    gamma, drafts, verifier = MODES[mode]
    rng = np.random.default_rng(19)
    generations, length = 150, 10
    first = np.zeros(pair.V)
    truth, control = [], []
    accepted = rejected = 0
    for seed in range(generations):
        result = api.generate(pair, prompt=PROMPT, max_new_tokens=length, K=16, gamma=gamma, drafts=drafts,
                              verifier=verifier, seed=seed, runs_dir=None)
        ids = result.prompt_ids + result.new_token_ids
        start = len(result.prompt_ids) - 1
        first[result.new_token_ids[0]] += 1
        truth.append(pit_values(direct_rows(pair.target, ids, pair.V)[start:-1], result.new_token_ids, rng))
        control.append(pit_values(direct_rows(pair.draft, ids, pair.V)[start:-1], result.new_token_ids, rng))
        accepted += sum(r["accepted"] for r in result.rounds)
        rejected += sum(len(r["overlap"]) - r["accepted"] for r in result.rounds)
    # the first token's law: the target's row at the prompt, computed directly (the draft's: negative control)
    p = direct_rows(pair.target, result.prompt_ids, pair.V)[-1]
    d = direct_rows(pair.draft, result.prompt_ids, pair.V)[-1]
    assert pooled_chi2(first, generations * p).p_value > 1e-3
    assert pooled_chi2(first, generations * d).p_value < 1e-3  # fails at the level the truth passes
    # every token, each against the target's row recomputed from its emitted prefix without a cache
    u, v = np.concatenate(truth), np.concatenate(control)
    assert u.size == generations * length and accepted > 100 and rejected > 100  # rollback after both
    expected = np.full(20, u.size / 20)
    assert pooled_chi2(np.histogram(u, bins=20, range=(0, 1))[0], expected).p_value > 1e-3
    assert pooled_chi2(np.histogram(v, bins=20, range=(0, 1))[0], expected).p_value < 1e-6


@pytest.mark.parametrize("croppable", [True, False])
def test_cached_rows_are_the_direct_rows(pair: api.Pair, croppable: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not croppable:  # a cache that cannot be cut back: every call scores its text afresh, same rows
        monkeypatch.setattr(transformers.DynamicCache, "crop", lambda self, n: (_ for _ in ()).throw(ValueError()))
    model = CausalLM(pair.target, pair.V)
    prompt = [int(i) for i in pair.tokenizer(PROMPT)["input_ids"]]

    def direct(ids: list[int]) -> Any:
        return direct_rows(pair.target, ids, pair.V)[-1]

    tree = model.rows(prompt, [[5, 6], [7, 8], [7, 9]])  # three branches in one batch
    assert tree.shape == (3, 3, pair.V) and model.calls == 1
    for b, path in enumerate([[5, 6], [7, 8], [7, 9]]):
        for j in range(3):
            np.testing.assert_allclose(tree[b, j], direct(prompt + path[:j]), atol=1e-6)
    for text in ([*prompt, 7, 9, 4], [*prompt, 5], [*prompt, 5, 6, 1, 2], [*prompt, 5, 6, 3], prompt[:4]):
        np.testing.assert_allclose(model.row(text), direct(text), atol=1e-6)  # after acceptance and rejection
    np.testing.assert_allclose(model.rows(prompt, [[1, 2]])[0, 2], direct([*prompt, 1, 2]), atol=1e-6)
    assert model.calls == 7


def test_same_seed_same_tokens_and_the_records_add_up(pair: api.Pair, tmp_path: Path) -> None:
    runs = dict(prompt=PROMPT, max_new_tokens=24, K=8, gamma=3, seed=7)
    first = api.generate(pair, runs_dir=tmp_path, **runs)  # type: ignore[arg-type]
    again = api.generate(pair, runs_dir=None, **runs)  # type: ignore[arg-type]
    other = api.generate(pair, runs_dir=None, **{**runs, "seed": 8})  # type: ignore[arg-type]
    assert first.new_token_ids == again.new_token_ids != other.new_token_ids
    assert len(first.new_token_ids) == 24 and first.text == pair.tokenizer.decode(first.new_token_ids)
    assert first.run_dir is not None
    records = [json.loads(line) for line in (first.run_dir / api.ROUNDS_FILE).read_text().splitlines()]
    summary = json.loads((first.run_dir / "summary.json").read_text())
    assert [t for r in records for t in r["emitted"]] == first.new_token_ids
    assert summary["rounds"] == len(records) and summary["target_calls"] == sum(r["target_calls"] for r in records)
    assert summary["tokens_per_target_call"] == pytest.approx(24 / summary["target_calls"])
    assert summary["psi_bytes"] == sum(r["psi_bytes"] for r in records) and not summary["interrupted"]
    assert summary["tsu_draws"] == 3 * len(records) or records[-1]["block_length"] < 3
    assert set(summary["seconds"]) == {"total", "target", "draft", "tsu", "host"}
    assert summary["versions"]["transformers"] == transformers.__version__


def test_text_is_streamed_in_whole_characters(pair: api.Pair) -> None:
    text = "héllo wörld — ✓ ok"
    ids = [int(i) for i in pair.tokenizer(text)["input_ids"]]
    pieces: list[str] = []
    stream = api.TextStream(pair.tokenizer, pieces.append)
    for end in range(1, len(ids) + 1):
        stream.update(ids[:end])
    stream.update(ids, final=True)
    assert len(ids) > len(text.split()) and "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_the_command_streams_and_writes(folders: ModelPair, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(folders.target), "--draft-model", str(folders.draft), "--prompt", PROMPT,
            "--max-new-tokens", "12", "--K", "16", "--gamma", "2", "--drafts", "2", "--verifier", "spectr",
            "--seed", "3", "--runs-dir", str(tmp_path / "runs"), "--compare"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["new_tokens"] == 12 and summary["verifier"] == "spectr" and summary["drafts"] == 2
    assert out.endswith("\n") and "12 new tokens" in err
    for name in ("thermospec", "plain sampling", "transformers assisted"):
        line = next(line for line in err.splitlines() if line.startswith(name))
        assert len(line.split()) >= 5, line  # new tokens, target calls, tokens per call, seconds
    plain = next(line for line in err.splitlines() if line.startswith("plain sampling")).split()
    assert plain[2:4] == ["12", "12"]  # one target call per token


def test_ctrl_c_keeps_whole_rounds_and_marks_the_summary(
    folders: ModelPair, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = decode.decode_round

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # inside the round: it is dropped
        return original(*args, **kwargs)

    monkeypatch.setattr(api, "decode_round", interrupted)
    argv = ["--model", str(folders.target), "--draft-model", str(folders.draft), "--prompt", PROMPT,
            "--max-new-tokens", "40", "--K", "16", "--gamma", "3", "--seed", "1", "--runs-dir", str(tmp_path)]
    assert cli.main(argv) == 130
    (run_dir,) = tmp_path.iterdir()
    records = (run_dir / api.ROUNDS_FILE).read_text().splitlines()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(records) == summary["rounds"] == 2 and all(json.loads(r)["round"] < 2 for r in records)
    assert summary["interrupted"] and summary["interrupted_by"] == "SIGINT" and summary["stopped_by"] == "interrupted"
    assert "interrupted" in capsys.readouterr().err


@pytest.fixture(scope="module")
def odd_models(folders: ModelPair, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model whose tokenizer differs from the pair's, and a folder whose config is not a causal LM."""
    root = tmp_path_factory.mktemp("odd")
    other = save_gpt2(root / "other", train_tokenizer("a b c d e f g h " * 200, 280), seed=5)
    vision = root / "vision"
    transformers.AutoTokenizer.from_pretrained(folders.target).save_pretrained(vision)
    transformers.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=8).save_pretrained(vision)
    return {"other": other, "vision": vision}


REFUSALS = [  # (arguments replacing the defaults, what the one line says)
    ({"--model": "./no-such-model"}, "--model ./no-such-model: no such folder"),
    ({"--model": "nobody-here/no-such-model"}, "not in the local Hugging Face cache; --download fetches it"),
    ({"--model": "{vision}"}, "not a causal LM"),
    ({"--draft-model": "{other}"}, "vocabulary differs from the target's"),
    ({"--prompt": ""}, "--prompt: empty"),
    ({"--max-new-tokens": "120"}, "exceed the model's context length 128"),
    ({"--max-new-tokens": "0"}, "--max-new-tokens"),
    ({"--draft-model": None, "--gamma": "3"}, "only --gamma 1 is possible"),
    ({"--prompt": None, "--prompt-file": "./no-such-prompt.txt"}, "--prompt-file ./no-such-prompt.txt: No such"),
    ({"--psi-budget": "52"}, "--psi-budget: not with generate"),
    ({"--verifier": "spectr"}, "--verifier: applies to N drafts"),
    ({"--K": "301"}, "--K: must be in 1 .. 300"),
    ({"--gamma": "6", "--drafts": "5"}, "drafted nodes per round; at most 4,096"),
    ({"--eps": "0.5"}, "--eps: (V - K) * eps must be < 1"),
    ({"--runs-dir": "{file}"}, "is a file, not a folder"),
]


@pytest.mark.parametrize(("change", "says"), REFUSALS)
def test_bad_input_is_one_line_and_exit_2(folders: ModelPair, odd_models: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                          change: dict[str, str | None], says: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt would fail differently, not hang
    options: dict[str, str | None] = {"--model": str(folders.target), "--draft-model": str(folders.draft),
                                      "--prompt": PROMPT, "--max-new-tokens": "8", "--K": "16", "--seed": "0",
                                      "--runs-dir": str(tmp_path / "runs")}
    (tmp_path / "a_file").write_text("")
    options.update({k: v.format(**odd_models, file=tmp_path / "a_file") if v else v for k, v in change.items()})
    argv = [text for key, value in options.items() if value is not None for text in (key, value)]
    try:
        status = cli.main(argv)
    except SystemExit as stop:  # argparse
        status = int(stop.code or 0)
    out, err = capsys.readouterr()
    assert status == 2 and says in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert out == "" and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("change", "says"), [
    (["--draft-model", None, "--gamma", "3"], "only --gamma 1 is possible"),
    (["--gamma", "6", "--drafts", "5"], "drafted nodes per round; at most 4,096"),
    (["--runs-dir", "{file}"], "is a file, not a folder"),
])
def test_options_the_models_do_not_decide_are_refused_before_loading_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, change: list[str | None],
    says: str
) -> None:
    def no_loading(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("loaded a model before checking the options")

    monkeypatch.setattr(api, "load_model", no_loading)
    (tmp_path / "a_file").write_text("")
    options: dict[str, str | None] = {"--model": "./target", "--draft-model": "./draft", "--prompt": PROMPT,
                                      "--max-new-tokens": "8", "--K": "16", "--seed": "0",
                                      "--runs-dir": str(tmp_path / "runs")}
    options.update({key: value.format(file=tmp_path / "a_file") if value else value
                    for key, value in zip(change[::2], change[1::2], strict=True) if key is not None})
    argv = [text for key, value in options.items() if value is not None for text in (key, value)]
    assert cli.main(argv) == 2
    assert says in capsys.readouterr().err
    with pytest.raises(ModelError, match="only --gamma 1"):
        api.generate("./target", prompt=PROMPT, gamma=2, runs_dir=None)
