"""Golden outputs: the bytes every mode writes, pinned by SHA-256.

Recorded once, before the package was redesigned (issue 7), from the tree of
the time; a refactor must keep every digest. A deliberate change of output
re-records them (``python -m tests.test_golden``) and says so in its commit
and in the README's Compatibility notes.

The float fields of the outputs go through NumPy's ``exp`` and ``log``, whose
float64 loops NumPy dispatches by CPU (its own AVX-512F code where the CPU has
it, the C library's elsewhere): their last bits, and so the digests, differ
between the two kinds of x86-64 machine, while tokens never do.  The digests are
therefore kept per machine class (`machine_class`): ``golden_outputs.json`` was
recorded on an AVX-512 machine before the redesign, ``golden_outputs.avx2.json``
from the same code on an AVX2-only machine (2026-12-06).  A class with no file, or
a case its file lacks, is skipped and says so.

Each case runs the CLI in-process and hashes every telemetry file it wrote
(JSONL as bytes; Parquet as its table's columns, so that the pyarrow version
does not matter) and the summary's statistics: the summary without the fields
that depend on the machine or the clock (timings, versions) or repeat a digest.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from scripts.make_trace import write_trace
from tests.conftest import CORPUS_CANDIDATES
from thermospec.cli.m1 import main
from thermospec.cli.sweep import grid_main, seed_main

GOLDEN_FILES = {"avx512": Path(__file__).with_name("golden_outputs.json"),
                "avx2": Path(__file__).with_name("golden_outputs.avx2.json")}
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
    # Added before the run loop was unified (issue 16): every mode that had no case yet.
    "drafts4_recursive": ["--drafts", "4", "--verifier", "recursive", "--steps", "1500"],
    "drafts3_spectr": ["--drafts", "3", "--verifier", "spectr", "--steps", "1500"],
    "drafts2_optimal": ["--drafts", "2", "--verifier", "optimal", "--steps", "1500"],
    "corpus_drafts2_none": ["--corpus", "{corpus}", "--K", "8", "--drafts", "2", "--verifier", "recursive",
                            "--telemetry", "none", "--steps", "1500"],
    "corpus_order5": ["--corpus", "{corpus}", "--order", "5", "--K", "8"],
    "corpus_order5_none": ["--corpus", "{corpus}", "--order", "5", "--K", "8", "--telemetry", "none"],
    "trace": ["--trace", "{trace}", "--K", "16"],
    "trace_none": ["--trace", "{trace}", "--K", "16", "--telemetry", "none"],
    "thrml": ["--tsu", "thrml", "--vocab", "16", "--K", "4", "--steps", "300"],
    # Added when γ-blocks and token trees moved onto the compiled kernel (issue 16, 2026-12-07): the block
    # and tree paths on every source and with chains, as the kernel now runs them.
    "corpus_order4_gamma3": ["--corpus", "{corpus}", "--order", "4", "--K", "8", "--gamma", "3", "--steps", "2000"],
    "gamma3_chains3": ["--gamma", "3", "--chains", "3", "--steps", "2000"],
    "trees_gamma2_drafts2": ["--gamma", "2", "--drafts", "2", "--verifier", "recursive", "--steps", "2000"],
    "trace_gamma2_parquet": ["--trace", "{trace}", "--K", "16", "--gamma", "2", "--telemetry", "parquet"],
}
SWEEP_COMMANDS = {"grid": grid_main, "seeds": seed_main}
ADDED_KEYS: dict[str, set[str]] = {
    # Summary keys added on purpose since the digests were recorded (README: what changed); a summary may
    # change only by added keys, and these are left out of its digest.
    # 2026-12-06, issue 16: a --gamma summary carries the guide's acceptance over verified positions.
    "gamma4": {"verified_positions", "accept_rate", "mean_overlap", "accept_overlap_gap", "mean_ce_gap"},
    "corpus_gamma4": {"verified_positions", "accept_rate", "mean_overlap", "accept_overlap_gap", "mean_ce_gap"},
}
ADDED_EVERYWHERE = {"loss_draft_model", "loss_top_k", "loss_quantisation", "gain_drafts"}
"""2026-12-07, issue 17: every summary says where the acceptance goes (and with N drafts, what they gain)."""


def machine_class() -> str:
    """``avx512`` where NumPy dispatches its AVX-512F float64 loops, ``avx2`` on other x86-64, else the machine."""
    import platform

    from numpy._core._multiarray_umath import __cpu_features__ as features  # type: ignore[import-not-found]

    if features.get("AVX512F") and features.get("AVX512_SKX"):
        return "avx512"
    if features.get("AVX2"):
        return "avx2"
    return platform.machine() or "unknown"


def golden_file() -> Path:
    """The digests of this machine's class (the file may not exist)."""
    kind = machine_class()
    return GOLDEN_FILES.get(kind, Path(__file__).with_name(f"golden_outputs.{kind}.json"))


def corpus_path() -> Path | None:
    return next((p for p in CORPUS_CANDIDATES if p.is_file()), None)


def summary_digest(path: Path, added: Collection[str] = ()) -> str:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in VOLATILE}
        return node

    document = strip(json.loads(path.read_text()))
    for key in added:
        document.pop(key, None)
    for part in ("target", "config"):  # the corpus' and trace's paths differ between machines
        for key in ("corpus", "trace"):
            document.get(part, {}).pop(key, None)
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


def trace_path(folder: Path) -> Path:
    """A small recorded-like trace with tokens (64 positions, V = 512), the same bytes every time."""
    path = folder / "golden_trace.npz"
    if not path.exists():
        write_trace(path, 64, 512, 1.1, 3, tokens=True, progress=False)
    return path


def run_case(name: str, tmp: Path) -> dict[str, str]:
    corpus = corpus_path()
    args = [a.replace("{corpus}", str(corpus)) for a in CASES[name]]
    if "{trace}" in args:
        args = [a.replace("{trace}", str(trace_path(tmp))) for a in args]
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
            added = ADDED_KEYS.get(name, set()) | ADDED_EVERYWHERE
            digests[key] = summary_digest(path, added) if path.name == "summary.json" else file_digest(path)
    return digests


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_match_golden_digests(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if "{corpus}" in CASES[name] and corpus_path() is None:
        pytest.skip("Tiny Shakespeare not found (see README: Data)")
    if name == "bpe512":
        pytest.importorskip("tokenizers")
    if name == "parquet":
        pytest.importorskip("pyarrow")
    if name == "thrml":
        pytest.importorskip("thrml")
    golden = golden_file()
    if not golden.is_file():
        pytest.skip(f"no golden digests for this machine class ({machine_class()}): record {golden.name} on purpose")
    expected = json.loads(golden.read_text()).get(name)
    if expected is None:
        pytest.skip(f"{golden.name} has no digests of {name!r} (recorded on another machine class)")
    assert run_case(name, tmp_path) == expected
    capsys.readouterr()


if __name__ == "__main__":  # re-record: only for a deliberate change of output
    import tempfile

    only = sys.argv[1:]  # names of the cases to (re-)record; none: every case of this machine class
    target = golden_file()
    record = json.loads(target.read_text()) if target.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        record |= {name: run_case(name, Path(tmp)) for name in sorted(CASES) if not only or name in only}
    target.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    sys.stdout.write(f"recorded {len(record)} cases in {target}\n")
