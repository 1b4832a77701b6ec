"""The persistent privacy ledger: charge before release, two caps, checked atomically.

Implements research/dp-libraries.md §4.4 on the `budget_locks` and `ledger_entries`
tables. Spent budget is always the sum of ledger entries (no running totals to
drift). A charge is written as `reserved` before any noise is drawn, in one
transaction that (a query passes its own, from `transaction`, so that the charge,
the release and the query-log row commit together; the ring reserves in a
transaction of its own and settles later)

1. makes sure the lock rows of its scopes exist (`node`, `requester:{name}:{period}`),
2. locks them in a fixed order (`SELECT ... FOR UPDATE` on PostgreSQL; on SQLite the
   whole transaction already holds the writer lock from `BEGIN IMMEDIATE`),
3. sums what was spent (reserved, released and failed entries all count) by each
   cohort the charge would be charged to,
4. checks the per-request maximum, the requester's cap for the period, the
   requester's share of the node's never-renewed cap (`Policy.node_share`) and the
   node's cap itself, each **per cohort** (the cohort that has spent most binds),
   and only then inserts the entry and its cohort ranges.

Cohorts (`fedaudit.node.privacy.cohorts`, docs/cohorts.md): every entry is charged
to one or more disjoint ranges of cohorts; what a cohort has spent is the sum of the
entries charged to it. A person belongs to one cohort, so the caps per cohort are
the bounds per person. The ring and reconciliation are charged to every cohort that
has persons (`existing_cohorts`); a charge without a cohort set, and everything
written before cohort accounting, to every cohort.

Requests belong to the requester that sent them: a request id is unique per
requester (another requester using the same id is a different request), and only a
requester's own entries are ever found for it, so nobody can squat another's ids or
learn what another asked. For the same reason `status` reports the node-wide budget
as the caller's share of it: what the caller itself may still spend, which moves only
with its own charges (unless the policy was changed so that shares over-commit the
node, when the node's own remainder is lower and is reported instead).

Because every charge locks the `node` row, charges are serialised node-wide across
threads and processes; the sums are read after the lock is held, under READ
COMMITTED, so they include every charge committed before. A refusal raises and
rolls back: nothing is written.

Amounts are integers of 1e-12 rho. Charges round up and caps round down, so integer
comparisons are exact on every database and the ledger can only over-count.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import structlog
from sqlalchemy import Connection, Engine, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from fedaudit.common.budget_units import cap_to_units, rho_to_units, units_to_rho, units_to_text
from fedaudit.node.domain import BudgetStatus, Charge, Mechanism
from fedaudit.node.errors import (
    BudgetExhaustedError,
    InvalidParametersError,
    NodeError,
    RequesterNotAllowedError,
)
from fedaudit.node.privacy import cohorts as co
from fedaudit.node.privacy.policy import Policy
from fedaudit.node.store.db import is_sqlite
from fedaudit.node.store.models import BudgetLock, DataVersion, LedgerCohortRange, LedgerEntry

log = structlog.get_logger(__name__)

MAX_REQUEST_ID_LENGTH = 128

RESERVED = "reserved"
RELEASED = "released"
FAILED = "failed"


class DuplicateRequestError(NodeError):
    """A reservation for this request id exists already; nothing new was written.

    The caller should look the request up (`Ledger.find_by_request_id`) and replay
    the stored answer instead of charging again.
    """

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request id {request_id!r} was already charged")
        self.request_id = request_id


class LedgerStateError(NodeError):
    """A ledger entry is missing or not in the state an operation needs (a caller bug)."""


@dataclass(frozen=True)
class StoredEntry:
    """A ledger entry as read back: the charge and, once released, the answer."""

    id: int
    request_id: str
    requester: str
    query_hash: str
    data_version: str
    state: str
    rho: float
    epsilon: float | None
    answer_json: str | None


def _requester_scope(requester: str, period: str) -> str:
    return f"requester:{requester}:{period}"


NODE_SCOPE = "node"
_ENTRIES = LedgerEntry.__table__
_RANGES = LedgerCohortRange.__table__


def _stored(row: Mapping[str, Any]) -> StoredEntry:
    return StoredEntry(
        id=int(row["id"]),
        request_id=row["request_id"],
        requester=row["requester"],
        query_hash=row["query_hash"],
        data_version=row["data_version"],
        state=row["state"],
        rho=units_to_rho(int(row["rho_units"])),
        epsilon=row["epsilon"],
        answer_json=row["answer"],
    )


class Ledger:
    """The node's privacy ledger in its own database. Safe to share between threads."""

    def __init__(self, engine: Engine, policy: Policy) -> None:
        self._engine = engine
        self._policy = policy

    # --- charging --------------------------------------------------------------------------

    def reserve(
        self,
        *,
        request_id: str,
        requester: str,
        template: str,
        template_version: str,
        query_hash: str,
        data_version: str,
        mechanism: Mechanism,
        charge: Charge,
        now: dt.datetime,
        outer: Connection | None = None,
        cohorts: Sequence[co.CohortRange] = co.ALL,
        data_key: str | None = None,
    ) -> int:
        """Charge `charge` to `requester` before anything is released; return the entry id.

        The template's permission is the caller's check (`Policy.allows`); the ledger
        only knows budgets. Raises `BudgetExhaustedError` (scope request, requester or
        node, with what remains and the cohort that binds), `DuplicateRequestError`,
        `RequesterNotAllowedError` or `InvalidParametersError`; in every such case
        nothing is written.

        `cohorts` are the ranges of cohorts the query can read (default: every
        cohort); each cap is checked against the cohort in them that has spent most.
        `data_key` is what `find_released` matches for replay (default: `data_version`).

        With `outer` (from `transaction`), the charge is part of the caller's
        transaction and its locks are held until the caller commits or rolls back.
        """
        if not request_id or len(request_id) > MAX_REQUEST_ID_LENGTH:
            raise InvalidParametersError(
                f"request id must have 1 to {MAX_REQUEST_ID_LENGTH} characters",
                {"field": "request_id"},
            )
        entry = self._policy.requesters.get(requester)
        if entry is None:
            raise RequesterNotAllowedError(f"requester {requester!r} is not in the node policy")
        if not math.isfinite(charge.rho) or charge.rho <= 0:
            raise ValueError(f"a charge must have a finite rho > 0, got {charge.rho!r}")
        period = self._policy.period_of(now)
        ranges = co.check_ranges(cohorts)
        cost = rho_to_units(charge.rho)
        per_request = cap_to_units(self._policy.max_rho_per_request)
        if cost > per_request:
            self._refuse(
                "request",
                left=per_request,
                cost=cost,
                period=period,
                requester=requester,
                request_id=request_id,
            )

        try:
            with self._tx(outer) as conn:
                self._lock_scopes(conn, [NODE_SCOPE, _requester_scope(requester, period)])
                if self._entry_id(conn, requester, request_id) is not None:
                    raise DuplicateRequestError(request_id)
                node_rows, share_rows, period_rows = self._scope_ranges(
                    conn, requester, period, ranges
                )
                node_spent, node_at = co.peak(node_rows, ranges)
                share_spent, share_at = co.peak(share_rows, ranges)
                requester_spent, requester_at = co.peak(period_rows, ranges)
                failing = [
                    (left, scope, cohort)
                    for scope, left, cohort in (
                        ("node", cap_to_units(self._policy.node_rho_total) - node_spent, node_at),
                        (
                            "share",
                            cap_to_units(self._policy.node_share(requester)) - share_spent,
                            share_at,
                        ),
                        (
                            "requester",
                            cap_to_units(entry.rho_per_period) - requester_spent,
                            requester_at,
                        ),
                    )
                    if cost > left
                ]
                if failing:
                    # Report the binding scope: the one with least left; on a tie the
                    # caller's own share (it reveals nothing of others' spending), then
                    # the node (waiting for the next period will not help there).
                    order = {"share": 0, "node": 1, "requester": 2}
                    left, scope, cohort = min(failing, key=lambda item: (item[0], order[item[1]]))
                    self._refuse(
                        scope,
                        left=left,
                        cost=cost,
                        period=period,
                        requester=requester,
                        request_id=request_id,
                        cohort=cohort,
                    )
                result = conn.execute(
                    _ENTRIES.insert().values(
                        request_id=request_id,
                        requester=requester,
                        period=period,
                        template=template,
                        template_version=template_version,
                        query_hash=query_hash,
                        data_version=data_version,
                        mechanism=mechanism.value,
                        rho_units=cost,
                        epsilon=charge.epsilon,
                        delta=charge.delta,
                        state=RESERVED,
                        answer=None,
                        created_at=now,
                        data_key=data_key if data_key is not None else data_version,
                    )
                )
                entry_id = int(result.inserted_primary_key[0])
                conn.execute(
                    _RANGES.insert(),
                    [{"entry_id": entry_id, "first": a, "last": b} for a, b in ranges],
                )
        except IntegrityError:
            # Only the request id is unique among the columns we write; the explicit check
            # above makes this a last line of defence.
            if self.find_by_request_id(request_id, requester=requester) is not None:
                raise DuplicateRequestError(request_id) from None
            raise
        log.info(
            "ledger.reserved",
            entry_id=entry_id,
            request_id=request_id,
            requester=requester,
            template=template,
            period=period,
            rho=units_to_text(cost),
            cohorts=[list(r) for r in ranges],
        )
        return entry_id

    def complete(self, entry_id: int, answer_json: str, outer: Connection | None = None) -> None:
        """The answer was released: store it (replayed free of charge from now on)."""
        self._transition(
            entry_id,
            update(LedgerEntry).values(state=RELEASED, answer=answer_json),
            "released",
            outer,
        )

    def fail(self, entry_id: int) -> None:
        """Noise was drawn on real data but delivery failed: the charge stands."""
        self._transition(entry_id, update(LedgerEntry).values(state=FAILED), "failed")

    def cancel(self, entry_id: int) -> None:
        """Failure before any data was touched: remove the reservation (a full refund)."""
        self._transition(entry_id, delete(LedgerEntry), "cancelled")

    def _delete_ranges(self, conn: Connection, entry_id: int) -> None:
        """Remove a cancelled reservation's cohort ranges (before the entry: foreign key)."""
        conn.execute(
            delete(LedgerCohortRange).where(
                LedgerCohortRange.entry_id == entry_id,
                select(LedgerEntry.state).where(LedgerEntry.id == entry_id).scalar_subquery()
                == RESERVED,
            )
        )

    def _transition(
        self, entry_id: int, statement: Any, event: str, outer: Connection | None = None
    ) -> None:
        with self._tx(outer) as conn:
            if event == "cancelled":
                self._delete_ranges(conn, entry_id)
            result = conn.execute(
                statement.where(LedgerEntry.id == entry_id, LedgerEntry.state == RESERVED)
            )
            if result.rowcount != 1:
                state = conn.execute(
                    select(LedgerEntry.state).where(LedgerEntry.id == entry_id)
                ).scalar_one_or_none()
                found = "does not exist" if state is None else f"is {state}, not reserved"
                raise LedgerStateError(f"ledger entry {entry_id} {found}")
        log.info(f"ledger.{event}", entry_id=entry_id)

    # --- lookups ---------------------------------------------------------------------------

    def find_by_request_id(
        self, request_id: str, *, requester: str | None = None
    ) -> StoredEntry | None:
        """The entry `requester` had charged for `request_id`, in whatever state, or None.

        Request ids are per requester; without `requester`, the oldest entry of any
        requester with this id (for node-internal ids such as a ring run's, which no
        requester chooses).
        """
        with self._connect() as conn, conn.begin():
            return self._by_request_id(conn, request_id, requester)

    def find_released(
        self,
        query_hash: str,
        data_version: str,
        *,
        requester: str,
        data_key: str | None = None,
    ) -> StoredEntry | None:
        """The newest answer released to `requester` for the same query on the same data.

        Replaying it costs nothing and gives a repeating requester nothing new to average.
        Only the requester's own answers are found: another's would tell it what that
        requester asked (and give it the answer without a charge).

        "The same data" is the same `data_key` (a digest of the data of the cohorts the
        query reads, so a new month's import leaves questions about old cohorts
        replayable); entries written before cohort accounting have none and match on
        their `data_version`.
        """
        found = self.find_released_many(
            (query_hash,), data_version, requester=requester, data_key=data_key
        )
        return found.get(query_hash)

    def find_released_many(
        self,
        query_hashes: Sequence[str],
        data_version: str,
        *,
        requester: str,
        data_key: str | None = None,
    ) -> dict[str, StoredEntry]:
        """`find_released` for several query hashes at once (one read, not one per hash).

        Maps each hash that has a released answer to its newest one; hashes without
        one are missing from the result.
        """
        with self._connect() as conn, conn.begin():
            return self._released(conn, query_hashes, data_version, requester, data_key)

    def find_replay(
        self,
        request_id: str,
        query_hashes: Sequence[str],
        data_version: str,
        *,
        requester: str,
        data_key: str | None = None,
    ) -> tuple[StoredEntry | None, dict[str, StoredEntry]]:
        """`find_by_request_id` and `find_released_many` for one request, in one read.

        What a query or preflight consults before it charges anything: the caller's
        entry for this request id (if any), and its released answers to the query.
        """
        with self._connect() as conn, conn.begin():
            entry = self._by_request_id(conn, request_id, requester) if request_id else None
            released = self._released(conn, query_hashes, data_version, requester, data_key)
        return entry, released

    @staticmethod
    def _by_request_id(
        conn: Connection, request_id: str, requester: str | None
    ) -> StoredEntry | None:
        query = select(_ENTRIES).where(_ENTRIES.c.request_id == request_id)
        if requester is not None:
            query = query.where(_ENTRIES.c.requester == requester)
        row = conn.execute(query.order_by(_ENTRIES.c.id).limit(1)).one_or_none()
        return None if row is None else _stored(row._mapping)

    @staticmethod
    def _released(
        conn: Connection,
        query_hashes: Sequence[str],
        data_version: str,
        requester: str,
        data_key: str | None,
    ) -> dict[str, StoredEntry]:
        key = data_key if data_key is not None else data_version
        rows = conn.execute(
            select(_ENTRIES)
            .where(
                LedgerEntry.requester == requester,
                LedgerEntry.query_hash.in_(list(query_hashes)),
                or_(
                    LedgerEntry.data_key == key,
                    and_(
                        LedgerEntry.data_key.is_(None),
                        LedgerEntry.data_version == data_version,
                    ),
                ),
                LedgerEntry.state == RELEASED,
            )
            .order_by(LedgerEntry.id.desc())
        ).all()
        found: dict[str, StoredEntry] = {}
        for row in rows:  # newest first: keep each hash's first row
            if row.query_hash not in found:
                found[row.query_hash] = _stored(row._mapping)
        return found

    def status(
        self,
        requester: str,
        now: dt.datetime,
        cohorts: Sequence[co.CohortRange] = co.ALL,
    ) -> BudgetStatus:
        """What `requester` has spent and may still spend now, as it may see it.

        Per cohort: the figures are those of the cohort in `cohorts` (default: all)
        that has spent most, i.e. what a query reading `cohorts` would meet;
        `BudgetStatus.cohort` names it.

        `node_rho_cap` is the requester's share of the node's never-renewed cap and
        `node_rho_remaining` what is left of that share after the requester's own
        charges: other requesters' spending does not show. Only when the policy was
        changed so that the shares over-commit the node (and the node itself has less
        left than the share) is the node's own smaller remainder reported, because
        that is what a query would meet.
        """
        entry = self._policy.requesters.get(requester)
        if entry is None:
            raise RequesterNotAllowedError(f"requester {requester!r} is not in the node policy")
        period = self._policy.period_of(now)
        ranges = co.check_ranges(cohorts)
        with self._connect() as conn, conn.begin():
            node_rows, share_rows, period_rows = self._scope_ranges(conn, requester, period, ranges)
            spent, _ = co.peak(period_rows, ranges)
            lifetime, lifetime_at = co.peak(share_rows, ranges)
            node_spent, node_at = co.peak(node_rows, ranges)
        requester_cap = cap_to_units(entry.rho_per_period)
        share = self._policy.node_share(requester)
        share_left = cap_to_units(share) - lifetime
        node_left = cap_to_units(self._policy.node_rho_total) - node_spent
        # The cohort named is the one that binds the node-wide figure the caller sees
        # (its own share unless the node's remainder is lower).
        binding = lifetime_at if share_left <= node_left else node_at
        return BudgetStatus(
            period=period,
            requester_rho_cap=entry.rho_per_period,
            requester_rho_spent=units_to_rho(spent),
            requester_rho_remaining=units_to_rho(max(0, requester_cap - spent)),
            node_rho_cap=share,
            node_rho_remaining=units_to_rho(max(0, min(share_left, node_left))),
            max_rho_per_request=self._policy.max_rho_per_request,
            cohort=binding,
            ring_padding_rho=self._policy.ring.padding_rho or 0.0,
        )

    def spent_by_cohort(self, keys: Sequence[str]) -> dict[str, float]:
        """Rho charged node-wide to each cohort key in `keys` (the data officer's view).

        A key's spending is the sum of the entries whose ranges contain it; the first
        key of the public list also stands for earlier months, which have spent at
        least as much as it (entries charged before cohort accounting count for all).
        """
        with self._connect() as conn, conn.begin():
            rows = self._spent_ranges(conn)
        return {
            key: units_to_rho(sum(units for a, b, units in rows if a <= key <= b)) for key in keys
        }

    def spent_by_requester(self, now: dt.datetime) -> dict[str, float]:
        """Rho spent in the current period per requester (every policy requester listed).

        Requesters removed from the policy still appear while they have charges in the
        period, so the data officer's view adds up.
        """
        period = self._policy.period_of(now)
        with self._connect() as conn, conn.begin():
            rows = conn.execute(
                select(LedgerEntry.requester, func.coalesce(func.sum(LedgerEntry.rho_units), 0))
                .where(LedgerEntry.period == period)
                .group_by(LedgerEntry.requester)
            ).all()
        spent = dict.fromkeys(self._policy.requesters, 0.0)
        for requester, units in rows:
            spent[requester] = units_to_rho(int(units))
        return spent

    def existing_cohorts(self, now: dt.datetime) -> tuple[co.CohortRange, ...]:
        """The cohorts a request reading the whole registry is charged to (ring, reconcile).

        Every person's cohort is at most the month of the newest import's reference date;
        one month beyond that month or `now`'s (whichever is later) covers an import that
        commits between the charge and the read. Later cohorts are not charged: their
        persons were not there to be read. Without any import: every cohort.
        """
        with self._connect() as conn, conn.begin():
            newest = conn.execute(select(func.max(DataVersion.reference_date))).scalar()
        if newest is None:
            return co.ALL
        if isinstance(newest, str):  # SQLite returns MAX() of a date as text
            newest = dt.date.fromisoformat(newest)
        last = max(co.month_of(newest), co.month_of(now.astimezone(dt.UTC).date()))
        return ((co.EARLIEST, co.add_months(last, 1)),)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction on the node's writer database, committed when the block ends.

        Pass the connection to `reserve`, `complete` and `QueryLog.append` to make a
        charge, its release and its log row one unit: all of them, or none (a crash or
        an error inside the block rolls everything back).
        """
        with self._connect() as conn, conn.begin():
            yield conn

    # --- internals -------------------------------------------------------------------------

    @contextmanager
    def _tx(self, conn: Connection | None) -> Iterator[Connection]:
        """The caller's transaction when given one, else a transaction of our own."""
        if conn is not None:
            yield conn
            return
        with self.transaction() as own:
            yield own

    def _connect(self) -> Connection:
        """A connection whose statements each see everything committed before them.

        The cap check depends on it: the sums are read after the lock is taken, and must
        include the charge of whoever held the lock before (true for READ COMMITTED, not
        for REPEATABLE READ, so we pin it on PostgreSQL whatever the engine defaults to).
        SQLite serialises whole transactions instead (BEGIN IMMEDIATE, see db.py).
        """
        conn = self._engine.connect()
        if not is_sqlite(self._engine):
            conn = conn.execution_options(isolation_level="READ COMMITTED")
        return conn

    def _lock_scopes(self, conn: Connection, scopes: list[str]) -> None:
        """Lock the lock rows of `scopes` one at a time in sorted order, creating missing ones.

        A scope's row exists from its first charge on, so it is locked first and inserted
        only when missing (one statement per scope, not two). Insert-if-missing uses ON
        CONFLICT DO NOTHING, which is race-free on both back ends (on PostgreSQL a
        concurrent insert of the same scope waits for the other transaction instead of
        failing), and the row is then locked. The fixed order prevents deadlocks.
        """
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        for scope in sorted(set(scopes)):
            query = select(BudgetLock.scope).where(BudgetLock.scope == scope)
            if not is_sqlite(self._engine):
                query = query.with_for_update()
            if conn.execute(query).one_or_none() is None:
                conn.execute(
                    dialect.insert(BudgetLock).values(scope=scope).on_conflict_do_nothing()
                )
                conn.execute(query).one()

    @staticmethod
    def _entry_id(conn: Connection, requester: str, request_id: str) -> int | None:
        return conn.execute(
            select(LedgerEntry.id).where(
                LedgerEntry.requester == requester, LedgerEntry.request_id == request_id
            )
        ).scalar_one_or_none()

    @staticmethod
    def _scope_ranges(
        conn: Connection,
        requester: str,
        period: str,
        ranges: Sequence[co.CohortRange] = co.ALL,
    ) -> tuple[list[tuple[str, str, int]], ...]:
        """(first, last, units) rows of the node, of `requester`, and of it in `period`.

        One grouped scan instead of three: the node's rows are the sums over all
        (requester, period) groups of a range. Only the charged ranges that overlap the
        span of `ranges` are read: the others hold no cohort in `ranges`, so
        `cohorts.peak` over `ranges` is the same without them, and a question about
        recent cohorts no longer reads years of history.
        """
        span = []
        lowest = min(a for a, _ in ranges)
        highest = max(b for _, b in ranges)
        if lowest > co.EARLIEST:
            # A question that starts after the earliest cohort: skip the history before it.
            # (One that starts there reads nearly every range anyway, and a plain scan
            # without the filter is faster.)
            span.append(_RANGES.c.last >= lowest)
            if highest < co.LATEST:
                span.append(_RANGES.c.first <= highest)
        node: dict[tuple[str, str], int] = {}
        mine: dict[tuple[str, str], int] = {}
        now: list[tuple[str, str, int]] = []
        for who, when, first, last, units in conn.execute(
            select(
                _ENTRIES.c.requester,
                _ENTRIES.c.period,
                _RANGES.c.first,
                _RANGES.c.last,
                func.sum(_ENTRIES.c.rho_units),
            )
            .select_from(_RANGES.join(_ENTRIES, _RANGES.c.entry_id == _ENTRIES.c.id))
            .where(*span)
            .group_by(_ENTRIES.c.requester, _ENTRIES.c.period, _RANGES.c.first, _RANGES.c.last)
        ):
            key, amount = (str(first), str(last)), int(units)
            node[key] = node.get(key, 0) + amount
            if who == requester:
                mine[key] = mine.get(key, 0) + amount
                if when == period:
                    now.append((*key, amount))
        return (
            [(*k, v) for k, v in node.items()],
            [(*k, v) for k, v in mine.items()],
            now,
        )

    @staticmethod
    def _spent_ranges(
        conn: Connection, requester: str | None = None, period: str | None = None
    ) -> list[tuple[str, str, int]]:
        return spent_ranges(conn, requester, period)

    def _refuse(
        self,
        scope: str,
        *,
        left: int,
        cost: int,
        period: str,
        requester: str,
        request_id: str,
        cohort: str = "",
    ) -> NoReturn:
        remaining = max(0, left)
        details = {
            "scope": scope,
            "remaining_rho": units_to_text(remaining),
            "requested_rho": units_to_text(cost),
            "period": period,
        }
        where = ""
        if scope != "request":
            details["cohort"] = cohort
            where = f" for {cohort_label(cohort)}"
        if scope == "request":
            message = (
                f"a single request may cost at most {details['remaining_rho']} rho; "
                f"this one costs {details['requested_rho']}"
            )
        elif scope == "share":
            message = (
                f"requester {requester!r} has {details['remaining_rho']} rho left of its share "
                f"of the node's total privacy budget{where} (never renewed); this request costs "
                f"{details['requested_rho']}"
            )
        elif scope == "node":
            message = (
                f"the node's total privacy budget has {details['remaining_rho']} rho left{where} "
                f"(never renewed); this request costs {details['requested_rho']}"
            )
        else:
            message = (
                f"requester {requester!r} has {details['remaining_rho']} rho left in period "
                f"{period}{where}; this request costs {details['requested_rho']}"
            )
        log.info("ledger.refused", request_id=request_id, requester=requester, **details)
        raise BudgetExhaustedError(message, details)


