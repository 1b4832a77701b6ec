"""Pre-flight of a schedule: will each node's privacy budget cover every scheduled run?

A node renews each requester's budget per period (month, quarter or year, its own
policy) and has a node-wide budget that never renews. Before a schedule is accepted we
walk its runs through the node's current and next budget period, in time order and over
all scheduled plans together (plans of the same requester share its budget), and refuse
the schedule at the first run that would not fit, naming the node, the period and the
date of that run. Finding out in month three that the board's monthly check silently
stopped covering a town is exactly what a schedule must not do.

The forecast is conservative: it assumes every run is charged in full. A run whose
queries the node can replay (same data version as before) costs nothing, but whether a
municipality imports new data before a slot cannot be known in advance, and the
coordinator's own pre-flight requires the full cost to be available anyway.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from fedaudit.coordinator.errors import CoordinatorError
from fedaudit.coordinator.planning.checks import planned_queries
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.running.audit import request_id_for
from fedaudit.coordinator.running.transport import NodeInfo, NodeTransport
from fedaudit.coordinator.scheduling.schedule import slots_between
from fedaudit.node.domain import BudgetStatus

log = structlog.get_logger(__name__)

_EPS = 1e-9
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_QUARTER = re.compile(r"^(\d{4})-Q([1-4])$")
_YEAR = re.compile(r"^(\d{4})$")
LIFETIME_HORIZON_YEARS = 10
_MAX_EVENTS = 200_000


# --- budget periods --------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """A node's budget period: its key ("2026-11", "2026-Q4", "2026") and [start, end) in UTC."""

    key: str
    kind: str
    start: dt.datetime
    end: dt.datetime

    def following(self) -> Period:
        return period_containing(self.kind, self.end)


def _month_start(year: int, month: int) -> dt.datetime:
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return dt.datetime(year, month, 1, tzinfo=dt.UTC)


def period_containing(kind: str, moment: dt.datetime) -> Period:
    """The period of `kind` that contains `moment` (UTC), keyed as node/privacy/policy.py keys it."""
    moment = moment.astimezone(dt.UTC)
    if kind == "month":
        start = _month_start(moment.year, moment.month)
        return Period(
            f"{moment.year:04d}-{moment.month:02d}",
            kind,
            start,
            _month_start(moment.year, moment.month + 1),
        )
    if kind == "quarter":
        quarter = (moment.month - 1) // 3 + 1
        first = 3 * (quarter - 1) + 1
        start = _month_start(moment.year, first)
        return Period(
            f"{moment.year:04d}-Q{quarter}", kind, start, _month_start(moment.year, first + 3)
        )
    if kind == "year":
        return Period(
            f"{moment.year:04d}",
            kind,
            dt.datetime(moment.year, 1, 1, tzinfo=dt.UTC),
            dt.datetime(moment.year + 1, 1, 1, tzinfo=dt.UTC),
        )
    raise ValueError(f"unknown budget period kind {kind!r}")


def parse_period(key: str) -> Period:
    """The period a node names in its capabilities (`budget.period`)."""
    if m := _MONTH.match(key):
        return period_containing("month", dt.datetime(int(m[1]), int(m[2]), 1, tzinfo=dt.UTC))
    if m := _QUARTER.match(key):
        month = 3 * (int(m[2]) - 1) + 1
        return period_containing("quarter", dt.datetime(int(m[1]), month, 1, tzinfo=dt.UTC))
    if m := _YEAR.match(key):
        return period_containing("year", dt.datetime(int(m[1]), 1, 1, tzinfo=dt.UTC))
    raise ValueError(f"unrecognised budget period {key!r} (expected 2026-11, 2026-Q4 or 2026)")


# --- the forecast ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledCost:
    """One plan's schedule at one node: what each run costs there, and the node's budget now."""

    node: str
    plan: str
    requester: str
    schedule: str
    cost_rho: float
    budget: BudgetStatus
    due_now: bool = False  # a slot is due already and will run immediately


