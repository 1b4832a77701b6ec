"""Cohort plans on the coordinator: which cohorts a run asks, cadence, and the offline forecast.

These need no node: they pin the planning rules (docs/scheduling.md, "Cohort plans") and
the forecast's per-cohort arithmetic, and they run the `schedule forecast` command on the
shipped deploy/plans/monthly.yaml and deploy/policy.monthly.yaml. The end-to-end proof
against real nodes is tests/test_cohort_schedule.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from fedaudit.cli.main import main
from fedaudit.coordinator.errors import PlanError
from fedaudit.coordinator.planning.checks import planned_queries
from fedaudit.coordinator.planning.cohort_runs import left_out, plan_for_run, protocol_due
from fedaudit.coordinator.planning.cohorts import (
    CohortPlan,
    add_months,
    cohorts_to_ask,
    month_range,
)
from fedaudit.coordinator.planning.plan import EmploymentCheck, load_plan, parse_plan
from fedaudit.coordinator.scheduling.cohort_forecast import BudgetRules, forecast_cohorts
from fedaudit.coordinator.scheduling.incremental import answered_cohorts, reask_plan, trend

ROOT = Path(__file__).resolve().parent.parent
MONTHLY_PLAN = ROOT / "deploy" / "plans" / "monthly.yaml"
MONTHLY_POLICY = ROOT / "deploy" / "policy.monthly.yaml"
UTC = dt.UTC

DOC: dict[str, Any] = {
    "name": "cohort-test",
    "requester": "oversight-board",
    "confidence": 0.95,
    "schedule": "0 6 2 * *",
    "cohorts": {"lag_months": 1},
    "checks": {
        "pass_rates": {"rho": 0.5, "tolerance": 0.05},
        "employment": {"rho": 0.5, "tolerance": 0.10, "months_after": 12},
        "credential_inflation": {"tolerance": 0.15},
        "recognition": {"rho": 0.5, "tolerance": 0.10, "limit_days": 90},
        "duplicates": {"rho": 0.5, "bound": 1, "every_months": 12},
    },
}


def _plan(**changes: Any) -> Any:
    return parse_plan({**DOC, **changes}, source="<test plan>")


def _rules(**changes: Any) -> BudgetRules:
    base = BudgetRules(
        node="M01",
        period_kind="quarter",
        rho_per_period=2.0,
        node_share=8.0,
        node_rho_total=10.0,
        max_rho_per_request=1.0,
        min_rho_per_query=0.001,
        ring_min_rho=0.05,
        first_cohort="2019-01",
    )
    return dataclasses.replace(base, **changes)


# --- which cohorts a run asks --------------------------------------------------------------------


def test_month_arithmetic_crosses_years() -> None:
    assert add_months("2027-01", -1) == "2026-12"
    assert add_months("2026-12", 13) == "2028-01"
    assert month_range("2026-11", "2027-02") == ("2026-11", "2026-12", "2027-01", "2027-02")
    assert month_range("2027-02", "2027-01") == ()


def test_each_check_asks_the_cohort_whose_data_have_just_matured() -> None:
    """Newest for pass rates, 12 months older for employment at 12, 4 for a 90-day limit."""
    plan = plan_for_run(_plan(), "2027-03")
    assert plan.asked == {
        "pass_rates": ("2027-02",),
        "employment": ("2026-02",),
        "recognition": ("2026-10",),
    }
    filters = {q.key: q.spec.filters.get("cohort") for q in planned_queries(plan)}
    assert filters == {
        "pass_rates": ("2027-02",),
        "employment": ("2026-02",),
        "recognition_time": ("2026-10",),
        "recognition_decisions": ("2026-10",),
    }


def test_a_plan_without_cohorts_asks_as_before() -> None:
    """No `cohorts` section: no cohort filter on any query (every year, as the default plan)."""
    doc = {k: v for k, v in DOC.items() if k != "cohorts"}
    plan = parse_plan(doc, source="<t>")
    assert all("cohort" not in q.spec.filters for q in planned_queries(plan))
    narrowed = plan_for_run(plan, "2027-03")
    assert all("cohort" not in q.spec.filters for q in planned_queries(narrowed))


def test_answered_cohorts_are_not_asked_again_and_missed_ones_are_pooled() -> None:
    cohorts = CohortPlan(lag_months=1, catch_up_months=3)
    checks = {"pass_rates": object()}
    # The archive answered up to January; the run in March asks February only.
    assert cohorts_to_ask(cohorts, checks, "2027-03", {"pass_rates": {"2027-01"}}) == {
        "pass_rates": ("2027-02",)
    }
    # Everything due is answered: the check is left out.
    assert cohorts_to_ask(cohorts, checks, "2027-03", {"pass_rates": {"2027-02"}}) == {}
    # Slots missed since October: the cohorts due at them are pooled, at most 3 months back.
    asked = cohorts_to_ask(cohorts, checks, "2027-03", {"pass_rates": {"2026-09"}})
    assert asked == {"pass_rates": ("2026-11", "2026-12", "2027-01", "2027-02")}
    # A new archive starts with the cohort due now, not with the past.
    assert cohorts_to_ask(cohorts, checks, "2027-03", {}) == {"pass_rates": ("2027-02",)}
    # An operator's re-ask is asked even though it was answered.
    asked = cohorts_to_ask(
        cohorts, checks, "2027-03", {"pass_rates": {"2027-02"}}, {"pass_rates": ["2026-05"]}
    )
    assert asked == {"pass_rates": ("2026-05",)}


def test_no_cohort_before_first_is_asked() -> None:
    cohorts = CohortPlan(lag_months=1, first="2027-01")
    checks = {"pass_rates": object(), "employment": EmploymentCheck(None, 0.1, 12)}  # type: ignore[arg-type]
    assert cohorts_to_ask(cohorts, checks, "2027-03", {}) == {"pass_rates": ("2027-02",)}


def test_ring_cadence_and_derived_checks_are_left_out_with_the_reason() -> None:
    full = _plan()
    january = plan_for_run(full, "2027-01")
    february = plan_for_run(full, "2027-02")
    assert january.checks.duplicates is not None
    assert february.checks.duplicates is None
    assert "every 12 months" in left_out(full, february)["duplicates"]
    assert protocol_due(3, "2027-04")
    assert not protocol_due(3, "2027-05")
    # Pass rates answered already: credential inflation (needs both, same run) is left out.
    narrowed = plan_for_run(full, "2027-03", {"pass_rates": {"2027-02"}})
    assert narrowed.checks.pass_rates is None
    assert narrowed.checks.credential_inflation is None
    assert narrowed.checks.employment is not None
    assert left_out(full, narrowed)["pass_rates"].startswith("its due cohort was answered")


@pytest.mark.parametrize(
    ("cohorts", "message"),
    [
        ({"first": "2027-13"}, 'cohorts.first: must be a month such as "2027-01"'),
        ({"lag_months": -1}, "cohorts.lag_months: must be an integer in 0..24"),
        ({"catch_up_months": 99}, "cohorts.catch_up_months: must be an integer in 0..24"),
        ({"lags": 1}, "cohorts.lags: unknown field"),
        ("monthly", "cohorts: must be a mapping of settings"),
    ],
)
def test_a_wrong_cohorts_section_is_refused_with_the_field(cohorts: Any, message: str) -> None:
    with pytest.raises(PlanError) as err:
        _plan(cohorts=cohorts)
    assert message in str(err.value)


def test_a_wrong_cadence_is_refused_with_the_field() -> None:
    checks = {**DOC["checks"], "duplicates": {"rho": 0.5, "every_months": 0}}
    with pytest.raises(PlanError) as err:
        _plan(checks=checks)
    assert "checks.duplicates.every_months: must be an integer in 1..120" in str(err.value)


# --- the archive as memory -------------------------------------------------------------------------


def _report(status: str, asked: dict[str, list[str]], estimate: float, run: str) -> dict:
    return {
        "audit": {"status": status, "run_id": run, "cohorts": {"asked": asked}},
        "metrics": [
            {
                "metric": "pass_rate",
                "subject": {"municipality": "M01"},
                "estimate": estimate,
                "ci": [estimate - 0.1, estimate + 0.1],
                "denominator": 100.0,
            },
            {
                "metric": "pass_rate",
                "subject": {"municipality": "M01", "provider_id": "P1"},
                "estimate": 0.1,
                "ci": [0.0, 0.2],
                "denominator": 10.0,
            },
        ],
    }


def test_a_failed_run_answered_nothing_and_the_newest_answer_wins_the_trend() -> None:
    reports = [
        _report("complete", {"pass_rates": ["2027-01"]}, 0.8, "r1"),
        _report("failed", {"pass_rates": ["2027-02"]}, 0.0, "r2"),
        _report("partial", {"pass_rates": ["2027-03"]}, 0.7, "r3"),
        _report("complete", {"pass_rates": ["2027-01"]}, 0.9, "r4-reask"),
    ]
    assert answered_cohorts(reports) == {"pass_rates": {"2027-01", "2027-03"}}
    series = trend(reports)["metrics"]["pass_rate"]["M01"]
    assert [(s["cohorts"], s["estimate"], s["run_id"]) for s in series] == [
        (["2027-01"], 0.9, "r4-reask"),
        (["2027-03"], 0.7, "r3"),
    ]


def test_a_reask_asks_exactly_the_archived_query_that_read_the_cohort() -> None:
    reports = [_report("complete", {"pass_rates": ["2026-12", "2027-01"]}, 0.8, "r1")]
    plan = reask_plan(_plan(), "2027-01", reports, "2027-06")
    assert plan.asked == {"pass_rates": ("2026-12", "2027-01")}
    assert plan.checks.employment is None
    assert plan.checks.duplicates is None
    (query,) = planned_queries(plan)
    assert query.spec.filters["cohort"] == ("2026-12", "2027-01")
    with pytest.raises(ValueError, match="no archived run of plan cohort-test asked about"):
        reask_plan(_plan(), "2025-01", reports, "2027-06")


# --- the offline forecast ------------------------------------------------------------------------


def test_the_shipped_monthly_plan_fits_its_policy_for_ten_years() -> None:
    """Each cohort: pass rate, employment and recognition once (1.5) plus a yearly ring (0.5):
    after 10 years from January 2027 the cohorts of 2027-01 and before carry 1.5 + 10 x 0.5."""
    plan = load_plan(MONTHLY_PLAN)
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    (result,) = forecast_cohorts(plan, [_rules()], start, 10)
    assert result.refusal is None
    assert result.runs_fitting == 120
    assert result.ring_runs == 10
    assert result.bound_rho == pytest.approx(6.5)
    assert result.bound_rho <= 10.0


def test_the_forecast_names_the_first_refusal_and_the_binding_cohort() -> None:
    plan = load_plan(MONTHLY_PLAN)
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    (result,) = forecast_cohorts(plan, [_rules()], start, 30)
    assert result.refusal is not None
    # The share of 8.0 per cohort: 1.5 of own checks + 13 rings = 8.0; the 14th is refused.
    assert result.refusal.at == dt.datetime(2040, 1, 2, 6, tzinfo=UTC)
    assert result.refusal.scope == "share"
    assert result.refusal.what == "the blinding ring"
    assert result.bound_rho == pytest.approx(8.0)
    assert result.runs_fitting == 156
    # A monthly ring charges every cohort every month: the share of 8.0 is gone in 13 months.
    checks = dataclasses.replace(
        plan.checks, duplicates=dataclasses.replace(plan.checks.duplicates, every_months=1)
    )
    (monthly,) = forecast_cohorts(dataclasses.replace(plan, checks=checks), [_rules()], start, 10)
    assert monthly.refusal is not None
    assert monthly.refusal.at == dt.datetime(2028, 2, 2, 6, tzinfo=UTC)
    assert monthly.runs_fitting == 13


def test_the_forecast_refuses_a_request_above_the_policy_maximum_at_once() -> None:
    plan = load_plan(MONTHLY_PLAN)
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    (result,) = forecast_cohorts(plan, [_rules(max_rho_per_request=0.3)], start, 1)
    assert result.refusal is not None
    assert result.refusal.scope == "request"
    assert result.runs_fitting == 0
    assert "max_rho_per_request=0.3" in result.message()


def test_the_forecast_counts_a_query_over_all_cohorts_against_every_cohort() -> None:
    """The same plan without `cohorts`: every query reads (and charges) every cohort each run,
    so the per-period cap of 2.0 per cohort stops a monthly run of 2.0 rho in its 2nd month."""
    doc = {k: v for k, v in DOC.items() if k != "cohorts"}
    plan = parse_plan(doc, source="<t>")
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    (result,) = forecast_cohorts(plan, [_rules()], start, 10)
    assert result.refusal is not None
    assert result.refusal.scope == "period"
    assert result.runs_fitting == 1


# --- the command -------------------------------------------------------------------------------


def test_schedule_forecast_command_on_the_shipped_files(capsys: pytest.CaptureFixture) -> None:
    args = ["schedule", "forecast", str(MONTHLY_PLAN), "--policy", str(MONTHLY_POLICY)]
    assert main([*args, "--years", "10", "--start", "2027-01-01"]) == 0
    out = capsys.readouterr().out
    for node in ("M01", "M02", "M03"):
        assert f"node {node}: nothing refused within 10 years (120 run(s)" in out
    assert "per-person loss bound rho=6.5" in out
    assert main([*args, "--years", "30", "--start", "2027-01-01"]) == 1
    out = capsys.readouterr().out
    assert "node M01: first refusal 2040-01-02 06:00 UTC: the blinding ring" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--years", "0"], "--years: must be a number in (0, 100]"),
        (["--years", "1", "--start", "2027-02-30"], "--start: expected a date YYYY-MM-DD"),
        (["--years", "1", "--policy", "M09=x.yaml"], "'M09' is not a node of the plan"),
        (["--years", "1", "--policy", "other.yaml"], "--policy: give one policy without"),
    ],
)
def test_schedule_forecast_wrong_input_exits_2(
    extra: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    args = ["schedule", "forecast", str(MONTHLY_PLAN), "--policy", str(MONTHLY_POLICY)]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err


def test_schedule_forecast_refuses_a_policy_without_the_requester(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    policy = tmp_path / "policy.yaml"
    text = MONTHLY_POLICY.read_text(encoding="utf-8").replace("oversight-board:", "someone-else:")
    policy.write_text(text, encoding="utf-8")
    code = main(
        ["schedule", "forecast", str(MONTHLY_PLAN), "--policy", str(policy), "--years", "1"]
    )
    assert code == 2
    assert "requester 'oversight-board' is not in this policy" in capsys.readouterr().err


def test_schedule_forecast_needs_a_schedule(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    default = ROOT / "fedaudit" / "plans" / "default.yaml"
    code = main(
        ["schedule", "forecast", str(default), "--policy", str(MONTHLY_POLICY), "--years", "1"]
    )
    assert code == 2
    assert "the plan has no `schedule`" in capsys.readouterr().err


def test_a_cohort_plan_groups_by_provider_only_when_asked() -> None:
    """A month's cohort is tens of persons: rates per municipality unless by_provider."""
    keys = {q.key: q.spec.group_by for q in planned_queries(plan_for_run(_plan(), "2027-03"))}
    assert keys["pass_rates"] == ()
    assert keys["employment"] == ()
    by_provider = _plan(cohorts={"by_provider": True})
    keys = {q.key: q.spec.group_by for q in planned_queries(plan_for_run(by_provider, "2027-03"))}
    assert keys["pass_rates"] == ("provider",)
    doc = {k: v for k, v in DOC.items() if k != "cohorts"}
    yearly = parse_plan(doc, source="<t>")
    keys = {q.key: q.spec.group_by for q in planned_queries(yearly)}
    assert keys["pass_rates"] == ("provider", "citizenship_group")
    with pytest.raises(PlanError, match=r"cohorts\.by_provider: must be true or false"):
        _plan(cohorts={"by_provider": "yes"})