def spent_ranges(
    conn: Connection, requester: str | None = None, period: str | None = None
) -> list[tuple[str, str, int]]:
    """What was charged per distinct cohort range: (first, last, units).

    Everything at this node over all periods; by `requester` only, and in `period`
    only, if given. Grouped in SQL, so the rows are as many as the distinct ranges
    (a handful per cohort), not as the entries (years of monthly runs). Feed it to
    `cohorts.peak` for what the most charged cohort has spent.
    """
    query = select(_RANGES.c.first, _RANGES.c.last, func.sum(_ENTRIES.c.rho_units)).select_from(
        _RANGES.join(_ENTRIES, _RANGES.c.entry_id == _ENTRIES.c.id)
    )
    if requester is not None:
        query = query.where(_ENTRIES.c.requester == requester)
    if period is not None:
        query = query.where(_ENTRIES.c.period == period)
    rows = conn.execute(query.group_by(_RANGES.c.first, _RANGES.c.last)).all()
    return [(str(a), str(b), int(units)) for a, b, units in rows]


def cohort_label(cohort: str) -> str:
    """A cohort as a refusal names it ("cohort 2027-03", or the earliest ones)."""
    if cohort == co.EARLIEST:
        return "the earliest cohort (and those before cohort accounting began)"
    return f"cohort {cohort}"
