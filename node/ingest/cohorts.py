"""Cohorts at import: assign each new person their cohort, digest each cohort's data.

A person's cohort is the month of their earliest dated record in the bundle
(assessed, issued, received, lodged), no later than the month of the import's
reference date (so every cohort is a month the node has seen). It is written at the
person's first import and never recomputed: a later bundle that backdates their
records does not move them, and one that drops them and brings them back finds
their old cohort. It depends on the person's own records only, which is what lets
the ledger account per cohort (parallel composition, docs/cohorts.md).

Each import also stores a digest of every cohort's data (the persons' rows in every
personal table) and one of the reference tables (cohort `*`), so the import can tell
the data officer which cohorts' data it changed. The digests never enter a replay
key: whether anything about the persons of a cohort changed is not public, and a
requester could read it off for free from whether a preflight says "replay". What
enters replay keys is public: the imports' reference dates (a cohort is open, and
its questions new after every import, for `cohorts.open_months` after its month)
and the cohorts an import *reopens*, which the data officer names explicitly
(`fedaudit node import --reopen 2023-03`) when a correction of an old cohort should
make questions about it new (docs/cohorts.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from fedaudit.node.privacy.cohorts import month_of
from fedaudit.node.store.models import REGISTRY_TABLES, CohortDigest, DataVersion, PersonCohort

REFERENCE = "*"
"""The `cohort_digests` key of the reference tables' digest."""

DATED_COLUMNS: Mapping[str, str] = {
    "assessments": "assessed_on",
    "certificates": "issued_on",
    "recognition_requests": "received_on",
    "appeals": "lodged_on",
}
"""The record dates a person's cohort is taken from (employment outcomes have none)."""

REFERENCE_TABLES = ("municipality", "providers", "qualifications")
_CHUNK = 5_000


def cohort_of(dates: Iterable[dt.date], reference_date: dt.date) -> str:
    """The cohort of a person with these record dates (the reference month if none)."""
    ceiling = month_of(reference_date)
    earliest = min(dates, default=None)
    return ceiling if earliest is None else min(month_of(earliest), ceiling)


def assign(
    conn: Connection,
    rows: Mapping[str, list[dict[str, Any]]],
    *,
    reference_date: dt.date,
    data_version: str,
) -> dict[str, str]:
    """Write the cohort of every person new to this node; return every bundle person's cohort."""
    dates: dict[str, list[dt.date]] = {}
    for table, column in DATED_COLUMNS.items():
        for row in rows.get(table, ()):
            dates.setdefault(row["candidate_id"], []).append(row[column])
    known = dict(conn.execute(select(PersonCohort.candidate_id, PersonCohort.cohort)).all())
    new = [
        {
            "candidate_id": row["candidate_id"],
            "cohort": cohort_of(dates.get(row["candidate_id"], ()), reference_date),
            "data_version": data_version,
        }
        for row in rows.get("candidates", ())
        if row["candidate_id"] not in known
    ]
    for start in range(0, len(new), _CHUNK):
        conn.execute(insert(PersonCohort.__table__), new[start : start + _CHUNK])
    known.update((row["candidate_id"], row["cohort"]) for row in new)
    return known


def _row_text(columns: list[str], row: Mapping[str, Any]) -> bytes:
    return repr(tuple(row.get(name) for name in columns)).encode() + b"\n"


def digests(rows: Mapping[str, list[dict[str, Any]]], cohorts: Mapping[str, str]) -> dict[str, str]:
    """sha256 per cohort of its persons' rows (tables in a fixed order, rows sorted by key).

    Plus `REFERENCE`: the reference tables every answer depends on.
    """
    hashes: dict[str, Any] = {REFERENCE: hashlib.sha256(b"fedaudit-cohort-reference-v1\0")}
    for model in REGISTRY_TABLES:
        table = model.__table__
        columns = [c.name for c in table.columns]
        keys = [c.name for c in table.primary_key.columns]
        ordered = sorted(rows.get(table.name, ()), key=lambda r: tuple(r[k] for k in keys))
        if table.name in REFERENCE_TABLES:
            hashes[REFERENCE].update(f"{table.name}\0".encode())
            for row in ordered:
                hashes[REFERENCE].update(_row_text(columns, row))
            continue
        for row in ordered:
            cohort = cohorts[row["candidate_id"]]
            digest = hashes.get(cohort)
            if digest is None:
                digest = hashes[cohort] = hashlib.sha256(b"fedaudit-cohort-data-v1\0")
            digest.update(f"{table.name}\0".encode() + _row_text(columns, row))
    return {cohort: h.hexdigest() for cohort, h in hashes.items()}


@dataclass(frozen=True)
class CohortChanges:
    """What an import did to the cohorts (for the data officer; never released)."""

    digests: Mapping[str, str]
    changed: tuple[str, ...]
    """Cohorts that had data before and whose data this import changed (or removed)."""
    reopened: tuple[str, ...]
    empty_reopened: tuple[str, ...] = ()
    """Reopened cohorts in which no person at this node (now or before) has ever been."""


def record(
    conn: Connection,
    rows: Mapping[str, list[dict[str, Any]]],
    *,
    reference_date: dt.date,
    data_version: str,
    reopen: Sequence[str] = (),
) -> CohortChanges:
    """Assign new persons, store this version's digests and the cohorts it reopens."""
    previous = dict(
        conn.execute(
            select(CohortDigest.cohort, CohortDigest.digest).where(
                CohortDigest.data_version
                == select(DataVersion.version)
                .where(DataVersion.version != data_version)
                .order_by(DataVersion.id.desc())
                .limit(1)
                .scalar_subquery()
            )
        ).all()
    )
    cohorts = assign(conn, rows, reference_date=reference_date, data_version=data_version)
    found = digests(rows, cohorts)
    reopened = set(reopen)
    conn.execute(
        insert(CohortDigest.__table__),
        [
            {"data_version": data_version, "cohort": c, "digest": d, "reopened": c in reopened}
            for c, d in found.items()
        ]
        + [
            # A reopened cohort without data (all its persons gone) still gets its row.
            {"data_version": data_version, "cohort": c, "digest": "", "reopened": True}
            for c in sorted(reopened - set(found))
        ],
    )
    changed = tuple(sorted(c for c, d in previous.items() if c != REFERENCE and found.get(c) != d))
    held = (
        set(
            conn.execute(
                select(PersonCohort.cohort).where(PersonCohort.cohort.in_(sorted(reopened)))
            ).scalars()
        )
        if reopened
        else set()
    )
    return CohortChanges(found, changed, tuple(sorted(reopened)), tuple(sorted(reopened - held)))
