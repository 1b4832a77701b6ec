"""Offline forecast of a schedule under cohort accounting: when is anything first refused?

`fedaudit schedule forecast PLAN --policy POLICY --years N` needs no node: it replays the
plan's slots over N years against the budget rules of each node's policy, charging as a
node with cohort accounting charges (docs/scheduling.md):

- a query restricted to cohorts charges each of them its rho; one without a cohort filter
  charges every cohort that exists by then (from the policy's first cohort to the month
  of the run); the blinding ring and revocation reconciliation read every person, so they
  charge every cohort that has persons by then and the next month's (as the node's ledger
  does, in case an import commits between the charge and the read);
- every cap applies per cohort: the node-wide `node_rho_total` (never renewed), the
  requester's share of it (`node_share`), and the requester's `rho_per_period` per budget
  period; `max_rho_per_request` and `min_rho_per_query` (ring: `ring.min_rho`) per request.

A run is refused at a node as a whole when any of its charges would not fit (the
coordinator's preflight skips such a node rather than leave it half-charged), so the
first refusal is the first run that does not fit, with the cohort that binds. The
per-person loss bound at a date is the most any one cohort has been charged by then: a
person belongs to exactly one cohort at a node, so that is the most any person there has
lost (at this node; a person registered at several nodes has each node's bound there).

Assumptions, stated in the output: this requester is the only one spending (others have
their own shares, so they cannot make it refuse earlier except through `node_rho_total`),
every run is answered (an unanswered cohort is asked again by the next run, which the
forecast does not model), and every cohort has persons.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

from fedaudit.common.mechanisms import plan_noise
from fedaudit.coordinator.planning.checks import COHORT, planned_queries
from fedaudit.coordinator.planning.cohort_runs import plan_for_run
from fedaudit.coordinator.planning.cohorts import add_months, month_of, month_range
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.scheduling.forecast import period_containing
from fedaudit.coordinator.scheduling.schedule import slots_between

_EPS = 1e-9
MAX_YEARS = 100


@dataclass(frozen=True)
class BudgetRules:
    """One node's budget rules for the plan's requester, as its policy states them."""

    node: str
    period_kind: str  # month | quarter | year
    rho_per_period: float
    node_share: float
    node_rho_total: float
    max_rho_per_request: float
    min_rho_per_query: float
    ring_min_rho: float
    first_cohort: str  # "YYYY-MM": the policy's first cohort


@dataclass(frozen=True)
class Charge:
    """One request of a run: its name, what it charges, and the cohorts it reads (None: all)."""

    what: str
    rho: float
    cohorts: tuple[str, ...] | None
    protocol: bool = False  # the blinding ring (its own floor, ring.min_rho)
    every_cohort: bool = False  # charged to every cohort, also those arriving later
    ahead: int = 0
    """Without a cohort filter: how many months past the run's month the charge reaches. A
    node charges the ring and reconciliation to every cohort with persons and one month
    more (an import may commit between the charge and the read); 0 for queries."""

    @property
    def protocol_all(self) -> bool:
        return self.every_cohort


@dataclass(frozen=True)
class Refusal:
    at: dt.datetime
    what: str
    cohort: str | None
    scope: str  # request | query_floor | ring_floor | node | share | period
    needed: float
    available: float

    def message(self) -> str:
        when = f"{self.at:%Y-%m-%d %H:%M} UTC"
        if self.scope == "request":
            return (
                f"{when}: {self.what} asks rho={self.needed:.4g} in one request, above the "
                f"policy's max_rho_per_request={self.available:.4g}"
            )
        if self.scope in ("query_floor", "ring_floor"):
            floor = "min_rho_per_query" if self.scope == "query_floor" else "ring.min_rho"
            return (
                f"{when}: {self.what} asks rho={self.needed:.4g}, below the policy's "
                f"{floor}={self.available:.4g}"
            )
        cap = {
            "node": "the node-wide node_rho_total (never renewed)",
            "share": "the requester's node_share (never renewed)",
            "period": "the requester's rho_per_period",
        }[self.scope]
        return (
            f"{when}: {self.what} needs rho={self.needed:.4g} of cohort {self.cohort} but "
            f"only rho={max(0.0, self.available):.4g} is left of {cap} for that cohort"
        )


@dataclass(frozen=True)
class CohortForecast:
    """One node's outcome over the forecast horizon."""

    node: str
    start: dt.datetime
    end: dt.datetime
    runs_fitting: int
    refusal: Refusal | None
    bound_rho: float  # per-person loss bound at the refusal (before it) or at the end
    bound_cohort: str | None
    ring_runs: int
    by_cohort: Mapping[str, float] = field(default_factory=dict, repr=False, compare=False)
    """What each cohort would have been charged by then (for cohorts charged on their own
    or as existing cohorts; `Spending.everyone` is added)."""

    def message(self) -> str:
        bound = f"per-person loss bound rho={self.bound_rho:.4g}" + (
            f" (cohort {self.bound_cohort})" if self.bound_cohort else ""
        )
        if self.refusal is not None:
            return (
                f"node {self.node}: first refusal {self.refusal.message()}; "
                f"{self.runs_fitting} run(s) fit before it; {bound} at that date"
            )
        years = (self.end - self.start).days / 365.2425
        return (
            f"node {self.node}: nothing refused within {years:.3g} years "
            f"({self.runs_fitting} run(s), {self.ring_runs} with the blinding ring); "
            f"{bound} at {self.end:%Y-%m-%d}"
        )