def test_the_accuracy_aid_for_an_assumed_cohort_size() -> None:
    """rho 0.5 and K 1: noise sd 1 person per count; at n = 40 and p = 0.5 one 95 % interval is
    1.96 x sqrt(0.25/40 + (0.25 + 0.25) x 1/40^2) wide on each side."""
    from fedaudit.coordinator.scheduling.cohort_forecast import rate_accuracy

    plan = load_plan(MONTHLY_PLAN)
    result = {a.check: a for a in rate_accuracy(plan, {}, 40)}
    assert set(result) == {"pass_rates", "employment"}
    expected = 1.959964 * (0.25 / 40 + 0.5 * 1.0 / 1600) ** 0.5
    for accuracy in result.values():
        assert accuracy.noise_sd == pytest.approx(1.0, rel=1e-3)
        assert accuracy.half_width == pytest.approx(expected, rel=1e-3)
    # Halving rho doubles the noise variance: the interval widens.
    cheaper = dataclasses.replace(
        plan,
        checks=dataclasses.replace(
            plan.checks,
            pass_rates=dataclasses.replace(
                plan.checks.pass_rates,
                budget=dataclasses.replace(plan.checks.pass_rates.budget, rho=0.25),
            ),
        ),
    )
    wider = {a.check: a for a in rate_accuracy(cheaper, {}, 40)}
    assert wider["pass_rates"].half_width > result["pass_rates"].half_width
    with pytest.raises(ValueError, match="cohort size must be at least 1"):
        rate_accuracy(plan, {}, 0)


def test_schedule_forecast_prints_the_accuracy_for_a_cohort_size(
    capsys: pytest.CaptureFixture,
) -> None:
    args = ["schedule", "forecast", str(MONTHLY_PLAN), "--policy", str(MONTHLY_POLICY)]
    assert main([*args, "--years", "1", "--cohort-size", "40"]) == 0
    assert "node M01, cohorts of 40 persons: pass_rates +/-0.159" in capsys.readouterr().out
    assert main([*args, "--years", "1", "--cohort-size", "0"]) == 2
    assert "--cohort-size: must be a whole number of persons >= 1" in capsys.readouterr().err
