"""The node database: the imported registry, its data versions, the privacy ledger.

Everything a node keeps lives in one SQL database (SQLite by default, PostgreSQL
in production) so that the ledger and the data it protects share transactions
and backups. Registry tables hold exactly one data version at a time: an import
replaces them in one transaction and records a new `DataVersion` row.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base for every node table."""


# --- registry (one data version at a time) -----------------------------------------------


class Municipality(Base):
    __tablename__ = "municipality"

    municipality_code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))


class Provider(Base):
    __tablename__ = "providers"

    provider_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    provider_type: Mapped[str] = mapped_column(String(32))
    accreditation_status: Mapped[str] = mapped_column(String(32))


class Qualification(Base):
    __tablename__ = "qualifications"

    qualification_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    isco_code: Mapped[str] = mapped_column(String(4))
    eqf_level: Mapped[int] = mapped_column(SmallInteger)


class Candidate(Base):
    """The only table with direct identifiers (class P); they never leave the node."""

    __tablename__ = "candidates"

    candidate_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    national_id: Mapped[str | None] = mapped_column(String(64))
    given_name: Mapped[str] = mapped_column(String(200))
    family_name: Mapped[str] = mapped_column(String(200))
    date_of_birth: Mapped[dt.date] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(16))
    citizenship: Mapped[str | None] = mapped_column(String(2))


class Assessment(Base):
    __tablename__ = "assessments"

    assessment_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    candidate_id: Mapped[str] = mapped_column(ForeignKey("candidates.candidate_id"), index=True)
    qualification_id: Mapped[str] = mapped_column(ForeignKey("qualifications.qualification_id"))
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.provider_id"))
    attempt_no: Mapped[int] = mapped_column(Integer)
    assessed_on: Mapped[dt.date] = mapped_column(Date)
    result: Mapped[str] = mapped_column(String(16))


class Certificate(Base):
    __tablename__ = "certificates"

    certificate_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    certificate_no: Mapped[str] = mapped_column(String(64))
    candidate_id: Mapped[str] = mapped_column(ForeignKey("candidates.candidate_id"), index=True)
    qualification_id: Mapped[str] = mapped_column(ForeignKey("qualifications.qualification_id"))
    provider_id: Mapped[str | None] = mapped_column(ForeignKey("providers.provider_id"))
    pathway: Mapped[str] = mapped_column(String(32))
    origin_municipality: Mapped[str | None] = mapped_column(String(32))
    origin_certificate_no: Mapped[str | None] = mapped_column(String(64))
    issued_on: Mapped[dt.date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16))
    status_changed_on: Mapped[dt.date | None] = mapped_column(Date)


class RecognitionRequest(Base):
    __tablename__ = "recognition_requests"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    candidate_id: Mapped[str] = mapped_column(ForeignKey("candidates.candidate_id"), index=True)
    qualification_id: Mapped[str] = mapped_column(ForeignKey("qualifications.qualification_id"))
    origin_municipality: Mapped[str] = mapped_column(String(32))
    received_on: Mapped[dt.date] = mapped_column(Date)
    decided_on: Mapped[dt.date | None] = mapped_column(Date)
    decision: Mapped[str] = mapped_column(String(16))


class Appeal(Base):
    __tablename__ = "appeals"

    appeal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    candidate_id: Mapped[str] = mapped_column(ForeignKey("candidates.candidate_id"), index=True)
    subject_type: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[str] = mapped_column(String(64))
    lodged_on: Mapped[dt.date] = mapped_column(Date)
    decided_on: Mapped[dt.date | None] = mapped_column(Date)
    outcome: Mapped[str] = mapped_column(String(16))


class EmploymentOutcome(Base):
    __tablename__ = "employment_outcomes"

    outcome_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    candidate_id: Mapped[str] = mapped_column(ForeignKey("candidates.candidate_id"), index=True)
    certificate_id: Mapped[str] = mapped_column(
        ForeignKey("certificates.certificate_id"), index=True
    )
    months_after: Mapped[int] = mapped_column(SmallInteger)
    status: Mapped[str] = mapped_column(String(16))
    in_field: Mapped[bool | None] = mapped_column(Boolean)
    # Integer currency units (cents would overflow nothing but buy no accuracy after DP).
    monthly_earnings: Mapped[int | None] = mapped_column(BigInteger)


