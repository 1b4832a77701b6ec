"""`schedule check` of a cohort plan: will the live nodes' per-cohort budgets cover it?

The offline forecast (`cohort_forecast`) knows the policy; a live check knows only what
each node shows the requester: its caps and, for the cohort that binds (the most spent),
what is left. So the walk through the node's current and next budget period assumes,
conservatively, that every cohort has spent as much as that one, and charges each run as
the node would (cohort-restricted queries their cohorts, the ring every cohort). The
node's free preflight of this month's cohort queries must accept them first: a node
without the cohort dimension refuses them and is reported with its reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from fedaudit.coordinator.errors import CoordinatorError
from fedaudit.coordinator.planning.checks import planned_queries
from fedaudit.coordinator.planning.cohort_runs import plan_for_run
from fedaudit.coordinator.planning.cohorts import add_months, month_of, month_range
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.running.audit import request_id_for
from fedaudit.coordinator.running.transport import NodeTransport
from fedaudit.coordinator.scheduling.cohort_forecast import (
    BudgetRules,
    Refusal,
    Spending,
    first_refusal,
    run_plan,
)
from fedaudit.coordinator.scheduling.forecast import (
    Forecast,
    NodeForecast,
    Shortfall,
    parse_period,
    period_containing,
)
from fedaudit.coordinator.scheduling.schedule import slots_between
from fedaudit.node.domain import BudgetStatus


def live_rules(
    node: str, budget: BudgetStatus, now: dt.datetime
) -> tuple[BudgetRules, float, float]:
    """Budget rules from what a live node reports, and the spending to seed every cohort with.

    A node shows a requester its own figures for the cohort that binds (the most spent), not
    every cohort's, so the walk assumes conservatively that every cohort has spent as much:
    (rules, spent of the share so far, spent in the current period).
    """
    kind = parse_period(budget.period).kind
    rules = BudgetRules(
        node=node,
        period_kind=kind,
        rho_per_period=budget.requester_rho_cap,
        node_share=budget.node_rho_cap,
        node_rho_total=budget.node_rho_cap,
        max_rho_per_request=budget.max_rho_per_request,
        min_rho_per_query=0.0,  # the node's preflight enforces its floors
        ring_min_rho=0.0,
        first_cohort=add_months(month_of(now), -12),
    )
    spent = max(0.0, budget.node_rho_cap - budget.node_rho_remaining)
    in_period = max(0.0, budget.requester_rho_cap - budget.requester_rho_remaining)
    return rules, spent, in_period


def check_live(
    plan: AuditPlan, node: str, budget: BudgetStatus, now: dt.datetime, *, due_now: bool = False
) -> tuple[Refusal | None, int, int, str, str]:
    """Walk `plan`'s slots through the node's current and next budget period, per cohort.

    Returns (first refusal or None, runs in the current period, runs in the next, the two
    period keys). Every cohort starts with the binding cohort's spending (`live_rules`).
    """
    rules, spent, in_period = live_rules(node, budget, now)
    current = parse_period(budget.period)
    following = current.following()
    if plan.schedule is None:
        raise ValueError(f"plan {plan.name} has no schedule")
    slots = [*([now] if due_now else []), *slots_between(plan.schedule, now, following.end)]
    spending = Spending(everyone=spent, period=current.key, in_period=in_period)
    counts = {current.key: 0, following.key: 0}
    for slot, month, charges in run_plan(plan, slots):
        period = period_containing(rules.period_kind, slot).key
        every = month_range(rules.first_cohort, month)
        refusal = first_refusal(rules, slot, period, charges, every, spending)
        if refusal is not None:
            return refusal, counts[current.key], counts[following.key], current.key, following.key
        counts[period] = counts.get(period, 0) + 1
        for charge in charges:
            spending.add(charge, every, period)
    return None, counts[current.key], counts[following.key], current.key, following.key


def forecast_live(
    plans: Sequence[AuditPlan],
    transports_for: Mapping[str, Mapping[str, NodeTransport]],
    now: dt.datetime,
    *,
    due_now: Mapping[str, bool] | None = None,
    timeout: float = 10.0,
) -> Forecast:
    """`schedule check` of cohort plans: each node's budget now, per-cohort walk of each plan.

    The node's free preflight of this month's cohort queries must accept them (an old node
    without the cohort dimension refuses them; it is reported as not reachable for the
    forecast, with its reason). Plans are walked one by one: with per-cohort caps two plans
    of one requester share a cohort's budget only where they ask about the same cohorts,
    which this check does not model (run them as one plan, or forecast them offline).
    """
    nodes: list[NodeForecast] = []
    unreachable: dict[str, str] = {}
    for plan in plans:
        narrowed = plan_for_run(plan, month_of(now))
        queries = planned_queries(narrowed)
        for name, transport in transports_for[plan.name].items():
            try:
                info = transport.info(timeout=timeout)
                for q in queries:
                    transport.preflight(
                        q.spec, request_id_for("forecast", name, q.key), timeout=timeout
                    )
            except CoordinatorError as exc:
                unreachable[name] = str(exc)
                continue
            due = bool((due_now or {}).get(plan.name))
            refusal, now_runs, next_runs, period, following = check_live(
                plan, name, info.budget, now, due_now=due
            )
            nodes.append(
                _node_forecast(
                    plan, name, info.budget, refusal, now_runs, next_runs, period, following
                )
            )
    return Forecast(tuple(nodes), tuple(sorted(unreachable.items())))


def _node_forecast(  # noqa: PLR0917 (one node's walk, passed through)
    plan: AuditPlan,
    node: str,
    budget: BudgetStatus,
    refusal: Refusal | None,
    runs_now: int,
    runs_next: int,
    period: str,
    following: str,
) -> NodeForecast:
    shortfall = None
    if refusal is not None:
        scope = "requester" if refusal.scope == "period" else "node"
        shortfall = Shortfall(
            node=node,
            plan=plan.name,
            requester=plan.requester,
            scope=scope,
            period=period_containing(parse_period(budget.period).kind, refusal.at).key,
            run_at=refusal.at,
            needed_rho=refusal.needed,
            available_rho=refusal.available,
            runs_fitting=runs_now if refusal.at < parse_period(budget.period).end else runs_next,
            runs_in_period=runs_now if refusal.at < parse_period(budget.period).end else runs_next,
        )
        message = f"{shortfall.message()}; per cohort: {refusal.message()}"
    else:
        message = (
            f"node {node}: {runs_now} run(s) left in {period} and {runs_next} in {following} fit "
            f"every cohort's budget (per-cohort caps; every cohort assumed to have spent as much "
            f"as the one that binds now)"
        )
    return NodeForecast(
        node=node,
        period=period,
        next_period=following,
        runs_current=runs_now,
        runs_next=runs_next,
        rho_current=0.0,
        rho_next=0.0,
        requester_remaining=budget.requester_rho_remaining,
        requester_cap=budget.requester_rho_cap,
        node_remaining=budget.node_rho_remaining,
        shortfall=shortfall,
        message=message,
    )
