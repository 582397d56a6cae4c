"""Every option composes (issue 16): the whole matrix of run options, one case per combination.

The axes (docs/composition.md): context source (synthetic bigram, corpus characters, BPE tokens, order-4
contexts, a trace) × verifier (one draft; two drafts with each verifier; γ = 3 blocks; γ = 2 trees of two
drafts with each verifier) × chains (1, 3) × sink (JSONL, Parquet, none), with SimTSU, and a few with THRML.
A combination either is refused — and then it is in `EXPECTED_REFUSALS` and must raise a one-line
`ConfigError` that gives a reason, writing nothing — or it runs, and then (through `thermospec.run`):

(a) its emitted tokens, each paired with the key it was emitted in by walking the records with the source's
    own moves, follow the target row of that key (pooled per-key χ², p > 1e-4), and the same counts
    against the row of the next visited key fail (p < 1e-6): the test has power;
(b) its acceptance matches the exact expectation at the visited keys within 5 standard errors: accepted
    steps against ``Σ α(key)`` (one call per step), or the blocks' mean accepted length against the
    dynamic program's ``E_γ`` of their first keys (and the summary's ``expected_accepted_length_given_starts``
    is that mean);
(c) chain 0 of 3 chains is the 1-chain run with the same seed (record for record; its 700 steps are a prefix
    of the 2,000 of the 1-chain run) and chain 1 differs; Parquet holds the JSONL records; ``none`` writes
    only ``summary.json``, with the numbers of the JSONL run.

Sizes: 2,000 tokens per 1-chain run, 3 × 700 per 3-chain run (THRML: 1,500 and 3 × 500); the BPE corpus is
the small text 20 times (Laplace +1 over V = 260 flattens the rows of a shorter one: the control would not
fail).  The runs a case compares against (the JSONL run, the 1-chain run) are made once and shared.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import thermospec
from scripts.make_trace import write_trace
from tests.matrix_law import KeyLaw, block_length, block_pairs, exactness, step_acceptance, step_pairs
from tests.test_compose import TEXT
from thermospec.runs.config import ConfigError, RunConfig
from thermospec.runs.prepare import PreparedRun, context_source, prepare_run

SOURCES = ("bigram", "corpus", "bpe", "order", "trace")
VERIFIERS: dict[str, dict[str, Any]] = {
    "m1": {},
    "drafts-recursive": {"drafts": 2, "verifier": "recursive"},
    "drafts-spectr": {"drafts": 2, "verifier": "spectr"},
    "drafts-optimal": {"drafts": 2, "verifier": "optimal"},
    "blocks": {"gamma": 3},
    "tree-recursive": {"gamma": 2, "drafts": 2, "verifier": "recursive"},
    "tree-spectr": {"gamma": 2, "drafts": 2, "verifier": "spectr"},
    "tree-optimal": {"gamma": 2, "drafts": 2, "verifier": "optimal"},
}
CHAINS = (1, 3)
SINKS = ("jsonl", "parquet", "none")
STEPS = {("sim", 1): 2000, ("sim", 3): 700, ("thrml", 1): 1500, ("thrml", 3): 500}
SEED = 7

Case = tuple[str, str, int, str, str]
"""(source, verifier, chains, sink, tsu)."""

THRML_CASES: tuple[Case, ...] = (
    ("bigram", "m1", 1, "jsonl", "thrml"),
    ("bigram", "m1", 3, "jsonl", "thrml"),
    ("order", "blocks", 1, "jsonl", "thrml"),
    ("order", "blocks", 3, "jsonl", "thrml"),
    ("trace", "tree-spectr", 1, "jsonl", "thrml"),
    ("trace", "tree-spectr", 1, "parquet", "thrml"),
)
CASES: tuple[Case, ...] = tuple(
    (s, v, b, k, "sim") for s in SOURCES for v in VERIFIERS for b in CHAINS for k in SINKS) + THRML_CASES

# The combinations refused today (docs/composition.md, "Refusals left").  When a refusal is lifted, its
# cases run, `pytest.raises` reports "DID NOT RAISE", and this set must be updated: the combination is then
# checked like every other (exactness, acceptance, chains and sinks).
EXPECTED_REFUSALS: frozenset[Case] = frozenset()


@dataclass
class Matrix:
    """What the cases share: the context sources' files and laws, and the runs other cases compare against."""

    root: Path
    corpus: Path
    bpe_corpus: Path
    trace: Path
    prepared: dict[str, PreparedRun] = field(default_factory=dict, repr=False)  # a failure's report stays short
    laws: dict[tuple[str, str], KeyLaw] = field(default_factory=dict, repr=False)
    runs: dict[Case, Path] = field(default_factory=dict, repr=False)

    def options(self, source: str) -> dict[str, Any]:
        """The options of a context source."""
        table: dict[str, dict[str, Any]] = {
            "bigram": {"vocab": 16, "K": 4}, "corpus": {"corpus": str(self.corpus), "K": 4},
            "bpe": {"corpus": str(self.bpe_corpus), "tokenizer": "bpe:260", "K": 4},
            "order": {"corpus": str(self.corpus), "order": 4, "K": 3}, "trace": {"trace": str(self.trace), "K": 4}}
        return table[source]

    def law(self, source: str, verifier: str) -> KeyLaw:
        """The exact per-key law of a verifier on a source (SimTSU's F(ψ): THRML draws the same law)."""
        options = VERIFIERS[verifier]
        n = options.get("drafts", 1)
        name = options["verifier"] if n > 1 else "one draft"  # N drafts per step and per tree level share it
        found = self.laws.get((source, name))
        if found is None:
            run = self.prepared.get(source)
            if run is None:
                run = self.prepared[source] = prepare_run(RunConfig(**self.options(source), seed=SEED))
            found = self.laws[(source, name)] = KeyLaw(context_source(run), run.proposer.draft, name, n)
        return found

    def run(self, case: Case, runs_dir: Path) -> Path:
        """Run a combination into `runs_dir`; return its folder."""
        source, verifier, chains, sink, tsu = case
        result = thermospec.run(runs_dir=runs_dir, telemetry=sink, chains=chains, steps=STEPS[(tsu, chains)],
                                seed=SEED, tsu=tsu, **self.options(source), **VERIFIERS[verifier])
        folder: Path = result.run_dir
        self.runs[case] = folder
        return folder

    def folder(self, case: Case) -> Path:
        """The folder of a run another case compares against, made once."""
        found = self.runs.get(case)
        if found is None:
            runs_dir = self.root / "_".join(map(str, case))
            found = self.run(case, runs_dir)
        return found


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    root = tmp_path_factory.mktemp("matrix")
    corpus = root / "small.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    bpe_corpus = root / "repeated.txt"  # Laplace +1 over V = 260 flattens a short corpus' rows: no power
    bpe_corpus.write_text(TEXT * 20, encoding="utf-8")
    trace = write_trace(root / "trace.npz", 12, 40, 1.2, 5, tokens=True, progress=False)
    return Matrix(root=root, corpus=corpus, bpe_corpus=bpe_corpus, trace=trace)


