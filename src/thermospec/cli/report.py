"""What ``run_m1 run`` prints: a short headline of the summary (``--full``: every field); what ``check`` prints.

``summary.json`` stays the complete record; the headline says, in at most ~25
lines, what was run, how far acceptance is from overlap, what each χ² tests and
its p-value, the guide's checklist as PASS/FAIL lines with the numbers behind
them, and the files written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from thermospec.runs.checklist import CheckResult

__all__ = ["check_report", "headline", "summary_table"]


def _or_na(value: float | None) -> str:
    """A figure a summary may leave null (not computed for its source, e.g. the optimum on a trace), or n/a."""
    return "n/a" if value is None else f"{value:.5f}"


def format_value(value: Any) -> str:
    """One summary value as the full table prints it."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str) and not value.isprintable():
        return repr(value)
    return str(value)


def summary_table(summary: dict[str, Any]) -> str:
    """The whole summary as an aligned two-column table (``--full``)."""
    rows: list[tuple[str, str]] = []
    for key, value in summary.items():
        if isinstance(value, dict):
            rows.extend((f"{key}.{k}", format_value(v)) for k, v in value.items())
        else:
            rows.append((key, format_value(value)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}"


def _time_text(summary: dict[str, Any], wall_s: float | None) -> str:
    """`` in 4.35 s (0.9 M tokens/s)``, and the wall time with the summary's own work (its checklist's draws)."""
    if not summary.get("tokens_per_s"):
        return ""
    text = f" in {summary['elapsed_s']:.2f} s ({summary['tokens_per_s'] / 1e6:.3g} M tokens/s"
    if wall_s is not None:
        text += f"; {wall_s:.2f} s with the summary and its checklist"
    return text + ")"


def _target_line(summary: dict[str, Any], wall_s: float | None = None) -> str:
    config, target = summary["config"], summary["target"]
    if target.get("source") == "trace":
        source = (f"trace {config['trace']} ({target['positions']:,} positions, {target['dtype']}, "
                  f"teacher-forced)")
    elif config.get("corpus"):
        source = f"corpus {config['corpus']}"
        if config.get("tokenizer"):
            source += f" ({config['tokenizer']} tokens)"
        if config.get("order"):
            source += f", order {config['order']} (contexts of {config['order'] - 1} characters, backed off)"
    else:
        source = f"{target['source']} Dirichlet bigram, c = {format_value(config['c'])}"
    eps = config["eps"] if config["eps"] == "auto" else format_value(config["eps"])
    psi = summary.get("psi_bytes_max")
    psi_text = f", {psi} bytes" if psi is not None else ""
    K_text = f"K = {config['K_used']}"
    if summary.get("psi_budget"):  # K per context: the budget line below gives the sizes
        K_text, psi_text = f"K ≤ {config['K_used']} per context (--psi-budget)", f", at most {psi} bytes"
    for option, name in (("draft_order", "--draft-order"), ("draft_trace", "--draft-trace")):
        if config.get(option) is not None:
            psi_text += f", crafted from the draft model ({name} {config[option]})"
    return (f"target  {source}, V = {target['V']}\n"
            f"ψ       {K_text}, τ = {format_value(config['tau'])}, ε = {eps}{psi_text}\n"
            f"run     {summary['steps']:,} {'tokens' if config.get('gamma') else 'steps'}, seed {config['seed']}"
            + (f", {config['chains']} chains" if config.get("chains") else "")
            + (f", γ = {config['gamma']}" if config.get("gamma") else "")
            + _time_text(summary, wall_s))


def _chain_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    if summary.get("accept_rate") is not None:
        gap = summary["accept_rate"] - summary["mean_overlap"]
        lines.append(f"accept rate    {summary['accept_rate']:.5f}   overlap {summary['mean_overlap']:.5f}"
                     f"   gap {gap:+.5f}   ("
                     + ("overlap: the verifier's exact acceptance)" if summary.get("drafts")
                        else "overlap: Σ min(p, F(ψ)), the exact acceptance)"))
    if summary.get("drafts"):
        lines.append(f"drafts         N = {summary['drafts']}, {summary['verifier']} verifier, "
                     f"{summary['mean_drafts_used']:.2f} TSU draws/step; one draft accepts "
                     f"{summary['single_draft_acceptance']:.5f}")
        share = summary["gain_fraction"]
        lines.append(f"               optimum {_or_na(summary['acceptance_optimum'])}, "
                     f"bound {_or_na(summary['acceptance_bound'])}"
                     + (f"; measured gain share {share:.2f} (this run's acceptance)" if share is not None else ""))
    if summary.get("chains"):
        lines.append(f"chains         accept rate per chain {summary['chain_accept_rate_min']:.4f} … "
                     f"{summary['chain_accept_rate_max']:.4f}")
    if "mean_ce_gap" in summary and summary.get("steps"):  # a run stopped before its first chunk has none
        ce = summary["mean_ce_gap"]
        ce_text = f"{ce:.4g} nats" if ce is not None else f"infinite on {summary['ce_gap_infinite_steps']} steps"
        lines.append(f"CE gap         {ce_text}   (KL(p ‖ F(ψ)) per step: what ψ loses of the row)")
    if summary.get("chi2_dof") is not None and summary.get("position_chi2_dof") is not None:
        lines.append(f"χ² vs Σ n_t·p_t p = {_p(summary['p_value'])}   ({summary['chi2_stat']:.1f} on "
                     f"{summary['chi2_dof']} dof; tokens vs the trace's marginal: conservative)")
        lines.append(f"position χ²    p = {_p(summary['position_p_value'])}   ({summary['position_chi2_stat']:.1f} "
                     f"on {summary['position_chi2_dof']} dof; tokens vs p_t per position: calibrated)")
    elif summary.get("chi2_dof") is not None:
        lines.append(f"χ² vs N·π      p = {_p(summary['p_value'])}   ({summary['chi2_stat']:.1f} on "
                     f"{summary['chi2_dof']} dof; tokens vs π, the guide's test: strict on a correlated chain)")
    if summary.get("transition_chi2_dof") == 0:
        lines.append("transition χ²  n/a   (too few steps per context: no expected count reaches 5)")
    elif summary.get("transition_chi2_dof"):
        lines.append(f"transition χ²  p = {_p(summary['transition_p_value'])}   "
                     f"({summary['transition_chi2_stat']:.1f} on {summary['transition_chi2_dof']} dof; "
                     "next tokens vs p(·|x) per context: calibrated)")
    return lines


def _block_lines(summary: dict[str, Any]) -> list[str]:
    if not summary.get("blocks"):
        return []
    expected = summary.get("expected") or {}
    exact = expected.get("accepted_length", summary.get("expected_accepted_length_given_starts"))
    se = summary.get("mean_accepted_length_se")
    lines = [
        f"blocks         {summary['blocks']:,} of γ = {summary['gamma']} drafts, one target call each",
        f"accepted       {summary['mean_accepted_length']:.4f}" + (f" ± {se:.4f}" if se is not None else "")
        + (f" per block   (exact {exact:.4f})" if exact is not None else " per block"),
        f"tokens/call    {summary['tokens_per_target_call']:.4f}   modelled speed-up {summary['speedup']:.3f}"
        f" at cost ratio {format_value(summary['cost_ratio'])}",
    ]
    if summary.get("tree_nodes_per_block") is not None:
        lines.append(f"token tree     N = {summary['drafts']} drafts per node ({summary['verifier']}), "
                     f"{summary['tree_nodes_per_block']:,} drafted nodes per block, "
                     f"{summary['tsu_draws_per_token']:.2f} TSU draws per token")
    if summary.get("accept_rate") is not None:
        lines.append(f"accept rate    {summary['accept_rate']:.5f}   overlap {summary['mean_overlap']:.5f}   over "
                     f"{summary['verified_positions']:,} verified positions (the exact acceptance at each)")
    if summary.get("chi2_dof") is not None:
        lines.append(f"χ² vs N·π      p = {_p(summary['p_value'])}   ({summary['chi2_stat']:.1f} on "
                     f"{summary['chi2_dof']} dof; emitted tokens vs π)")
    return lines


CHECK_NAMES = {
    "fixed_context_chi2_3_of_4": ("fixed-context χ²: ≥ 3 of the 4 likeliest contexts with p > 0.05", None, ""),
    "accept_overlap_within_0.03": ("|accept − overlap| < 0.03", "accept_overlap_gap", "gap {:.5f}"),
    "psi_bytes_le_1024": ("ψ ≤ 1024 bytes", "psi_bytes_max", "{} bytes"),
    "psi_bytes_le_1024_every_K_le_128": ("ψ ≤ 1024 bytes for every K ≤ 128 at this V", None, ""),
}


def _loss_lines(summary: dict[str, Any]) -> list[str]:
    """Where the one-draft acceptance goes (docs/draft-models.md), and the ψ budget's design."""
    if summary.get("loss_top_k") is None:
        return []
    lines = [f"lost to        draft model {summary['loss_draft_model']:+.5f}   top-K {summary['loss_top_k']:+.5f}   "
             f"8-bit codes {summary['loss_quantisation']:+.5f}"
             + (f"   ({summary['drafts']} drafts gain {summary['gain_drafts']:+.5f})"
                if summary.get("gain_drafts") is not None else "")]
    budget = summary.get("psi_budget")
    if budget:
        Ks = [int(k) for k in budget["K_steps"]]
        lines.append(f"ψ budget       {format_value(budget['budget_bytes'])} B: design mean "
                     f"{budget['design_mean_bytes']:.2f} B (weights {budget['design_weights']}), realised "
                     f"{budget['realised_mean_bytes']:.2f} B; K {min(Ks)} … {max(Ks)}")
    return lines


def _checklist_lines(summary: dict[str, Any]) -> list[str]:
    checklist = summary.get("checklist") or {}
    if not checklist:
        return []
    lines = ["", "checklist (the guide's; `run_m1 check` prints the p-values behind the fixed-context χ²)"]
    for key, passed in checklist.items():
        name, field, form = CHECK_NAMES.get(key, (key, None, ""))
        if key == "fixed_context_chi2_3_of_4" and summary["target"].get("source") == "trace":
            name = "fixed-position χ²: ≥ 3 of positions 0-3 with p > 0.05"
        elif key == "fixed_context_chi2_3_of_4" and summary["config"].get("order"):
            name = "fixed-context χ²: ≥ 3 of the 4 most frequent contexts with p > 0.05"
        verdict = "SKIP" if passed is None else "PASS" if passed else "FAIL"
        detail = form.format(summary[field]) if field is not None and summary.get(field) is not None else ""
        lines.append(f"  {verdict}  {name:<66}{detail}".rstrip())
    return lines


def headline(summary: dict[str, Any], wall_s: float | None = None) -> str:
    """The summary in at most ~25 lines: what ran, the statistics with what they test, the checklist.

    ``elapsed_s`` is the run's own time (chain and records); `wall_s`, when given, is the whole
    command's, which adds the summary's statistics and the checklist's extra draws.
    """
    lines = [_target_line(summary, wall_s), ""]
    lines += _block_lines(summary) if summary.get("gamma") else _chain_lines(summary)
    lines += _loss_lines(summary)
    lines += _checklist_lines(summary)
    if summary.get("interrupted"):
        lines += ["", f"interrupted by {summary['interrupted_by']}: the summary covers the {summary['steps']:,} "
                      "steps written"]
    return "\n".join(lines)


def check_report(results: Sequence[CheckResult]) -> str:
    """``run_m1 check``'s verdicts: the guide's checklist, the stronger tests beside it, and the count passed."""
    width = max(len(r.name) for r in results)
    guide_rule = [r for r in results if getattr(r, "guide", True)]
    stronger = [r for r in results if not getattr(r, "guide", True)]
    lines = [f"{r.verdict}  {r.name:<{width}}  {r.detail}" for r in guide_rule]
    if stronger:
        lines += ["", "stronger test (beside the guide's checklist):"]
    lines += [f"{r.verdict}  {r.name:<{width}}  {r.detail}" for r in stronger]
    skipped = sum(r.skipped for r in results)
    failed = sum(not r.passed and not r.skipped for r in results)
    tested = len(results) - skipped
    lines += ["", f"{tested - failed}/{tested} checks passed"
              + (f", {skipped} skipped (nothing to test)" if skipped else "")]
    return "\n".join(lines)
