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
from dataclasses import dataclass

from fedaudit.coordinator.errors import CoordinatorError
from fedaudit.coordinator.planning.checks import planned_queries
from fedaudit.coordinator.planning.cohort_runs import plan_for_run
from fedaudit.coordinator.planning.cohorts import add_months, month_of
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.running.audit import request_id_for
from fedaudit.coordinator.running.transport import NodeTransport
from fedaudit.coordinator.scheduling.cohort_forecast import (
    BudgetRules,
    Refusal,
    Spending,
    cohorts_read,
    first_refusal,
    run_plan,
    with_padding,
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

ASSUMED_RING_PADDING_RHO = 0.25
"""A node's DP dummy padding per ring run when the node does not report it (nodes older than
`Budget.ring_padding_rho`): the nodes' default `ring.padding_rho`."""


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
        ring_padding_rho=(
            ASSUMED_RING_PADDING_RHO if budget.ring_padding_rho is None else budget.ring_padding_rho
        ),
    )
    spent = max(0.0, budget.node_rho_cap - budget.node_rho_remaining)
    in_period = max(0.0, budget.requester_rho_cap - budget.requester_rho_remaining)
    return rules, spent, in_period


@dataclass(frozen=True)
class LiveWalk:
    """One node's walk: the first refusal (or None), and per period (current, next) the runs
    that fit and the most one cohort would be charged by them."""

    refusal: Refusal | None
    periods: tuple[str, str]
    runs: tuple[int, int]
    needs: tuple[float, float]


def check_live(
    plan: AuditPlan, node: str, budget: BudgetStatus, now: dt.datetime, *, due_now: bool = False
) -> LiveWalk:
    """Walk `plan`'s slots through the node's current and next budget period, per cohort.

    Every cohort starts with the binding cohort's spending (`live_rules`).
    """
    rules, spent, in_period = live_rules(node, budget, now)
    current = parse_period(budget.period)
    following = current.following()
    if plan.schedule is None:
        raise ValueError(f"plan {plan.name} has no schedule")
    slots = [*([now] if due_now else []), *slots_between(plan.schedule, now, following.end)]
    spending = Spending(everyone=spent, period=current.key, in_period=in_period)
    planned = Spending()  # what this schedule alone charges, for the "needs" column
    counts = {current.key: 0, following.key: 0}
    seen: set[str] = set()
    refusal = None
    for slot, month, planned_charges in run_plan(plan, slots):
        charges = with_padding(planned_charges, rules.ring_padding_rho)
        period = period_containing(rules.period_kind, slot).key
        refusal = first_refusal(rules, slot, period, charges, month, spending)
        if refusal is not None:
            break
        counts[period] = counts.get(period, 0) + 1
        for charge in charges:
            seen.update(cohorts_read(charge, rules.first_cohort, month))
            spending.add(charge, rules.first_cohort, month, period)
            planned.add(charge, rules.first_cohort, month, period)

    def need(period: str) -> float:
        return max((planned.in_period(c, period) for c in seen), default=0.0)

    return LiveWalk(
        refusal=refusal,
        periods=(current.key, following.key),
        runs=(counts[current.key], counts[following.key]),
        needs=(need(current.key), need(following.key)),
    )


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
            walk = check_live(plan, name, info.budget, now, due_now=due)
            nodes.append(_node_forecast(plan, name, info.budget, walk))
    return Forecast(tuple(nodes), tuple(sorted(unreachable.items())))


def _node_forecast(
    plan: AuditPlan, node: str, budget: BudgetStatus, walk: LiveWalk
) -> NodeForecast:
    """The walk as `schedule check` prints it ("needs": the most one cohort is charged)."""
    (period, following), (runs_now, runs_next) = walk.periods, walk.runs
    shortfall = None
    refusal = walk.refusal
    if refusal is not None:
        in_current = refusal.at < parse_period(budget.period).end
        shortfall = Shortfall(
            node=node,
            plan=plan.name,
            requester=plan.requester,
            scope="requester" if refusal.scope == "period" else "node",
            period=period if in_current else following,
            run_at=refusal.at,
            needed_rho=refusal.needed,
            available_rho=refusal.available,
            runs_fitting=runs_now if in_current else runs_next,
            runs_in_period=runs_now if in_current else runs_next,
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
        rho_current=walk.needs[0],
        rho_next=walk.needs[1],
        requester_remaining=budget.requester_rho_remaining,
        requester_cap=budget.requester_rho_cap,
        node_remaining=budget.node_rho_remaining,
        shortfall=shortfall,
        message=message,
    )