@dataclass(frozen=True)
class Shortfall:
    """The first run that would not fit: where, when, and why."""

    node: str
    plan: str
    requester: str
    scope: str  # requester | node
    period: str
    run_at: dt.datetime
    needed_rho: float
    available_rho: float
    runs_fitting: int
    runs_in_period: int

    def message(self) -> str:
        when = f"{self.run_at:%Y-%m-%d %H:%M} UTC"
        if self.scope == "node":
            where = "its node-wide budget (which never renews)"
        else:
            where = f"budget period {self.period} (requester {self.requester})"
        return (
            f"node {self.node} would run dry in {where}: the run of plan {self.plan} at {when} "
            f"needs rho={self.needed_rho:.4g} but only rho={max(0.0, self.available_rho):.4g} "
            f"would remain ({self.runs_fitting} of {self.runs_in_period} scheduled runs fit)"
        )


@dataclass(frozen=True)
class NodeForecast:
    """One node's outlook over its current and next budget period."""

    node: str
    period: str
    next_period: str
    runs_current: int
    runs_next: int
    rho_current: float
    rho_next: float
    requester_remaining: float
    requester_cap: float
    node_remaining: float
    shortfall: Shortfall | None
    message: str
    node_budget_dry_at: dt.datetime | None = None  # beyond the horizon above; informative


@dataclass(frozen=True)
class Forecast:
    nodes: tuple[NodeForecast, ...]
    unreachable: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        """True when no reachable node would run dry (unreachable nodes are warnings)."""
        return all(n.shortfall is None for n in self.nodes)

    def problems(self) -> list[str]:
        return [n.message for n in self.nodes if n.shortfall is not None]


def forecast(items: Iterable[ScheduledCost], now: dt.datetime) -> Forecast:
    """Walk every scheduled run through each node's current and next budget period."""
    by_node: dict[str, list[ScheduledCost]] = {}
    for item in items:
        by_node.setdefault(item.node, []).append(item)
    return Forecast(tuple(_forecast_node(node, rows, now) for node, rows in by_node.items()))


def _events(
    rows: Sequence[ScheduledCost], now: dt.datetime, end: dt.datetime
) -> list[tuple[dt.datetime, ScheduledCost]]:
    events = []
    for row in rows:
        if row.due_now:
            events.append((now, row))
        for slot in slots_between(row.schedule, now, end):
            events.append((slot, row))
            if len(events) > _MAX_EVENTS:
                break
    events.sort(key=lambda e: (e[0], e[1].plan))
    return events


def _forecast_node(node: str, rows: Sequence[ScheduledCost], now: dt.datetime) -> NodeForecast:
    now = now.astimezone(dt.UTC)
    current = parse_period(rows[0].budget.period)
    following = current.following()
    node_left = min(r.budget.node_rho_remaining for r in rows)
    left = {}
    for r in rows:
        left[(r.requester, current.key)] = r.budget.requester_rho_remaining
        left[(r.requester, following.key)] = r.budget.requester_rho_cap
    events = _events(rows, now, following.end)
    runs = {current.key: 0, following.key: 0}
    rho = {current.key: 0.0, following.key: 0.0}
    for at, row in events:
        key = current.key if at < current.end else following.key
        runs[key] += 1
        rho[key] += row.cost_rho
    shortfall = None
    fitting = {current.key: 0, following.key: 0}
    for at, row in events:
        key = current.key if at < current.end else following.key
        req = left[(row.requester, key)]
        if row.cost_rho > req + _EPS or row.cost_rho > node_left + _EPS:
            node_binding = node_left < req
            shortfall = Shortfall(
                node=node,
                plan=row.plan,
                requester=row.requester,
                scope="node" if node_binding else "requester",
                period=key,
                run_at=at,
                needed_rho=row.cost_rho,
                available_rho=node_left if node_binding else req,
                runs_fitting=fitting[key],
                runs_in_period=runs[key],
            )
            break
        left[(row.requester, key)] = req - row.cost_rho
        node_left -= row.cost_rho
        fitting[key] += 1
    if shortfall is not None:
        message = shortfall.message()
    else:
        message = (
            f"node {node}: {runs[current.key]} run(s) left in {current.key} need rho="
            f"{rho[current.key]:.4g} of {rows[0].budget.requester_rho_remaining:.4g} remaining; "
            f"{runs[following.key]} run(s) in {following.key} need rho={rho[following.key]:.4g} "
            f"of {rows[0].budget.requester_rho_cap:.4g}"
        )
    return NodeForecast(
        node=node,
        period=current.key,
        next_period=following.key,
        runs_current=runs[current.key],
        runs_next=runs[following.key],
        rho_current=rho[current.key],
        rho_next=rho[following.key],
        requester_remaining=rows[0].budget.requester_rho_remaining,
        requester_cap=rows[0].budget.requester_rho_cap,
        node_remaining=min(r.budget.node_rho_remaining for r in rows),
        shortfall=shortfall,
        message=message,
        node_budget_dry_at=None if shortfall else _node_budget_dry_at(rows, now),
    )


