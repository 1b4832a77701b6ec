"""Audit plans: parsing, validation messages, node overrides, planned queries."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from fedaudit.coordinator.errors import PlanError
from fedaudit.coordinator.planning.checks import planned_queries
from fedaudit.coordinator.planning.plan import (
    AuditPlan,
    NodeRef,
    load_plan,
    parse_node_option,
    parse_plan,
)
from fedaudit.node.domain import Mechanism

DEFAULT_PLAN = Path(__file__).resolve().parents[1] / "fedaudit" / "plans" / "default.yaml"

BASE: dict[str, Any] = {
    "name": "regional-quality-audit",
    "requester": "oversight-board",
    "confidence": 0.95,
    "deadline_seconds": 60,
    "min_answering_nodes": 2,
    "mechanism": "discrete_gaussian",
    "periods": ["2022", "2023"],
    "min_denominator": 30,
    "nodes": [
        {"name": "M01", "address": "127.0.0.1:50051"},
        {"name": "M02", "address": "node-2.example.org:50052"},
    ],
    "checks": {
        "pass_rates": {"rho": 0.05, "tolerance": 0.08},
        "employment": {"rho": 0.05, "tolerance": 0.10, "months_after": 12},
        "credential_inflation": {"tolerance": 0.15},
        "recognition": {"rho": 0.05, "tolerance": 0.10, "limit_days": 90},
        "appeals": {"rho": 0.02, "tolerance": 0.10},
        "outcome_disparity": {"tolerance": 0.10, "by": ["citizenship_group"]},
        "certificates": {"rho": 0.02},
        "earnings": {"rho": 0.02, "months_after": 12},
    },
}


def _plan(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        target = data
        for part in path:
            target = target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return data


_DELETE = object()


def _problems(data: Any) -> list[str]:
    with pytest.raises(PlanError) as info:
        parse_plan(data, source="plan.yaml")
    return info.value.problems


def test_default_plan_loads_with_every_check():
    """The shipped default plan is valid and runs every check the product has."""
    plan = load_plan(DEFAULT_PLAN)
    assert plan.name == "regional-quality-audit"
    assert plan.nodes == ()
    assert plan.checks.enabled() == (
        "pass_rates",
        "employment",
        "credential_inflation",
        "recognition",
        "appeals",
        "outcome_disparity",
        "certificates",
        "earnings",
        "duplicates",
        "revocation",
    )
    assert not plan.periods  # no window: every period each node publishes
    # 0.1 + 0.1 + 0.1 (two queries) + 0.05 + 0.02 + 0.02, the ring's 1.0, reconciliation's 0.05
    assert plan.total_rho_per_node() == pytest.approx(1.44)


def test_parse_plan_reads_every_field():
    """Fields land in the dataclasses with their types."""
    plan = parse_plan(_plan(), source="plan.yaml")
    assert plan.confidence == 0.95
    assert plan.mechanism is Mechanism.DISCRETE_GAUSSIAN
    assert plan.nodes == (
        NodeRef("M01", "127.0.0.1:50051"),
        NodeRef("M02", "node-2.example.org:50052"),
    )
    assert plan.checks.employment is not None
    assert plan.checks.employment.months_after == 12
    assert plan.checks.recognition is not None
    assert plan.checks.recognition.limit_days == 90
    assert plan.checks.outcome_disparity is not None
    assert plan.checks.outcome_disparity.by == ("citizenship_group",)
    assert plan.tolerances() == {
        "pass_rate_gap": 0.08,
        "employment_gap": 0.10,
        "credential_inflation": 0.15,
        "recognition_delay": 0.10,
        "appeal_anomaly": 0.10,
        "outcome_disparity": 0.10,
    }


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.05, 0, "0.05", True, None])
def test_bad_rho_is_rejected_with_file_and_dotted_field(bad):
    """NaN, infinities, negatives, zero, strings and booleans are not a rho."""
    problems = _problems(_plan(checks__employment__rho=bad))
    assert len(problems) == 1
    assert problems[0].startswith("plan.yaml: checks.employment.rho: must be a finite number > 0")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("confidence", 0.5, "confidence: must be a finite number in (0.5, 1)"),
        ("confidence", 1.0, "confidence: must be a finite number in (0.5, 1)"),
        ("checks__pass_rates__tolerance", 1.0, "checks.pass_rates.tolerance: must be a finite"),
        ("checks__pass_rates__tolerance", 0.0, "checks.pass_rates.tolerance: must be a finite"),
        ("deadline_seconds", -1, "deadline_seconds: must be a finite number > 0"),
        ("min_answering_nodes", 0, "min_answering_nodes: must be an integer >= 1"),
        ("min_denominator", 2.5, "min_denominator: must be an integer"),
        ("checks__employment__months_after", 9, "checks.employment.months_after: must be one"),
        ("checks__recognition__limit_days", 0, "checks.recognition.limit_days: must be an int"),
        ("mechanism", "gaussian", "mechanism: must be one of discrete_gaussian"),
        ("periods", ["2024", "24"], "periods[1]: must be a year"),
        ("periods", ["2024", "2024"], "periods[1]: duplicate period"),
        ("checks__outcome_disparity__by", ["age"], "checks.outcome_disparity.by[0]: must be one"),
        ("checks__outcome_disparity__by", [], "checks.outcome_disparity.by: must be a non-empty"),
        ("name", "", "name: must be a non-empty string"),
        ("checks", {}, "checks: must be a non-empty mapping"),
    ],
)
def test_out_of_range_values_name_their_field(field, value, message):
    """Each invalid value is reported against its dotted field."""
    problems = _problems(_plan(**{field: value}))
    assert any(p.startswith(f"plan.yaml: {message}") for p in problems), problems


def test_unknown_keys_are_rejected_at_every_level():
    """Typos in field names are errors, not silently ignored settings."""
    data = _plan(colour="blue", checks__employment__month_after=12, checks__audits={"rho": 1})
    problems = _problems(data)
    assert any(p.startswith("plan.yaml: colour: unknown field") for p in problems)
    assert any(p.startswith("plan.yaml: checks.employment.month_after: unknown") for p in problems)
    assert any(p.startswith("plan.yaml: checks.audits: unknown check") for p in problems)


def test_all_problems_are_reported_together():
    """One run of validation lists every problem."""
    problems = _problems(_plan(confidence=2, checks__appeals__rho=-1, requester=_DELETE))
    assert len(problems) == 3
    assert "plan.yaml: requester: required field is missing" in problems


def test_derived_checks_need_their_sources():
    """credential_inflation needs pass_rates and employment; disparity needs one of them."""
    data = _plan(checks__employment=_DELETE)
    problems = _problems(data)
    assert problems == [
        "plan.yaml: checks.credential_inflation: needs the checks pass_rates and employment "
        "(missing: employment)"
    ]
    data = _plan(
        checks__employment=_DELETE, checks__pass_rates=_DELETE, checks__credential_inflation=_DELETE
    )
    assert _problems(data) == [
        "plan.yaml: checks.outcome_disparity: needs the check pass_rates or employment"
    ]


def test_mechanism_decides_between_rho_and_epsilon():
    """Laplace plans give epsilon; a rho there (or an epsilon under Gaussian) is an error."""
    problems = _problems(_plan(mechanism="discrete_laplace"))
    assert (
        "plan.yaml: checks.pass_rates.rho: not used with mechanism discrete_laplace; "
        "give epsilon instead"
    ) in problems
    assert "plan.yaml: checks.pass_rates.epsilon: required with mechanism discrete_laplace" in (
        problems
    )
    problems = _problems(_plan(checks__certificates={"rho": 0.1, "epsilon": 1.0}))
    assert problems == [
        "plan.yaml: checks.certificates.epsilon: not used with mechanism discrete_gaussian; "
        "give rho instead"
    ]


def test_laplace_total_rho_is_what_the_nodes_charge():
    """Under Laplace each query costs eps^2/2; recognition shares its epsilon 80/20 between
    the tested decision-time query and the described decisions query."""
    checks = {
        "pass_rates": {"epsilon": 0.4, "tolerance": 0.08},
        "recognition": {"epsilon": 0.6, "tolerance": 0.1},
    }
    plan = parse_plan(_plan(mechanism="discrete_laplace", checks=checks), source="p.yaml")
    queries = planned_queries(plan)
    assert [q.spec.epsilon for q in queries] == pytest.approx([0.4, 0.48, 0.12])
    assert all(q.spec.rho is None for q in queries)
    charged = sum(q.spec.epsilon**2 / 2 for q in queries if q.spec.epsilon is not None)
    assert plan.total_rho_per_node() == pytest.approx(charged)
    assert plan.total_rho_per_node() == pytest.approx(0.4**2 / 2 + 0.48**2 / 2 + 0.12**2 / 2)


def test_total_rho_is_the_sum_over_planned_queries():
    """Pre-flight total equals the rho of every query the plan sends."""
    plan = parse_plan(_plan(), source="plan.yaml")
    queries = planned_queries(plan)
    assert plan.total_rho_per_node() == pytest.approx(sum(q.spec.rho or 0 for q in queries))


def test_nodes_must_be_unique_with_host_port_addresses():
    """Duplicate names and malformed addresses are rejected."""
    nodes = [
        {"name": "M01", "address": "127.0.0.1:50051"},
        {"name": "M01", "address": "localhost"},
        {"name": "M03", "address": "[::1]:70000"},
        {"name": "M04", "address": "[::1]:50054", "tls": True},
    ]
    problems = _problems(_plan(nodes=nodes, min_answering_nodes=1))
    assert "plan.yaml: nodes[1].name: duplicate node name 'M01'" in problems
    assert any(p.startswith("plan.yaml: nodes[1].address: must be host:port") for p in problems)
    assert any(p.startswith("plan.yaml: nodes[2].address: must be host:port") for p in problems)
    assert any(p.startswith("plan.yaml: nodes[3].tls: unknown field") for p in problems)


def test_nodes_may_be_empty_and_supplied_later():
    """An empty node list is valid; with_nodes fills it and validates it."""
    plan = parse_plan(_plan(nodes=[], min_answering_nodes=3), source="plan.yaml")
    assert plan.nodes == ()
    filled = plan.with_nodes({"M01": "127.0.0.1:1", "M02": "127.0.0.1:2", "M03": "h:3"})
    assert [n.name for n in filled.nodes] == ["M01", "M02", "M03"]
    assert plan.nodes == ()  # frozen: the original is unchanged
    with pytest.raises(PlanError, match="min_answering_nodes is 3"):
        plan.with_nodes([NodeRef("M01", "127.0.0.1:1")])
    with pytest.raises(PlanError, match=r"nodes\[0\].address: must be host:port"):
        plan.with_nodes([("M01", "nowhere"), ("M02", "a:1"), ("M03", "b:2")])


def test_too_few_nodes_for_min_answering_nodes_is_an_error():
    """A plan that can never reach its quorum is rejected up front."""
    problems = _problems(_plan(min_answering_nodes=3))
    assert problems == [
        "plan.yaml: nodes: 2 node(s) listed but min_answering_nodes is 3; "
        "the audit could never complete"
    ]


def test_parse_node_option():
    """`--node NAME=HOST:PORT` becomes a NodeRef, or a PlanError naming the option."""
    assert parse_node_option("M07=10.0.0.7:50051") == NodeRef("M07", "10.0.0.7:50051")
    with pytest.raises(PlanError, match="--node: 'M07': expected NAME=HOST:PORT"):
        parse_node_option("M07")


def test_load_plan_reports_yaml_problems_with_the_file(tmp_path):
    """Invalid YAML, duplicate keys and non-mappings name the file."""
    path = tmp_path / "plan.yaml"
    path.write_text("name: a\nname: b\n", encoding="utf-8")
    with pytest.raises(
        PlanError, match=r"plan\.yaml: line 2, column 1: invalid YAML: duplicate key 'name'"
    ):
        load_plan(path)
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(PlanError, match="the plan must be a mapping"):
        load_plan(path)
    with pytest.raises(PlanError, match="cannot read the plan"):
        load_plan(tmp_path / "missing.yaml")
    path.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(PlanError, match="invalid YAML"):
        load_plan(path)


def _spec(plan: AuditPlan, key: str):
    return next(q.spec for q in planned_queries(plan) if q.key == key)


def test_planned_queries_per_check():
    """Each check asks its template with the grouping, filters and cost the design names."""
    plan = parse_plan(_plan(), source="plan.yaml")
    queries = planned_queries(plan)
    assert [(q.check, q.key, q.spec.template) for q in queries] == [
        ("pass_rates", "pass_rates", "assessment_results"),
        ("employment", "employment", "employment_outcomes"),
        ("recognition", "recognition_time", "recognition_decision_time"),
        ("recognition", "recognition_decisions", "recognition_decisions"),
        ("appeals", "appeals", "appeal_outcomes"),
        ("certificates", "certificates", "certificates_issued"),
        ("earnings", "earnings", "earnings_distribution"),
    ]
    period = ("2022", "2023")
    assert _spec(plan, "pass_rates").group_by == ("provider", "citizenship_group")
    assert _spec(plan, "pass_rates").filters == {"period": period}
    emp = _spec(plan, "employment")
    assert emp.group_by == ("provider", "citizenship_group")
    assert emp.filters == {"months_after": ("12",), "period": period}
    rec = _spec(plan, "recognition_time")
    assert rec.group_by == ()
    assert rec.params == {"limit_days": 90}
    assert rec.rho == pytest.approx(0.04)  # 80% of the check's 0.05: the tested query
    assert _spec(plan, "recognition_decisions").group_by == ()
    assert _spec(plan, "recognition_decisions").rho == pytest.approx(0.01)
    assert _spec(plan, "appeals").group_by == ("subject_type",)
    assert _spec(plan, "certificates").group_by == ("provider",)
    earn = _spec(plan, "earnings")
    assert earn.group_by == ()
    assert earn.filters == {"months_after": ("12",), "period": period}
    assert all(q.spec.confidence == 0.95 for q in queries)
    assert all(q.spec.mechanism is Mechanism.DISCRETE_GAUSSIAN for q in queries)


def test_planned_queries_group_by_sex_only_when_disparity_asks():
    """outcome_disparity by sex widens pass_rates and employment grouping by sex."""
    plan = parse_plan(
        _plan(checks__outcome_disparity__by=["sex", "citizenship_group"]), source="plan.yaml"
    )
    assert _spec(plan, "pass_rates").group_by == ("provider", "citizenship_group", "sex")
    assert _spec(plan, "employment").group_by == ("provider", "citizenship_group", "sex")


def test_planned_queries_without_periods_or_checks():
    """No periods means no period filter; absent checks send nothing."""
    checks = {"appeals": {"rho": 0.02, "tolerance": 0.1}}
    plan = parse_plan(_plan(periods=_DELETE, checks=checks), source="plan.yaml")
    queries = planned_queries(plan)
    assert [q.key for q in queries] == ["appeals"]
    assert queries[0].spec.filters == {}
    assert plan.total_rho_per_node() == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [("0 6 1 * *", None), ("61 * * * *", "invalid cron"), ("daily", "5 fields"), ("", "non-empty")],
)
def test_schedule_is_a_checked_cron_expression(schedule, fragment):
    """A plan's schedule must be a valid 5-field cron expression."""
    data = _plan(schedule=schedule)
    if fragment is None:
        assert parse_plan(data, source="plan.yaml").schedule == schedule
    else:
        with pytest.raises(PlanError, match=fragment):
            parse_plan(data, source="plan.yaml")
