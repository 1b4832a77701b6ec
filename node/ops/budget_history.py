"""The privacy budget spent per requester and per budget period, read from the ledger.

`fedaudit node budget` shows the current period; a data officer answering "who
spent what, when" (an annual report, a complaint, a cap review) needs every
period. Spent budget is the sum of ledger entries (reserved, released and failed
all count, as in the ledger's own cap checks), so the figures here are exactly
the ones the node enforced. Caps come from the policy as it is now: the ledger
does not record what a past period's cap was.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, case, func, select

from fedaudit.common.budget_units import cap_to_units, units_to_text
from fedaudit.node.privacy.ledger import FAILED, RELEASED, RESERVED
from fedaudit.node.privacy.policy import Policy
from fedaudit.node.store.models import LedgerEntry


@dataclass(frozen=True)
class PeriodSpend:
    """What one requester spent in one budget period (amounts as exact decimal rho)."""

    period: str
    requester: str
    spent_units: int
    entries: int
    released: int
    failed: int
    reserved: int
    cap_units: int | None  # None: the requester is no longer in the policy

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
        }


@dataclass(frozen=True)
class BudgetHistory:
    """Every (period, requester) with charges, oldest period first, and the node's total."""

    rows: tuple[PeriodSpend, ...]
    node_spent_units: int
    node_cap_units: int

    def to_json(self) -> dict[str, object]:
        return {
            "rows": [row.to_json() for row in self.rows],
            "node_spent_rho": units_to_text(self.node_spent_units),
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
        node_spent = conn.execute(
            select(func.coalesce(func.sum(LedgerEntry.rho_units), 0))
        ).scalar_one()
    spends = []
    for period_key, requester, units, entries, released, failed, reserved in rows:
        entry = policy.requesters.get(requester)
        spends.append(
            PeriodSpend(
                period=period_key,
                requester=requester,
                spent_units=int(units),
                entries=int(entries),
                released=int(released),
                failed=int(failed),
                reserved=int(reserved),
                cap_units=None if entry is None else cap_to_units(entry.rho_per_period),
            )
        )
    return BudgetHistory(
        rows=tuple(spends),
        node_spent_units=int(node_spent),
        node_cap_units=cap_to_units(policy.node_rho_total),
    )