def _node_budget_dry_at(rows: Sequence[ScheduledCost], now: dt.datetime) -> dt.datetime | None:
    """When the never-renewing node-wide budget would stop covering a run at this pace."""
    left = min(r.budget.node_rho_remaining for r in rows)
    horizon = now.replace(year=now.year + LIFETIME_HORIZON_YEARS)
    for at, row in _events(rows, now, horizon):
        if row.cost_rho > left + _EPS:
            return at
        left -= row.cost_rho
    return None


# --- measuring costs at the nodes --------------------------------------------------------------


@dataclass(frozen=True)
class NodeCost:
    info: NodeInfo
    cost_rho: float


def measure_costs(
    plan: AuditPlan, transports: Mapping[str, NodeTransport], *, timeout: float = 10.0
) -> tuple[dict[str, NodeCost], dict[str, str]]:
    """Each node's budget and the rho one run of `plan` costs there (free preflights).

    Returns (costs per reachable node, error message per unreachable node). The node's
    own preflight prices each query (its sensitivity, its mechanism conversion); the
    ring and reconciliation are added at the plan's price; a node that cannot price a
    query falls back to `plan.total_rho_per_node()`.
    """
    queries = planned_queries(plan)
    costs: dict[str, NodeCost] = {}
    errors: dict[str, str] = {}
    for name, transport in transports.items():
        try:
            info = transport.info(timeout=timeout)
            total = math.fsum(
                transport.preflight(
                    q.spec, request_id_for("forecast", name, q.key), timeout=timeout
                ).charge.rho
                for q in queries
            )
        except CoordinatorError as exc:
            errors[name] = str(exc)
            log.warning("forecast_node_unreachable", node=name, error=str(exc))
            continue
        # The ring and reconciliation are priced by the plan: no preflight covers them.
        cost = total + plan.protocol_rho_per_node() if total else plan.total_rho_per_node()
        costs[name] = NodeCost(info=info, cost_rho=cost)
    return costs, errors


def forecast_plans(
    plans: Sequence[AuditPlan],
    transports_for: Mapping[str, Mapping[str, NodeTransport]],
    now: dt.datetime,
    *,
    due_now: Mapping[str, bool] | None = None,
    timeout: float = 10.0,
) -> Forecast:
    """Measure every plan's cost at its nodes and forecast them together.

    `transports_for` maps plan name -> node name -> transport (as the plan's requester).
    """
    items: list[ScheduledCost] = []
    unreachable: dict[str, str] = {}
    for plan in plans:
        if not plan.schedule:
            raise ValueError(f"plan {plan.name} has no schedule")
        costs, errors = measure_costs(plan, transports_for[plan.name], timeout=timeout)
        unreachable.update(errors)
        for node, cost in costs.items():
            items.append(
                ScheduledCost(
                    node=node,
                    plan=plan.name,
                    requester=plan.requester,
                    schedule=plan.schedule,
                    cost_rho=cost.cost_rho,
                    budget=cost.info.budget,
                    due_now=bool((due_now or {}).get(plan.name)),
                )
            )
    result = forecast(items, now)
    return Forecast(result.nodes, tuple(sorted(unreachable.items())))