def run_charges(plan: AuditPlan) -> list[Charge]:
    """What one (narrowed) run asks each node to charge, request by request."""
    charges = []
    seen: dict[str, int] = defaultdict(int)
    for q in planned_queries(plan):
        index = seen[q.check]
        seen[q.check] += 1
        charges.append(
            Charge(
                what=f"{q.check} query ({q.spec.template})",
                rho=plan.query_budget(q.check, index).rho_charged(),
                cohorts=tuple(q.spec.filters[COHORT]) if COHORT in q.spec.filters else None,
            )
        )
    if plan.checks.duplicates is not None:
        rho = plan.checks.duplicates.budget.rho_charged()
        charges.append(Charge("the blinding ring", rho, None, protocol=True, ahead=1))
    if plan.checks.revocation is not None:
        rho = plan.checks.revocation.budget.rho_charged()
        charges.append(Charge("revocation reconciliation", rho, None, ahead=1))
    return charges


def forecast_cohorts(
    plan: AuditPlan, rules: Iterable[BudgetRules], start: dt.datetime, years: float
) -> list[CohortForecast]:
    """Replay `plan`'s slots from `start` for `years` at every node; see the module docstring."""
    if not plan.schedule:
        raise ValueError(f"plan {plan.name} has no schedule to forecast")
    if not 0 < years <= MAX_YEARS:
        raise ValueError(f"years must be in (0, {MAX_YEARS}] (got {years:g})")
    start = start.astimezone(dt.UTC)
    end = start + dt.timedelta(days=round(365.2425 * years))
    slots = list(slots_between(plan.schedule, start, end))
    runs = run_plan(plan, slots)
    return [_forecast_node(r, runs, start, end) for r in rules]


def cohorts_read(charge: Charge, first: str, month: str) -> tuple[str, ...]:
    """The cohorts a charge of a run in `month` is charged to (every cohort from `first`)."""
    if charge.cohorts is not None:
        return charge.cohorts
    return month_range(first, add_months(month, charge.ahead))


def run_plan(
    plan: AuditPlan, slots: list[dt.datetime]
) -> list[tuple[dt.datetime, str, list[Charge]]]:
    """Each slot's month and charges; cohorts asked once are not asked again (incremental)."""
    answered: dict[str, set[str]] = defaultdict(set)
    out = []
    for slot in slots:
        month = month_of(slot)
        narrowed = plan_for_run(plan, month, answered)
        for check, months in (narrowed.asked or {}).items():
            answered[check].update(months)
        out.append((slot, month, run_charges(narrowed)))
    return out


class Spending:
    """What each cohort has been charged, as a node with cohort accounting keeps it.

    `everyone` is spending that holds for every cohort, also those arriving later: the live
    check seeds it with what the binding cohort has spent (a charge flagged `every_cohort`
    would add to it too; the node charges the ring and reconciliation only to the cohorts
    that have persons, so no charge of a plan is flagged so today).
    """

    def __init__(self, everyone: float = 0.0, period: str = "", in_period: float = 0.0) -> None:
        self.own: defaultdict[str, float] = defaultdict(float)
        self.own_period: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.everyone = everyone
        self.everyone_period: defaultdict[str, float] = defaultdict(float)
        if period:
            self.everyone_period[period] = in_period

    def total(self, cohort: str) -> float:
        return self.own[cohort] + self.everyone

    def in_period(self, cohort: str, period: str) -> float:
        return self.own_period[(cohort, period)] + self.everyone_period[period]

    def add(self, charge: Charge, first: str, month: str, period: str) -> None:
        if charge.protocol_all:
            self.everyone += charge.rho
            self.everyone_period[period] += charge.rho
            return
        for cohort in cohorts_read(charge, first, month):
            self.own[cohort] += charge.rho
            self.own_period[(cohort, period)] += charge.rho

    def bound(self) -> tuple[float, str | None]:
        """The most any cohort has been charged, and which (None: only charges to everyone)."""
        # The earliest of the cohorts charged most (months sort as text).
        cohort = min(self.own, key=lambda c: (-self.own[c], c), default=None)
        return (self.total(cohort) if cohort else self.everyone), cohort