REGISTRY_TABLES: tuple[type[Base], ...] = (
    Municipality,
    Provider,
    Qualification,
    Candidate,
    Assessment,
    Certificate,
    RecognitionRequest,
    Appeal,
    EmploymentOutcome,
)
"""In foreign-key order: insert in this order, delete in reverse."""


# --- data versions ------------------------------------------------------------------------


class DataVersion(Base):
    """One row per successful import; the newest row names the data queries run on."""

    __tablename__ = "data_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    bundle_digest: Mapped[str] = mapped_column(String(64))
    imported_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    # The day pending cases are aged against (the import day).
    reference_date: Mapped[dt.date] = mapped_column(Date)
    row_counts: Mapped[str] = mapped_column(Text)  # JSON object: file -> rows


# --- cohorts (fixed at a person's first import; see docs/cohorts.md) --------------------------


class PersonCohort(Base):
    """The cohort of a person at this node: written at their first import, never changed.

    Not a foreign key to `candidates`: an import replaces the registry, and a person
    who leaves it and comes back keeps the cohort they had (and the budget it spent).
    """

    __tablename__ = "person_cohorts"
    __table_args__ = (Index("ix_person_cohorts_cohort", "cohort"),)

    candidate_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cohort: Mapped[str] = mapped_column(String(7))  # "YYYY-MM"
    data_version: Mapped[str] = mapped_column(String(64))  # the import that assigned it