def records(folder: Path, case: Case) -> list[list[dict[str, Any]]]:
    """Each chain's records, from the case's sink (chains write one JSONL each, or one shared Parquet file)."""
    _, verifier, chains, sink, _ = case
    name = "m1_blocks" if "gamma" in VERIFIERS[verifier] else "m1_metrics"
    if sink == "jsonl":
        files = [folder / f"{name}.jsonl"] if chains == 1 else [folder / f"chain_{b:04d}" / f"{name}.jsonl"
                                                                  for b in range(chains)]
        return [[json.loads(line) for line in path.read_text().splitlines()] for path in files]
    pq = pytest.importorskip("pyarrow.parquet")
    rows: list[dict[str, Any]] = pq.read_table(folder / f"{name}.parquet").to_pylist()
    if chains == 1:
        return [rows]
    return [[{k: v for k, v in row.items() if k != "chain"} for row in rows if row["chain"] == b]
            for b in range(chains)]


TIMING = ("elapsed_s", "tokens_per_s", "telemetry", "metrics_sha256")
"""Summary fields that differ between sinks of one run by design."""


def check_law(matrix: Matrix, case: Case, chains: list[list[dict[str, Any]]], summary: dict[str, Any]) -> None:
    """(a) exactness with its negative control, and (b) acceptance against its exact expectation."""
    source_name, verifier, _, _, _ = case
    law = matrix.law(source_name, verifier)
    source = law.source
    gamma = VERIFIERS[verifier].get("gamma")
    keys, tokens = [], []
    if gamma is None:
        field = {"order": "context", "trace": "position"}.get(source_name, "prev_token")
        accepted: list[bool] = []
        for chain in chains:
            k, t = step_pairs(chain, source, field)
            keys.append(k)
            tokens.append(t)
            accepted.extend(bool(r["accepted"]) for r in chain)
            overlap = np.array([r["overlap_mass"] for r in chain])
            exact = np.array([law.acceptance(x) for x in k.tolist()])
            assert np.allclose(overlap, exact, rtol=0, atol=1e-9), "a record's overlap_mass is not α(key)"
        deviation = step_acceptance(np.concatenate(keys), accepted, law)
    else:
        starts, lengths = [], []
        for chain in chains:
            k, t, s, n = block_pairs(chain, source)
            keys.append(k)
            tokens.append(t)
            starts.append(s)
            lengths.append(n)
        deviation = block_length(np.concatenate(starts), np.concatenate(lengths), law, gamma)
        assert summary["blocks"] == sum(len(c) for c in chains)
        given_starts = summary.get("expected_accepted_length_given_starts")  # trees' summaries carry it
        assert given_starts is None or given_starts == pytest.approx(deviation.expected, abs=1e-9)
    right, wrong = exactness(np.concatenate(keys), np.concatenate(tokens), source)
    assert right.p_value > 1e-4, f"emitted tokens do not follow p(.|key): {right}"
    assert wrong.p_value < 1e-6, f"negative control (the next key's rows) passed, the test has no power: {wrong}"
    assert abs(deviation.z) < 5, f"acceptance is not the exact expectation: {deviation} (z = {deviation.z:.2f})"


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_the_combination_runs_exactly_or_is_refused_with_a_reason(case: Case, matrix: Matrix,
                                                                   tmp_path: Path) -> None:
    source, verifier, chains, sink, tsu = case
    if tsu == "thrml":
        pytest.importorskip("thrml")
    if sink == "parquet":
        pytest.importorskip("pyarrow")
    if case in EXPECTED_REFUSALS:
        with pytest.raises(ConfigError) as refused:
            matrix.run(case, tmp_path)
        message = str(refused.value)
        assert re.fullmatch(r"--[a-z-]+( [^ :]+)?: .{30,}", message), f"not one line with a reason: {message!r}"
        assert not any(tmp_path.iterdir()), "a refused run wrote something"
        return

    folder = matrix.run(case, tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert not summary["interrupted"]
    if sink == "none":
        assert [p.name for p in folder.rglob("*")] == ["summary.json"], "telemetry none wrote records"
        with_records = json.loads((matrix.folder((source, verifier, chains, "jsonl", tsu)) / "summary.json")
                                  .read_text())
        assert {k: v for k, v in summary.items() if k not in TIMING} == {
            k: v for k, v in with_records.items() if k not in TIMING}
        return

    chain_records = records(folder, case)
    assert len(chain_records) == chains and all(chain_records)
    if sink == "parquet":
        assert chain_records == records(matrix.folder((source, verifier, chains, "jsonl", tsu)),
                                        (source, verifier, chains, "jsonl", tsu)), "Parquet is not the JSONL"
    if chains > 1:
        single_case = (source, verifier, 1, "jsonl", tsu)
        (single,) = records(matrix.folder(single_case), single_case)
        assert chain_records[0] == single[:len(chain_records[0])], "chain 0 is not the 1-chain run"
        assert chain_records[1] != chain_records[0][:len(chain_records[1])], "chain 1 repeats chain 0"
    check_law(matrix, case, chain_records, summary)
