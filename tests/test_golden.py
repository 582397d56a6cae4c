"""Golden outputs: the bytes every mode writes, pinned by SHA-256.

Recorded once, before the package was redesigned (issue 7), from the tree of
the time; a refactor must keep every digest. A deliberate change of output
re-records them (``python -m tests.test_golden``) and says so in its commit
and in the README's Compatibility notes.

Each case runs the CLI in-process and hashes every telemetry file it wrote
(JSONL as bytes; Parquet as its table's columns, so that the pyarrow version
does not matter) and the summary's statistics: the summary without the fields
that depend on the machine or the clock (timings, versions) or repeat a digest.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CORPUS_CANDIDATES
from thermospec.cli.m1 import main
from thermospec.cli.sweep import grid_main, seed_main

GOLDEN = Path(__file__).with_name("golden_outputs.json")
STEPS = "4000"
VOLATILE = {"elapsed_s", "tokens_per_s", "versions", "thermospec_version", "metrics_sha256", "streams",
            "interrupted", "interrupted_by", "telemetry"}

CASES: dict[str, list[str]] = {
    "default": [],
    "corpus_K8": ["--corpus", "{corpus}", "--K", "8"],
    "corpus_K64": ["--corpus", "{corpus}", "--K", "64"],
    "tau0.3_eps0": ["--tau", "0.3", "--eps", "0"],
    "K1": ["--K", "1"],
    "V4096": ["--vocab", "4096"],
    "V65536": ["--vocab", "65536", "--steps", "1500"],
    "gamma4": ["--gamma", "4"],
    "corpus_gamma4": ["--corpus", "{corpus}", "--K", "8", "--gamma", "4"],
    "chains4": ["--chains", "4"],
    "chains4_none": ["--chains", "4", "--telemetry", "none"],
    "bpe512": ["--corpus", "{corpus}", "--tokenizer", "bpe:512", "--K", "16"],
    "parquet": ["--telemetry", "parquet"],
    "none": ["--telemetry", "none"],
    "sweep_grid": ["grid", "--Ks", "8", "64", "--taus", "0.9", "1.0", "--seeds", "7", "11", "--jobs", "1"],
    "sweep_grid_corpus": ["grid", "--corpus", "{corpus}", "--Ks", "8", "--taus", "1.0", "--seeds", "7", "--jobs", "1"],
    "sweep_gammas": ["grid", "--Ks", "8", "--taus", "1.0", "--seeds", "7", "--gammas", "1", "4", "--jobs", "1"],
    "sweep_seeds": ["seeds", "--seeds", "7", "11", "--jobs", "1"],
}
SWEEP_COMMANDS = {"grid": grid_main, "seeds": seed_main}


def corpus_path() -> Path | None:
    return next((p for p in CORPUS_CANDIDATES if p.is_file()), None)


def summary_digest(path: Path) -> str:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in VOLATILE}
        return node

    document = strip(json.loads(path.read_text()))
    document.get("target", {}).pop("corpus", None)  # the corpus path differs between machines
    document.get("config", {}).pop("corpus", None)
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def file_digest(path: Path) -> str:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        digest = hashlib.sha256(json.dumps(table.schema.names).encode())
        for name in table.schema.names:
            digest.update(json.dumps(table.column(name).to_pylist()).encode())
        return digest.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_case(name: str, tmp: Path) -> dict[str, str]:
    corpus = corpus_path()
    args = [a.replace("{corpus}", str(corpus)) for a in CASES[name]]
    steps = [] if "--steps" in args else ["--steps", STEPS]
    runs = tmp / name
    if args and args[0] in SWEEP_COMMANDS:
        status = SWEEP_COMMANDS[args[0]]([*args[1:], *steps, "--quiet", "--runs-dir", str(runs)])
    else:
        status = main(["run", *args, *steps, "--seed", "7", "--quiet", "--runs-dir", str(runs)])
    assert status == 0
    (run_dir,) = runs.iterdir()
    digests = {}
    for path in sorted(run_dir.rglob("*")):
        # Figures and a sweep's own record (sweep.json) are not pinned: issue 8 changes them on purpose.
        if path.is_file() and path.suffix != ".png" and path.name != "sweep.json":
            key = str(path.relative_to(run_dir))
            digests[key] = summary_digest(path) if path.name == "summary.json" else file_digest(path)
    return digests


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_match_golden_digests(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if "{corpus}" in CASES[name] and corpus_path() is None:
        pytest.skip("Tiny Shakespeare not found (see README: Data)")
    if name == "bpe512":
        pytest.importorskip("tokenizers")
    if name == "parquet":
        pytest.importorskip("pyarrow")
    expected = json.loads(GOLDEN.read_text())[name]
    assert run_case(name, tmp_path) == expected
    capsys.readouterr()


if __name__ == "__main__":  # re-record: only for a deliberate change of output
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        record = {name: run_case(name, Path(tmp)) for name in sorted(CASES)}
    GOLDEN.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    sys.stdout.write(f"recorded {len(record)} cases in {GOLDEN}\n")
