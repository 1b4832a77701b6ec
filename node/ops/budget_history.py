"""The privacy budget spent per requester and per budget period, read from the ledger.

`fedaudit node budget` shows the current period; a data officer answering "who
spent what, when" (an annual report, a complaint, a cap review) needs every
period. Spent budget is the sum of ledger entries (reserved, released and failed
all count, as in the ledger's own cap checks), so the figures here are exactly
the ones the node enforced. Caps come from the policy as it is now: the ledger
does not record what a past period's cap was.

Caps hold per cohort (docs/cohorts.md): "spent" is what the most charged cohort has
spent (the figure the caps were checked against, named by `cohort`), while
`charged` is the plain sum of the entries, which can exceed a cap when queries
were restricted to different cohorts. `cohort_spending` lists the node's spending
per cohort for the data officer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, case, func, inspect, select

from fedaudit.common.budget_units import cap_to_units, units_to_text
from fedaudit.node.privacy import cohorts
from fedaudit.node.privacy.ledger import FAILED, RELEASED, RESERVED, spent_ranges
from fedaudit.node.privacy.policy import Policy
from fedaudit.node.store.models import DataVersion, LedgerEntry, PersonCohort


@dataclass(frozen=True)
class PeriodSpend:
    """What one requester spent in one budget period (amounts as exact decimal rho).

    `spent_units` is what the most charged cohort (`cohort`) spent: the cap holds per
    cohort. `charged_units` is the sum of the entries over all cohorts.
    """

    period: str
    requester: str
    spent_units: int
    entries: int
    released: int
    failed: int
    reserved: int
    cap_units: int | None  # None: the requester is no longer in the policy
    charged_units: int = 0
    cohort: str = ""

    @property
    def remaining_units(self) -> int | None:
        return None if self.cap_units is None else self.cap_units - self.spent_units

    def to_json(self) -> dict[str, object]:
        remaining = self.remaining_units
        return {
            "period": self.period,
            "requester": self.requester,
            "spent_rho": units_to_text(self.spent_units),
            "cap_rho": None if self.cap_units is None else units_to_text(self.cap_units),
            "remaining_rho": None if remaining is None else units_to_text(max(remaining, 0)),
            "entries": self.entries,
            "released": self.released,
            "failed": self.failed,
            "reserved": self.reserved,
            "charged_rho": units_to_text(self.charged_units),
            "cohort": self.cohort,
        }


@dataclass(frozen=True)
class BudgetHistory:
    """Every (period, requester) with charges, oldest period first, and the node's total."""

    rows: tuple[PeriodSpend, ...]
    node_spent_units: int
    node_cap_units: int
    node_cohort: str = ""
    """The cohort that has spent most of the node's cap (what `node_spent_units` is)."""

    def to_json(self) -> dict[str, object]:
        return {
            "rows": [row.to_json() for row in self.rows],
            "node_spent_rho": units_to_text(self.node_spent_units),
            "node_cohort": self.node_cohort,
            "node_cap_rho": units_to_text(self.node_cap_units),
            "node_remaining_rho": units_to_text(
                max(self.node_cap_units - self.node_spent_units, 0)
            ),
        }


def budget_history(engine: Engine, policy: Policy, *, period: str | None = None) -> BudgetHistory:
    """Spent budget per requester per period (only `period` when given), in one snapshot."""

    def count_state(state: str) -> object:
        return func.sum(case((LedgerEntry.state == state, 1), else_=0))

    query = (
        select(
            LedgerEntry.period,
            LedgerEntry.requester,
            func.sum(LedgerEntry.rho_units),
            func.count(),
            count_state(RELEASED),
            count_state(FAILED),
            count_state(RESERVED),
        )
        .group_by(LedgerEntry.period, LedgerEntry.requester)
        .order_by(LedgerEntry.period, LedgerEntry.requester)
    )
    if period is not None:
        query = query.where(LedgerEntry.period == period)
    with engine.connect() as conn, conn.begin():
        rows = conn.execute(query).all()
        node_spent, node_cohort = cohorts.peak(spent_ranges(conn), cohorts.ALL)
        peaks = {
            (period_key, requester): cohorts.peak(
                spent_ranges(conn, requester, period_key), cohorts.ALL
            )
            for period_key, requester, *_ in rows
        }
    spends = []
    for period_key, requester, units, entries, released, failed, reserved in rows:
        entry = policy.requesters.get(requester)
        peak, cohort = peaks[(period_key, requester)]
        spends.append(
            PeriodSpend(
                period=period_key,
                requester=requester,
                spent_units=peak,
                entries=int(entries),
                released=int(released),
                failed=int(failed),
                reserved=int(reserved),
                cap_units=None if entry is None else cap_to_units(entry.rho_per_period),
                charged_units=int(units),
                cohort=cohort,
            )
        )
    return BudgetHistory(
        rows=tuple(spends),
        node_spent_units=node_spent,
        node_cap_units=cap_to_units(policy.node_rho_total),
        node_cohort=node_cohort if node_spent else "",
    )


@dataclass(frozen=True)
class CohortSpend:
    """Node-wide spending of a run of consecutive cohorts that spent the same."""

    first: str
    last: str
    spent_units: int
    persons: int
    """Persons of these cohorts at this node (never released: the officer's own view)."""

    def to_json(self) -> dict[str, object]:
        return {
            "first": self.first,
            "last": self.last,
            "spent_rho": units_to_text(self.spent_units),
            "persons": self.persons,
        }


def cohort_spending(engine: Engine, policy: Policy) -> list[CohortSpend]:
    """The node's spending per cohort key, consecutive equal cohorts merged into one row.

    Keys run from the policy's first cohort (which also holds every earlier month) to
    the newest import's month, as in the catalogue's `cohort` dimension.
    """
    if "person_cohorts" not in set(inspect(engine).get_table_names()):
        return []
    with engine.connect() as conn, conn.begin():
        newest = conn.execute(select(func.max(DataVersion.reference_date))).scalar_one_or_none()
        ranges = spent_ranges(conn)
        counts = dict(
            conn.execute(
                select(PersonCohort.cohort, func.count()).group_by(PersonCohort.cohort)
            ).all()
        )
    first = policy.cohort_start
    if isinstance(newest, str):  # SQLite returns MAX() of a date as text
        newest = dt.date.fromisoformat(newest)
    keys = (cohorts.months(first, cohorts.month_of(newest)) if newest else ()) or (first,)
    found: list[CohortSpend] = []
    for index, key in enumerate(keys):
        spent = sum(units for a, b, units in ranges if a <= key <= b)
        persons = sum(n for c, n in counts.items() if c == key or (index == 0 and c < key))
        if found and found[-1].spent_units == spent:
            last = found[-1]
            found[-1] = CohortSpend(last.first, key, spent, last.persons + persons)
        else:
            found.append(CohortSpend(key, key, spent, persons))
    return found
