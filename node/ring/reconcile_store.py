"""What revocation reconciliation keeps at the recogniser, and the data officer's view of it.

The matches are personal (a certificate of this municipality and the origin's number):
they are written and read only here, in the node's own database, never sent.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Engine, delete, func, insert, select

from fedaudit.node.store.models import Certificate, ReconciliationCheck, ReconciliationMatch

log = structlog.get_logger(__name__)


@dataclass
class Reference:
    """One origin certificate number as recognised here, and the recognitions resting on it."""

    number: str  # as recorded here (shown to the data officer)
    certificate_ids: list[str]
    candidate_ids: list[str]


def was_checked(engine: Engine, requester: str, run_id: str, origin: str) -> bool:
    """Whether `requester`'s run `run_id` already asked `origin` here (runs are once only)."""
    with engine.connect() as conn:
        return (
            conn.execute(
                select(func.count())
                .select_from(ReconciliationCheck)
                .where(
                    ReconciliationCheck.requester == requester,
                    ReconciliationCheck.run_id == run_id,
                    ReconciliationCheck.origin_municipality == origin,
                )
            ).scalar_one()
            > 0
        )


def store_matches(
    engine: Engine,
    requester: str,
    run_id: str,
    *,
    origin: str,
    references: Sequence[Reference],
    days: Sequence[dt.date | None],
    data_version: str,
    checked_at: dt.datetime,
) -> None:
    """Replace the run's matches for `origin` and record that `origin` was checked."""
    version = data_version
    matches = [
        {
            "requester": requester,
            "run_id": run_id,
            "certificate_id": certificate_id,
            "origin_municipality": origin,
            "origin_certificate_no": ref.number,
            "revoked_on": day,
        }
        for ref, day in zip(references, days, strict=True)
        if day is not None
        for certificate_id in ref.certificate_ids
    ]
    with engine.begin() as conn:
        conn.execute(
            delete(ReconciliationMatch).where(
                ReconciliationMatch.requester == requester,
                ReconciliationMatch.run_id == run_id,
                ReconciliationMatch.origin_municipality == origin,
            )
        )
        if matches:
            conn.execute(insert(ReconciliationMatch), matches)
        conn.execute(
            insert(ReconciliationCheck).values(
                requester=requester,
                run_id=run_id,
                origin_municipality=origin,
                references=sum(len(r.certificate_ids) for r in references),
                matches=len(matches),
                data_version=version,
                checked_at=checked_at,
            )
        )
    log.info("reconcile.resolved", run_id=run_id, origin=origin)


def persons_matched(engine: Engine, requester: str, run_id: str) -> int:
    """Distinct persons with a match in `requester`'s run (what the DP release counts)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count(func.distinct(Certificate.candidate_id)))
                .select_from(ReconciliationMatch)
                .join(
                    Certificate,
                    Certificate.certificate_id == ReconciliationMatch.certificate_id,
                )
                .where(
                    ReconciliationMatch.requester == requester,
                    ReconciliationMatch.run_id == run_id,
                )
            ).scalar_one()
        )


# --- the data officer's view --------------------------------------------------------------------


@dataclass(frozen=True)
class StoredMatch:
    """One row of `fedaudit node reconcile show`."""

    run_id: str
    certificate_id: str
    origin_municipality: str
    origin_certificate_no: str
    revoked_on: dt.date


def latest_run(engine: Engine) -> str | None:
    """The run id of the newest reconciliation this node took part in as recogniser."""
    with engine.connect() as conn:
        return conn.execute(
            select(ReconciliationCheck.run_id)
            .order_by(ReconciliationCheck.checked_at.desc(), ReconciliationCheck.id.desc())
            .limit(1)
        ).scalar_one_or_none()


def stored_matches(engine: Engine, run_id: str) -> list[StoredMatch]:
    """This node's recognitions resting on a revoked certificate, as found in `run_id`."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                ReconciliationMatch.run_id,
                ReconciliationMatch.certificate_id,
                ReconciliationMatch.origin_municipality,
                ReconciliationMatch.origin_certificate_no,
                ReconciliationMatch.revoked_on,
            )
            .where(ReconciliationMatch.run_id == run_id)
            .distinct()  # the same run id of two requesters lists a recognition once
            .order_by(ReconciliationMatch.origin_municipality, ReconciliationMatch.certificate_id)
        ).all()
    return [StoredMatch(*row) for row in rows]


def checked_origins(engine: Engine, run_id: str) -> list[tuple[str, int, int]]:
    """(origin, references asked about, matches) for every origin checked in `run_id`."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                ReconciliationCheck.origin_municipality,
                ReconciliationCheck.references,
                ReconciliationCheck.matches,
            )
            .where(ReconciliationCheck.run_id == run_id)
            .order_by(ReconciliationCheck.origin_municipality)
        ).all()
    return [(o, int(r), int(m)) for o, r, m in rows]


MATCH_COLUMNS = ("certificate_id", "origin_municipality", "origin_certificate_no", "revoked_on")


def write_matches_csv(matches: list[StoredMatch], out: Any) -> None:
    """The list as CSV (for the data officer's case handling), one row per recognition."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MATCH_COLUMNS)
    for m in matches:
        writer.writerow(
            [m.certificate_id, m.origin_municipality, m.origin_certificate_no, m.revoked_on]
        )
