"""The node's tamper-evident query log: every request it handled, as a hash chain in its database.

Each row stores who asked, what (method, template and version, canonical
parameters), what it cost (rho units charged), the sha256 of the answer released
(`fedaudit.common.digest`), and the outcome (answered, replayed, refused, failed, with
the refusal reason). Its `row_hash` is sha256 over a canonical encoding of all of
that plus its `seq` and the previous row's hash, so editing any field, deleting a
row or reordering rows breaks the chain at a row `verify` names.

Appends are serialised on the single `query_log_head` row (`SELECT ... FOR UPDATE`
on PostgreSQL; SQLite transactions start with `BEGIN IMMEDIATE` and so already
hold the writer lock), the same style as the ledger's budget locks. A link's seq
is the head's seq + 1, read under that lock, and `seq` is the primary key, so
concurrent appends can neither fork the chain nor leave gaps. The head also names
the last link, so cutting rows off the end is detected.

What this cannot detect on its own: someone with write access who rewrites the
whole chain from a row onward, head included. So every answer and refusal carries
the seq and hash of the row that logged it (`LogEvent.head`); the coordinator keeps
them, and `fedaudit node log compare` (`logcompare.check_anchors`) finds a rewrite
at or before any of them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from fedaudit.node.store.db import is_sqlite
from fedaudit.node.store.models import QueryLogEntry, QueryLogHead

log = structlog.get_logger(__name__)

FORMAT = "fedaudit-querylog-v1"
GENESIS_HASH = "0" * 64
HEAD_ID = 1

METHODS = (
    "capabilities",
    "preflight",
    "query",
    # The blinding ring (fedaudit.node.ring.service): each call is a link of its own.
    "ring_join",
    "ring_start",
    "ring_hop",
    "ring_tally",
    "ring_finish",
)
ANSWERED, REPLAYED, REFUSED, FAILED = "answered", "replayed", "refused", "failed"
STATUSES = (ANSWERED, REPLAYED, REFUSED, FAILED)
INTERNAL = "INTERNAL"
"""The reason logged for a failure that is not a refusal (a bug or an outage)."""

MAX_PARAMETERS = 4000
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_LIMITS = {
    "requester": 200,
    "request_id": 128,
    "template": 64,
    "template_version": 16,
    "data_version": 64,
    "reason": 32,
    "message": 500,
}
_LOGGED_MARK = "__fedaudit_query_logged__"


@dataclass
class LogEvent:
    """What one request did, filled in while it is handled and then appended."""

    requester: str
    method: str
    request_id: str = ""
    template: str = ""
    template_version: str = ""
    data_version: str = ""
    parameters: str = ""
    rho_units: int = 0
    epsilon: float | None = None
    answer_digest: str = ""
    status: str = ANSWERED
    reason: str = ""
    message: str = ""
    appended: bool = False
    head: tuple[int, str] | None = None
    """(seq, row_hash) of the row this request was logged as, once it is."""
    """Already written in the caller's transaction (a query's charge and its row commit together)."""


@dataclass(frozen=True)
class LogRow:
    """A link of the chain as stored."""

    seq: int
    logged_at: str
    requester: str
    method: str
    request_id: str
    template: str
    template_version: str
    data_version: str
    parameters: str
    rho_units: int
    epsilon_charged: str
    answer_digest: str
    status: str
    reason: str
    message: str
    prev_hash: str
    row_hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verification:
    """The outcome of walking the chain: intact, or the first broken row and why."""

    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None
    problem: str = ""


_ROW_FIELDS = tuple(f.name for f in fields(LogRow))
_HASHED_FIELDS = tuple(f for f in _ROW_FIELDS if f != "row_hash")


def row_hash(values: dict[str, Any]) -> str:
    """sha256 over the canonical encoding of a row: a JSON list in a fixed field order."""
    payload = [FORMAT, *(values[name] for name in _HASHED_FIELDS)]
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def canonical_parameters(text: str) -> str:
    """The parameters as logged: long texts (a hostile request) are cut, with their digest kept."""
    if len(text) <= MAX_PARAMETERS:
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"{text[:MAX_PARAMETERS]}...[cut; {len(text)} chars, sha256 {digest}]"


def format_timestamp(moment: dt.datetime) -> str:
    """UTC, fixed width, so the text hashes the same everywhere and sorts in time order."""
    return moment.astimezone(dt.UTC).strftime(_TIMESTAMP_FORMAT)


def head_details(row: LogRow) -> dict[str, str]:
    """ErrorInfo metadata anchoring a refusal to the row that logged it."""
    return {"log_seq": str(row.seq), "log_hash": row.row_hash}


def mark_logged(exc: BaseException) -> None:
    """Note that a request's failure is in the log, so an outer layer does not log it twice."""
    setattr(exc, _LOGGED_MARK, True)


