"""Which queries each check of a plan sends to every node.

The mapping is deliberately narrow: each check asks only for the grouping its tests
need, because every extra grouping dimension multiplies the cells and so the noise
summed into each estimate (a provider's pass rate sums its cells over the groups).
Derived checks (credential_inflation, outcome_disparity) send nothing of their own;
outcome_disparity widens the pass_rates and employment grouping by `sex` when asked.

Keys (`PlannedQuery.key`) name a query within one audit; `gaps.evaluate` looks the
answers up by them.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.node.domain import Mechanism, QuerySpec

ASSESSMENT_RESULTS = "assessment_results"
CERTIFICATES_ISSUED = "certificates_issued"
EMPLOYMENT_OUTCOMES = "employment_outcomes"
EARNINGS_DISTRIBUTION = "earnings_distribution"
RECOGNITION_DECISION_TIME = "recognition_decision_time"
RECOGNITION_DECISIONS = "recognition_decisions"
APPEAL_OUTCOMES = "appeal_outcomes"

COHORT = "cohort"
"""The catalogue dimension of a person's cohort (month of their first record at the node)."""

KEY_PASS_RATES = "pass_rates"
KEY_EMPLOYMENT = "employment"
KEY_RECOGNITION_TIME = "recognition_time"
KEY_RECOGNITION_DECISIONS = "recognition_decisions"
KEY_APPEALS = "appeals"
KEY_CERTIFICATES = "certificates"
KEY_EARNINGS = "earnings"


@dataclass(frozen=True)
class PlannedQuery:
    """One query of an audit: the check it serves, its key within the audit, the request."""

    check: str
    key: str
    spec: QuerySpec


def outcome_group_by(plan: AuditPlan) -> tuple[str, ...]:
    """Grouping of the pass_rates and employment queries: provider x the disparity groups.

    A cohort plan asks about a month's persons, tens per municipality: it groups by
    provider only when its `cohorts.by_provider` says so, and by population group only
    for an outcome_disparity check, since every extra row adds noise to each rate.
    """
    disparity = plan.checks.outcome_disparity
    if plan.cohorts is not None:
        dims = ["provider"] if plan.cohorts.by_provider else []
        if disparity is not None:
            dims += [d for d in ("citizenship_group", "sex") if d in disparity.by]
        return tuple(dims)
    dims = ["provider", "citizenship_group"]
    if disparity is not None and "sex" in disparity.by:
        dims.append("sex")
    return tuple(dims)


def planned_queries(plan: AuditPlan) -> list[PlannedQuery]:
    """Every query the plan sends to each node, in a stable order."""
    checks = plan.checks
    out: list[PlannedQuery] = []

    def add(
        check: str,
        key: str,
        template: str,
        *,
        group_by: tuple[str, ...] = (),
        filters: dict[str, tuple[str, ...]] | None = None,
        params: dict[str, int] | None = None,
    ) -> None:
        budget = plan.query_budget(check, sum(1 for q in out if q.check == check))
        all_filters = dict(filters or {})
        if plan.periods:
            all_filters["period"] = tuple(plan.periods)
        if plan.asked is not None and check in plan.asked:
            # A cohort plan's run: only these cohorts are read, so only they are charged.
            all_filters[COHORT] = tuple(plan.asked[check])
        gaussian = plan.mechanism is Mechanism.DISCRETE_GAUSSIAN
        spec = QuerySpec(
            template=template,
            group_by=group_by,
            filters=all_filters,
            params=dict(params or {}),
            mechanism=plan.mechanism,
            rho=budget.rho if gaussian else None,
            epsilon=None if gaussian else budget.epsilon,
            confidence=plan.confidence,
        )
        out.append(PlannedQuery(check=check, key=key, spec=spec))

    groups = outcome_group_by(plan)
    if checks.pass_rates is not None:
        add("pass_rates", KEY_PASS_RATES, ASSESSMENT_RESULTS, group_by=groups)
    if checks.employment is not None:
        months = (str(checks.employment.months_after),)
        add(
            "employment",
            KEY_EMPLOYMENT,
            EMPLOYMENT_OUTCOMES,
            group_by=groups,
            filters={"months_after": months},
        )
    if checks.recognition is not None:
        add(
            "recognition",
            KEY_RECOGNITION_TIME,
            RECOGNITION_DECISION_TIME,
            # Ungrouped: the late share sums fewer noisy cells, and recognition offices
            # handle tens to hundreds of requests, so every cell of noise counts.
            params={"limit_days": checks.recognition.limit_days},
        )
        add("recognition", KEY_RECOGNITION_DECISIONS, RECOGNITION_DECISIONS)
    if checks.appeals is not None:
        add("appeals", KEY_APPEALS, APPEAL_OUTCOMES, group_by=("subject_type",))
    if checks.certificates is not None:
        add("certificates", KEY_CERTIFICATES, CERTIFICATES_ISSUED, group_by=("provider",))
    if checks.earnings is not None:
        months = (str(checks.earnings.months_after),)
        add("earnings", KEY_EARNINGS, EARNINGS_DISTRIBUTION, filters={"months_after": months})
    return out