def _forecast_node(
    rules: BudgetRules,
    runs: list[tuple[dt.datetime, str, list[Charge]]],
    start: dt.datetime,
    end: dt.datetime,
) -> CohortForecast:
    spending = Spending()
    fitting = 0
    ring_runs = 0
    for slot, month, charges in runs:
        period = period_containing(rules.period_kind, slot).key
        refusal = first_refusal(rules, slot, period, charges, month, spending)
        if refusal is not None:
            return _result(rules, (start, end), fitting, refusal, spending, ring_runs)
        for charge in charges:
            spending.add(charge, rules.first_cohort, month, period)
        fitting += 1
        ring_runs += any(c.protocol for c in charges)
    return _result(rules, (start, end), fitting, None, spending, ring_runs)


def first_refusal(  # noqa: PLR0917 (one run's state, passed through)
    rules: BudgetRules,
    slot: dt.datetime,
    period: str,
    charges: list[Charge],
    month: str,
    spending: Spending,
) -> Refusal | None:
    """The first charge of this run that a node would refuse, or None when it all fits.

    A charge to every cohort meets the cohort that has spent most, so checking the cohorts
    it reads by now (which hold every cohort charged on its own) suffices.
    """
    pending: dict[str, float] = defaultdict(float)
    pending_period: dict[str, float] = defaultdict(float)
    pending_all = 0.0
    share_cap = min(rules.node_share, rules.node_rho_total)
    for c in charges:
        if c.rho > rules.max_rho_per_request + _EPS:
            return Refusal(slot, c.what, None, "request", c.rho, rules.max_rho_per_request)
        floor, scope = (
            (rules.ring_min_rho, "ring_floor")
            if c.protocol
            else (rules.min_rho_per_query, "query_floor")
        )
        if c.rho < floor - _EPS:
            return Refusal(slot, c.what, None, scope, c.rho, floor)
        for cohort in cohorts_read(c, rules.first_cohort, month):
            spent = spending.total(cohort) + pending[cohort] + pending_all
            in_period = spending.in_period(cohort, period) + pending_period[cohort] + pending_all
            for scope, left in (
                ("node", rules.node_rho_total - spent),
                ("share", share_cap - spent),
                ("period", rules.rho_per_period - in_period),
            ):
                if c.rho > left + _EPS:
                    return Refusal(slot, c.what, cohort, scope, c.rho, left)
            if not c.protocol_all:
                pending[cohort] += c.rho
                pending_period[cohort] += c.rho
        if c.protocol_all:
            pending_all += c.rho
    return None


def _result(  # noqa: PLR0917 (one node's final state)
    rules: BudgetRules,
    window: tuple[dt.datetime, dt.datetime],
    fitting: int,
    refusal: Refusal | None,
    spending: Spending,
    ring_runs: int,
) -> CohortForecast:
    bound, cohort = spending.bound()
    return CohortForecast(
        node=rules.node,
        start=window[0],
        end=window[1],
        runs_fitting=fitting,
        refusal=refusal,
        bound_rho=bound,
        bound_cohort=cohort,
        ring_runs=ring_runs,
        by_cohort={c: spending.total(c) for c in sorted(spending.own)},
    )


# --- accuracy for an assumed cohort size --------------------------------------------------------

RATE_CHECKS: Mapping[str, str] = {
    "pass_rates": "assessment_results",
    "employment": "employment_outcomes",
}
"""The cohort checks whose metric is a rate of persons, and the template each asks."""


@dataclass(frozen=True)
class RateAccuracy:
    check: str
    noise_sd: float  # one released count's noise, persons
    half_width: float  # of one interval at the plan's confidence, for a rate of 0.5


def rate_accuracy(
    plan: AuditPlan, bounds: Mapping[str, int], cohort_size: int
) -> list[RateAccuracy]:
    """Planning aid: how wide one municipality's rate interval is for a cohort of `cohort_size`.

    A rate p = a / (a + b) of two noisy counts over n persons, at p = 0.5 (the widest):
    Var = p(1-p)/n (sampling) + ((1-p)^2 Var(a) + p^2 Var(b)) / n^2 (noise), with the noise
    each count carries at the check's rho and the policy's bound K (`common.mechanisms`).
    One interval at the plan's confidence, not adjusted for the audit's other tests (the
    report's tested intervals are wider), and for a plan that groups outcomes by nothing
    (a plan grouping by provider sums one noisy count per provider row).
    """
    if cohort_size < 1:
        raise ValueError(f"cohort size must be at least 1 (got {cohort_size})")
    z = NormalDist().inv_cdf(0.5 + plan.confidence / 2)
    out = []
    for check, template in RATE_CHECKS.items():
        if getattr(plan.checks, check) is None:
            continue
        budget = plan.query_budget(check)
        noise, _ = plan_noise(
            plan.mechanism,
            rho=budget.rho,
            epsilon=budget.epsilon,
            sensitivity=int(bounds.get(template, 1)),
            confidence=plan.confidence,
        )
        p, n = 0.5, float(cohort_size)
        variance = p * (1 - p) / n + ((1 - p) ** 2 + p**2) * noise.variance / n**2
        out.append(RateAccuracy(check, math.sqrt(noise.variance), z * math.sqrt(variance)))
    return out
