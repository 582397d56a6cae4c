"""``thermospec audit RUN_DIR``: recompute a run's aggregates from its records and compare.

Streams ``RUN_DIR/m1_metrics.jsonl`` (or ``m1_metrics.parquet``) once (constant memory), recomputes the
step count, acceptance rate, mean overlap, mean CE gap, the χ² of the emitted
tokens against ``N pi`` and the SHA-256 of the file, compares them with
``RUN_DIR/summary.json``, and reports ``|accept - overlap|`` in standard errors.
Exits 1 if anything disagrees or the gap exceeds 4 standard errors.  In a checkout,
``python -m scripts.audit_run RUN_DIR`` is the same command.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np

from thermospec.analysis.audit import audit_jsonl, audit_parquet
from thermospec.cli.options import OneLineParser
from thermospec.core.statistics import pooled_chi2
from thermospec.runs.config import RunConfig
from thermospec.runs.replay import file_sha256
from thermospec.runs.targets import load_target

__all__ = ["MAX_Z", "main"]

MAX_Z = 4.0


def main(argv: Sequence[str] | None = None, prog: str = "audit_run") -> int:
    """Audit one run folder; print the comparison; return the exit status."""
    parser = OneLineParser(prog=prog, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    args = parser.parse_args(argv)
    summary_path = args.run_dir / "summary.json"
    jsonl = args.run_dir / "m1_metrics.jsonl"
    parquet = args.run_dir / "m1_metrics.parquet"
    supported = f"{prog} audits M1 runs: a folder with m1_metrics.jsonl or m1_metrics.parquet"
    if (args.run_dir / "m1_blocks.jsonl").is_file():
        print(f"{prog}: error: {args.run_dir}: a --gamma run (m1_blocks.jsonl); {supported}", file=sys.stderr)
        return 2
    if any(args.run_dir.glob("chain_*")) and not parquet.is_file():
        print(f"{prog}: error: {args.run_dir}: a --chains run; audit one chain_<b>/ folder at a time",
              file=sys.stderr)
        return 2
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"{prog}: error: {summary_path}: cannot be read as a summary ({exc})", file=sys.stderr)
        return 2
    if not isinstance(summary, dict) or not isinstance(summary.get("config"), dict):
        print(f"{prog}: error: {summary_path}: not a single run's summary (no \"config\"; "
              "audit the run folder, not a chain or block folder)", file=sys.stderr)
        return 2
    recorded = summary["config"]
    if recorded.get("trace") is not None or recorded.get("order", 2) > 2:
        kind = "--trace" if recorded.get("trace") is not None else f"--order {recorded.get('order')}"
        print(f"{prog}: error: {args.run_dir}: a {kind} run; {supported} of the bigram chain "
              "(its statistics are per position or per context: not audited yet)", file=sys.stderr)
        return 2
    records = jsonl if jsonl.is_file() else parquet if parquet.is_file() else None
    if records is None:
        print(f"{prog}: error: {args.run_dir}: no records ({supported}; a --telemetry none run has none)",
              file=sys.stderr)
        return 2
    names = {f.name for f in fields(RunConfig)}
    config = RunConfig(**{k: v for k, v in summary["config"].items() if k in names})
    target = load_target(config)
    try:
        audit = audit_jsonl(records, target.V) if records == jsonl else audit_parquet(records, target.V)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    chi2 = pooled_chi2(audit.emitted_counts.astype(np.float64), audit.steps * target.pi)
    sha = file_sha256(records)
    rows = [
        ("steps", summary["steps"], audit.steps, summary["steps"] == audit.steps),
        ("accept_rate", summary["accept_rate"], audit.accept_rate, summary["accept_rate"] == audit.accept_rate),
        ("mean_overlap", summary["mean_overlap"], audit.mean_overlap,
         math.isclose(summary["mean_overlap"], audit.mean_overlap, rel_tol=1e-12)),
        ("mean_ce_gap", summary["mean_ce_gap"], audit.mean_ce_gap,
         summary["mean_ce_gap"] == audit.mean_ce_gap if audit.mean_ce_gap is None
         else math.isclose(summary["mean_ce_gap"], audit.mean_ce_gap, rel_tol=1e-12)),
        ("chi2_stat", summary["chi2_stat"], chi2.stat, math.isclose(summary["chi2_stat"], chi2.stat, rel_tol=1e-9)),
        ("p_value", summary["p_value"], chi2.p_value, math.isclose(summary["p_value"], chi2.p_value, rel_tol=1e-6)),
        ("metrics_sha256", summary.get("metrics_sha256"), sha, summary.get("metrics_sha256") in (None, sha)),
        ("whole lines", True, audit.whole_lines, audit.whole_lines),
    ]
    ok = all(r[3] for r in rows)
    for name, recorded, recomputed, same in rows:
        print(f"{name:<15} summary {recorded!s:<68} records {recomputed!s:<68} {'ok' if same else 'DIFFERS'}")
    z = audit.accept_overlap_z
    print(f"\naccept - overlap = {audit.accept_rate - audit.mean_overlap:+.3e}, "
          f"SE = {audit.accept_overlap_se:.3e}, z = {z:+.2f} (|z| must be < {MAX_Z:g})")
    print(f"chi2 vs pi: {chi2.stat:.1f} on {chi2.dof} dof, p = {chi2.p_value:.3f}")
    return 0 if ok and abs(z) < MAX_Z else 1