class CohortDigest(Base):
    """Per data version, a digest of each cohort's personal rows, and whether the import
    reopened the cohort (a declared correction, see docs/cohorts.md).

    The digests tell the data officer which cohorts an import changed; they never enter
    a replay key (whether a cohort's data changed is not public). `reopened` does: it is
    the officer's explicit, public statement. Cohort `*` is the reference tables.
    """

    __tablename__ = "cohort_digests"

    data_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    cohort: Mapped[str] = mapped_column(String(7), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    reopened: Mapped[bool] = mapped_column(Boolean, default=False)


# --- privacy ledger ---------------------------------------------------------------------------


class BudgetLock(Base):
    """One row per budget scope; locked (FOR UPDATE) while a charge is checked and written.

    The rows carry no amounts: spent budget is always the sum of ledger entries, so
    there is one source of truth and nothing to drift.
    """

    __tablename__ = "budget_locks"

    scope: Mapped[str] = mapped_column(String(200), primary_key=True)


class LedgerEntry(Base):
    """A privacy charge and the answer it paid for.

    Amounts are integers in units of 1e-12 rho, rounded up when charged, so
    sums and cap checks are exact on every database.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        # Request ids are the requester's own: unique per requester, not node-wide.
        UniqueConstraint("requester", "request_id", name="uq_ledger_requester_request_id"),
        Index("ix_ledger_requester_period", "requester", "period"),
        Index("ix_ledger_query", "query_hash", "data_version"),
        # Never reuse the id of a cancelled entry: ids form the node's audit trail.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128))
    requester: Mapped[str] = mapped_column(String(200))
    period: Mapped[str] = mapped_column(String(32))
    template: Mapped[str] = mapped_column(String(64))
    template_version: Mapped[str] = mapped_column(String(16))
    query_hash: Mapped[str] = mapped_column(String(64))
    data_version: Mapped[str] = mapped_column(String(64))
    mechanism: Mapped[str] = mapped_column(String(32))
    rho_units: Mapped[int] = mapped_column(BigInteger)
    epsilon: Mapped[float | None] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float, default=0.0)
    # reserved -> released (answer stored) | failed (charge stands once noise was drawn)
    state: Mapped[str] = mapped_column(String(16))
    answer: Mapped[str | None] = mapped_column(Text)  # JSON of the released answer
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    # What "the same data" means for replay: the public state of the cohorts the query
    # read (None on entries written before cohort accounting: their data_version).
    data_key: Mapped[str | None] = mapped_column(String(64))


class LedgerCohortRange(Base):
    """A contiguous range of cohorts [first, last] an entry is charged to (see docs/cohorts.md).

    An entry has one or more disjoint ranges; what a cohort has spent is the sum of
    the entries with a range containing it. "0000-00".."9999-99" is every cohort.
    """

    __tablename__ = "ledger_cohort_ranges"
    __table_args__ = (Index("ix_ledger_cohort_ranges_first_last", "first", "last"),)

    entry_id: Mapped[int] = mapped_column(
        ForeignKey("ledger_entries.id", ondelete="CASCADE"), primary_key=True
    )
    first: Mapped[str] = mapped_column(String(7), primary_key=True)
    last: Mapped[str] = mapped_column(String(7))


# --- query log (tamper-evident) ------------------------------------------------------------


class QueryLogEntry(Base):
    """One request the node handled, as a link of a hash chain (see `fedaudit.node.evidence.querylog`).

    Every value that enters the hash is stored as text or an integer (the timestamp
    as fixed-format ISO text, charges as integer units of 1e-12 rho), so a row reads
    back bit for bit on every database and its hash can be recomputed exactly.
    """

    __tablename__ = "query_log"
    __table_args__ = (
        Index("ix_query_log_request_id", "request_id"),
        Index("ix_query_log_requester", "requester", "seq"),
    )

    # Assigned by the appender (head seq + 1) under the head lock, never by the database.
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    logged_at: Mapped[str] = mapped_column(String(32))  # 2026-11-15T12:00:00.000000Z
    requester: Mapped[str] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(16))  # capabilities | preflight | query
    request_id: Mapped[str] = mapped_column(String(128))
    template: Mapped[str] = mapped_column(String(64))
    template_version: Mapped[str] = mapped_column(String(16))
    data_version: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[str] = mapped_column(Text)  # QuerySpec.canonical_json(), or ""
    rho_units: Mapped[int] = mapped_column(BigInteger)  # charged by this request
    epsilon_charged: Mapped[str] = mapped_column(String(32))  # repr of the float, or ""
    answer_digest: Mapped[str] = mapped_column(String(64))  # sha256 hex, or ""
    status: Mapped[str] = mapped_column(String(16))  # answered | replayed | refused | failed
    reason: Mapped[str] = mapped_column(String(32))  # RefusalReason name, INTERNAL, or ""
    message: Mapped[str] = mapped_column(String(500))
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class QueryLogHead(Base):
    """The single row naming the chain's last link; locked while a link is appended.

    Appends serialise on it (`SELECT ... FOR UPDATE` on PostgreSQL, `BEGIN IMMEDIATE`
    on SQLite), so the chain cannot fork; and because it records the last seq and
    hash, deleting rows from the end of the chain is detected too.
    """

    __tablename__ = "query_log_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # always 1
    seq: Mapped[int] = mapped_column(BigInteger)
    row_hash: Mapped[str] = mapped_column(String(64))


# --- revocation reconciliation ----------------------------------------------------------------


class ReconciliationCheck(Base):
    """One origin checked in one reconciliation run: how many references were asked about.

    Kept even when nothing matched, so the data officer can tell "checked, clean" from
    "never checked".
    """

    __tablename__ = "reconciliation_checks"
    __table_args__ = (
        UniqueConstraint("requester", "run_id", "origin_municipality", name="uq_reconcile_check"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    requester: Mapped[str] = mapped_column(String(200))  # runs belong to their requester
    run_id: Mapped[str] = mapped_column(String(128))
    origin_municipality: Mapped[str] = mapped_column(String(32))
    references: Mapped[int] = mapped_column(Integer)
    matches: Mapped[int] = mapped_column(Integer)
    data_version: Mapped[str] = mapped_column(String(64))
    checked_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class ReconciliationMatch(Base):
    """A recognition made here that rests on a certificate its origin has revoked.

    Personal (a certificate of ours and the origin's number): it never leaves the node.
    """

    __tablename__ = "reconciliation_matches"
    __table_args__ = (
        UniqueConstraint("requester", "run_id", "certificate_id", name="uq_reconcile_match"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    requester: Mapped[str] = mapped_column(String(200))
    run_id: Mapped[str] = mapped_column(String(128), index=True)
    certificate_id: Mapped[str] = mapped_column(String(64))
    origin_municipality: Mapped[str] = mapped_column(String(32))
    origin_certificate_no: Mapped[str] = mapped_column(String(64))
    revoked_on: Mapped[dt.date] = mapped_column(Date)