def was_logged(exc: BaseException) -> bool:
    return bool(getattr(exc, _LOGGED_MARK, False))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class QueryLog:
    """The hash-chained log in a node's database. Safe to share between threads and processes."""

    def __init__(self, engine: Engine, *, clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def append(self, event: LogEvent, outer: Connection | None = None) -> LogRow:
        """Add `event` as the next link, atomically with moving the head; return the row.

        With `outer`, the link is written in the caller's transaction (the ledger's, so
        a charge and its log row commit together) and the head stays locked until the
        caller commits.
        """
        if event.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {event.method!r}")
        if event.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {event.status!r}")
        with self._tx(outer) as conn:
            prev_seq, prev_hash = self._lock_head(conn)
            values: dict[str, Any] = {
                "seq": prev_seq + 1,
                "logged_at": format_timestamp(self._clock()),
                "requester": event.requester,
                "method": event.method,
                "request_id": event.request_id,
                "template": event.template,
                "template_version": event.template_version,
                "data_version": event.data_version,
                "parameters": canonical_parameters(event.parameters),
                "rho_units": int(event.rho_units),
                "epsilon_charged": "" if event.epsilon is None else repr(float(event.epsilon)),
                "answer_digest": event.answer_digest,
                "status": event.status,
                "reason": event.reason,
                "message": event.message,
                "prev_hash": prev_hash,
            }
            for name, limit in _LIMITS.items():
                # Cut before hashing, so what is hashed is exactly what the column keeps.
                values[name] = str(values[name])[:limit]
            values["row_hash"] = row_hash(values)
            conn.execute(QueryLogEntry.__table__.insert().values(**values))
            conn.execute(
                update(QueryLogHead)
                .where(QueryLogHead.id == HEAD_ID)
                .values(seq=values["seq"], row_hash=values["row_hash"])
            )
        log.info(
            "querylog.appended",
            seq=values["seq"],
            method=event.method,
            status=event.status,
            reason=event.reason,
        )
        return LogRow(**values)

    def row_at(self, seq: int) -> LogRow | None:
        """The row with this seq, or None."""
        with self._connect() as conn, conn.begin():
            found = conn.execute(
                select(QueryLogEntry.__table__).where(QueryLogEntry.seq == seq)
            ).one_or_none()
        return None if found is None else _row(found._mapping)

    def head(self) -> tuple[int, str]:
        """The last link's seq and hash: (0, GENESIS_HASH) for an empty log."""
        with self._connect() as conn, conn.begin():
            row = conn.execute(
                select(QueryLogHead.seq, QueryLogHead.row_hash).where(QueryLogHead.id == HEAD_ID)
            ).one_or_none()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def rows(
        self,
        *,
        since: dt.datetime | None = None,
        requester: str | None = None,
        request_id: str | None = None,
        limit: int | None = None,
    ) -> list[LogRow]:
        """Rows matching every given filter, oldest first; `limit` keeps the newest ones."""
        query = select(QueryLogEntry.__table__)
        if since is not None:
            query = query.where(QueryLogEntry.logged_at >= format_timestamp(since))
        if requester is not None:
            query = query.where(QueryLogEntry.requester == requester)
        if request_id is not None:
            query = query.where(QueryLogEntry.request_id == request_id)
        query = query.order_by(QueryLogEntry.seq.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._connect() as conn, conn.begin():
            found = [_row(r._mapping) for r in conn.execute(query)]
        return found[::-1]

    def verify(self) -> Verification:
        """Walk the whole chain in seq order and report the first row that does not hold."""
        head_seq, head_hash = self.head()
        count, prev_seq, prev_hash = 0, 0, GENESIS_HASH
        with self._connect() as conn, conn.begin():
            result = conn.execution_options(yield_per=1000).execute(
                select(QueryLogEntry.__table__).order_by(QueryLogEntry.seq)
            )
            try:
                for mapping in result.mappings():
                    row = _row(mapping)
                    count += 1
                    problem = _link_problem(row, prev_seq, prev_hash)
                    if problem:
                        return Verification(False, count, head_seq, head_hash, row.seq, problem)
                    prev_seq, prev_hash = row.seq, row.row_hash
            finally:
                result.close()
        if (head_seq, head_hash) != (prev_seq, prev_hash):
            problem = f"the chain ends at row {prev_seq} but the head names row {head_seq}: " + (
                "rows were deleted from the end, or the head was altered"
                if head_seq > prev_seq
                else "the head does not match the last row (rows added around the log, or the head was altered)"
            )
            return Verification(False, count, head_seq, head_hash, prev_seq + 1, problem)
        return Verification(True, count, head_seq, head_hash)

    # --- internals -------------------------------------------------------------------------

    @contextmanager
    def _tx(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
            return
        with self._connect() as own, own.begin():
            yield own

    def _connect(self) -> Connection:
        """READ COMMITTED on PostgreSQL, so the head read after locking is the newest one."""
        conn = self._engine.connect()
        if not is_sqlite(self._engine):
            conn = conn.execution_options(isolation_level="READ COMMITTED")
        return conn

    def _lock_head(self, conn: Connection) -> tuple[int, str]:
        """Lock the head row (creating it first if missing); return the last link's seq and hash.

        The head exists from the first append on, so it is read (and locked) first and
        inserted only when missing: one statement per append instead of two.
        """
        query = select(QueryLogHead.seq, QueryLogHead.row_hash).where(QueryLogHead.id == HEAD_ID)
        if not is_sqlite(self._engine):
            query = query.with_for_update()
        row = conn.execute(query).one_or_none()
        if row is None:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            conn.execute(
                dialect.insert(QueryLogHead)
                .values(id=HEAD_ID, seq=0, row_hash=GENESIS_HASH)
                .on_conflict_do_nothing()
            )
            row = conn.execute(query).one()
        seq, last = row
        return int(seq), str(last)


def _row(mapping: Any) -> LogRow:
    return LogRow(**{name: mapping[name] for name in _ROW_FIELDS})


def _link_problem(row: LogRow, prev_seq: int, prev_hash: str) -> str:
    if row.seq != prev_seq + 1:
        if row.seq <= prev_seq:
            return f"row {row.seq} is out of order after row {prev_seq}"
        missing = (
            f"row {prev_seq + 1} is"
            if row.seq == prev_seq + 2
            else f"rows {prev_seq + 1} to {row.seq - 1} are"
        )
        return f"{missing} missing before row {row.seq} (deleted)"
    if row_hash(row.to_dict()) != row.row_hash:
        return f"row {row.seq} does not match its hash: a field was changed or rows were swapped"
    if row.prev_hash != prev_hash:
        return f"row {row.seq} does not link to row {prev_seq}: its prev_hash differs"
    return ""
