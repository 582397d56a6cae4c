"""Tests of the checks: the guide's rule as written, the stronger pooled TSU χ², and the detection study.

CI runs a short version of the detection-power study (a few seeds): gross power
on a 5 % biased sampler and no false alarm on the correct TSU.  The README's
table (200 seeds) comes from ``python -m scripts.detection_power``.
"""

from __future__ import annotations

import numpy as np
import pytest

from scripts.detection_power import main as detection_main
from scripts.detection_power import markdown_table
from thermospec.analysis.checks import (
    HEAD_BINS,
    POOLED_SIGNIFICANCE,
    POOLED_STEPS,
    draft_bin_labels,
    pooled_draft_chi2,
    pooled_tsu_check,
    run_checks,
    sum_chi2,
)
from thermospec.analysis.detection import TrialOutcome, detection_table, fault_trial, guide_rule_failures
from thermospec.core.statistics import Chi2Result
from thermospec.runs.checklist import FIXED_CONTEXTS_TO_PASS, fixed_context_check, fixed_context_p_values
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import PreparedRun, inject_fault, prepare_run
from thermospec.tsu.faults import Fault


@pytest.fixture(scope="module")
def default_run() -> PreparedRun:
    return prepare_run(RunConfig(steps=20_000))


def test_draft_bin_labels() -> None:
    q = np.array([0.05, 0.3, 0.1, 0.2, 0.2, 0.05, 0.1])
    ids = np.array([1, 3, 4, 2, 6])
    labels = draft_bin_labels(q, ids, head=3)
    # head: 1 (0.3), then the tie 3/4 at 0.2 broken by the lower id; other ids 2, 6; tail 0, 5
    np.testing.assert_array_equal(labels, [4, 0, 3, 1, 2, 4, 3])


def test_sum_chi2_adds_statistics_and_degrees_of_freedom() -> None:
    total = sum_chi2([Chi2Result(3.0, 2, 0.2, 3), Chi2Result(5.0, 4, 0.3, 5)])
    assert (total.stat, total.dof, total.bins) == (8.0, 6, 8)
    from scipy.stats import chi2

    assert total.p_value == pytest.approx(chi2.sf(8.0, 6), rel=1e-12)
    assert sum_chi2([]).p_value == 1.0


def test_guide_rule_stays_as_written(default_run: PreparedRun) -> None:
    result = fixed_context_check(default_run, 20_000)
    assert result.guide and result.passed
    contexts, p_values = fixed_context_p_values(default_run, 20_000)
    assert len(contexts) == 4 and FIXED_CONTEXTS_TO_PASS == 3
    assert result.detail.startswith(f"{sum(p > 0.05 for p in p_values)}/4 with p > 0.05")


def test_pooled_check_is_reported_separately(default_run: PreparedRun) -> None:
    results = run_checks(default_run, 5_000, 5_000)
    assert [r.guide for r in results] == [True, True, True, False]
    assert results[3].name.startswith("pooled TSU χ² (16 contexts x 5000 drafts, alpha = 0.001)")


def test_pooled_chi2_dof_and_determinism(default_run: PreparedRun) -> None:
    first = pooled_draft_chi2(default_run, 10_000)
    assert first.dof == 16 * (HEAD_BINS + 2 - 1)  # the default target has a tail and K > 4 in every context
    assert pooled_draft_chi2(default_run, 10_000) == first


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pooled_check_passes_a_correct_tsu_and_catches_a_5_percent_bias(seed: int) -> None:
    """Short CI version of the study: docs/trust.md's 200 seeds give 100 % / 0 %."""
    run = prepare_run(RunConfig(seed=seed, steps=1_000))
    honest = pooled_tsu_check(run)
    assert honest.passed, honest.detail
    assert POOLED_STEPS == 50_000 and POOLED_SIGNIFICANCE == 0.001
    biased = pooled_draft_chi2(inject_fault(run, Fault.parse("bias:0.05")))
    assert biased.p_value < 1e-4  # far below alpha: gross power, not a coin flip


def test_study_reuses_exactly_the_draws_of_check(default_run: PreparedRun) -> None:
    """A smaller n in the study is the first n draws of the largest: the same as running check with that n."""
    for n in (3_000, 7_000):
        _, p_values = fixed_context_p_values(default_run, n)
        failed = sum(p > 0.05 for p in p_values) < 3
        assert guide_rule_failures(default_run, [n, 7_000])[0] == failed
        pooled = pooled_draft_chi2(default_run, n).p_value < POOLED_SIGNIFICANCE
        outcome = fault_trial(default_run, None, [n, 7_000], with_run=False)[0]
        assert outcome.pooled == pooled and outcome.guide == failed and outcome.run is None


def test_misreport_counts_as_detected_by_every_test(default_run: PreparedRun) -> None:
    outcomes = fault_trial(default_run, Fault.parse("misreport:1e-6"), [1_000], with_run=True)
    assert [(o.guide, o.pooled, o.run) for o in outcomes] == [(True, True, True)]


def test_detection_table_rates() -> None:
    bias = Fault("bias", 0.05)
    outcomes = [
        TrialOutcome(0, None, 10, False, False, False),
        TrialOutcome(1, None, 10, True, False, False),
        TrialOutcome(0, bias, 10, True, True, True),
        TrialOutcome(1, bias, 10, False, True, False),
        TrialOutcome(0, bias, 20, False, True, True),  # the run's χ² counts once per seed
        TrialOutcome(1, bias, 20, False, True, False),
    ]
    rows = {(r.fault, r.test, r.samples): r for r in detection_table(outcomes, 500)}
    assert rows[("none", "guide", 40)].detection_rate == 0.5
    assert rows[("bias", "guide", 40)].detection_rate == 0.5
    assert rows[("bias", "guide", 40)].false_alarm_rate == 0.5
    assert rows[("bias", "pooled", 160)].detection_rate == 1.0
    assert rows[("bias", "run", 500)].seeds == 2 and rows[("bias", "run", 500)].detection_rate == 0.5
    assert np.isnan(rows[("bias", "pooled", 320)].false_alarm_rate)  # no correct-TSU row at n = 20
    assert "| bias | 0.05 | pooled | 160 | 2 | 100.0 % | 0.0 % |" in markdown_table(list(rows.values()))


def test_detection_power_command_short(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--seeds", "3", "--workers", "1", "--faults", "bias:0.05", "--samples", "50000", "--no-run"]
    assert detection_main(args) == 0
    out = capsys.readouterr().out
    assert "| none | – | pooled | 800,000 | 3 | 0.0 % | 0.0 % |" in out
    assert "| bias | 0.05 | pooled | 800,000 | 3 | 100.0 % | 0.0 % |" in out


def test_wide_table_puts_false_alarms_first() -> None:
    from scripts.detection_power import wide_table

    bias = Fault("bias", 0.05)
    outcomes = [TrialOutcome(s, f, 10, f is not None, f is not None, False) for s in (0, 1) for f in (None, bias)]
    lines = wide_table(detection_table(outcomes, 500)).splitlines()
    assert lines[0] == "| fault | size | guide rule 40 | pooled χ² 160 | run χ² 500 |"
    assert lines[2] == "| none (false alarms) | – | 0.0 % | 0.0 % | 0.0 % |"
    assert lines[3] == "| bias | 0.05 | 100.0 % | 100.0 % | 0.0 % |"
