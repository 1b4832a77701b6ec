"""Small registries for tests, inserted through the ORM models (no CSV, no importer).

A `RegistryFactory` collects rows with sensible defaults and synthetic personal
fields, hands out ids, and writes everything in foreign-key order:

    reg = RegistryFactory(country="AT")
    q = reg.qualification(isco_code="7212", eqf_level=3)
    p = reg.provider()
    c = reg.candidate(sex="female", citizenship="AT")
    reg.assessment(c, q, p, "2024-03-01", result="pass")
    engine = reg.build(db_url)       # schema + rows
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, delete
from sqlalchemy.orm import Session

from fedaudit.node.store.db import create_schema, make_engine
from fedaudit.node.store.models import (
    REGISTRY_TABLES,
    Appeal,
    Assessment,
    Base,
    Candidate,
    Certificate,
    EmploymentOutcome,
    Municipality,
    Provider,
    Qualification,
    RecognitionRequest,
)

DateLike = dt.date | str


def as_date(value: DateLike) -> dt.date:
    """Accept ISO strings in tests for readability."""
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


def as_optional_date(value: DateLike | None) -> dt.date | None:
    return None if value is None else as_date(value)


@dataclass
class RegistryFactory:
    """Rows of one municipality's registry, built up in memory and then inserted."""

    country: str = "AT"
    municipality_code: str = "M01"
    rows: list[tuple[type[Base], dict[str, Any]]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def __post_init__(self) -> None:
        self._add(
            Municipality,
            municipality_code=self.municipality_code,
            name=f"Municipality {self.municipality_code}",
            country=self.country,
        )

    def _add(self, model: type[Base], **values: Any) -> None:
        self.rows.append((model, values))

    def rows_of(self, model: type[Base]) -> list[dict[str, Any]]:
        """The column values of every row of one table, in insertion order."""
        return [values for m, values in self.rows if m is model]

    def _next(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    def provider(
        self,
        provider_id: str | None = None,
        *,
        provider_type: str = "school",
        accreditation_status: str = "accredited",
    ) -> str:
        provider_id = provider_id or self._next("P")
        self._add(
            Provider,
            provider_id=provider_id,
            name=f"Provider {provider_id}",
            provider_type=provider_type,
            accreditation_status=accreditation_status,
        )
        return provider_id

    def qualification(
        self, isco_code: str = "7212", eqf_level: int = 3, qualification_id: str | None = None
    ) -> str:
        qualification_id = qualification_id or self._next("Q")
        self._add(
            Qualification,
            qualification_id=qualification_id,
            title=f"Qualification {isco_code}/{eqf_level}",
            isco_code=isco_code,
            eqf_level=eqf_level,
        )
        return qualification_id

    def candidate(
        self,
        *,
        sex: str = "female",
        citizenship: str | None = "AT",
        candidate_id: str | None = None,
        national_id: str | None = None,
    ) -> str:
        candidate_id = candidate_id or self._next("C")
        self._add(
            Candidate,
            candidate_id=candidate_id,
            national_id=national_id,
            given_name=f"Given{candidate_id}",
            family_name=f"Family{candidate_id}",
            date_of_birth=dt.date(1990, 1, 1),
            sex=sex,
            citizenship=citizenship,
        )
        return candidate_id

    def assessment(
        self,
        candidate_id: str,
        qualification_id: str,
        provider_id: str,
        assessed_on: DateLike,
        *,
        result: str = "pass",
        attempt_no: int = 1,
        assessment_id: str | None = None,
    ) -> str:
        assessment_id = assessment_id or self._next("A")
        self._add(
            Assessment,
            assessment_id=assessment_id,
            candidate_id=candidate_id,
            qualification_id=qualification_id,
            provider_id=provider_id,
            attempt_no=attempt_no,
            assessed_on=as_date(assessed_on),
            result=result,
        )
        return assessment_id

    def certificate(
        self,
        candidate_id: str,
        qualification_id: str,
        issued_on: DateLike,
        *,
        provider_id: str | None = None,
        pathway: str = "training",
        status: str = "valid",
        status_changed_on: DateLike | None = None,
        origin_municipality: str | None = None,
        certificate_id: str | None = None,
    ) -> str:
        certificate_id = certificate_id or self._next("Z")
        if pathway == "reciprocity" and origin_municipality is None:
            origin_municipality = "M99"
        self._add(
            Certificate,
            certificate_id=certificate_id,
            certificate_no=f"NO-{certificate_id}",
            candidate_id=candidate_id,
            qualification_id=qualification_id,
            provider_id=provider_id,
            pathway=pathway,
            origin_municipality=origin_municipality,
            origin_certificate_no=(
                f"ORIG-{certificate_id}" if origin_municipality is not None else None
            ),
            issued_on=as_date(issued_on),
            status=status,
            status_changed_on=as_optional_date(status_changed_on),
        )
        return certificate_id

    def recognition(
        self,
        candidate_id: str,
        qualification_id: str,
        received_on: DateLike,
        *,
        decided_on: DateLike | None = None,
        decision: str | None = None,
        origin_municipality: str = "M99",
        request_id: str | None = None,
    ) -> str:
        """A recognition request; decision defaults to pending / full by decided_on."""
        request_id = request_id or self._next("R")
        if decision is None:
            decision = "pending" if decided_on is None else "full"
        self._add(
            RecognitionRequest,
            request_id=request_id,
            candidate_id=candidate_id,
            qualification_id=qualification_id,
            origin_municipality=origin_municipality,
            received_on=as_date(received_on),
            decided_on=as_optional_date(decided_on),
            decision=decision,
        )
        return request_id

    def appeal(
        self,
        candidate_id: str,
        lodged_on: DateLike,
        *,
        subject_type: str = "assessment",
        subject_id: str = "unknown",
        outcome: str = "pending",
        decided_on: DateLike | None = None,
        appeal_id: str | None = None,
    ) -> str:
        appeal_id = appeal_id or self._next("AP")
        self._add(
            Appeal,
            appeal_id=appeal_id,
            candidate_id=candidate_id,
            subject_type=subject_type,
            subject_id=subject_id,
            lodged_on=as_date(lodged_on),
            decided_on=as_optional_date(decided_on),
            outcome=outcome,
        )
        return appeal_id

    def outcome(
        self,
        candidate_id: str,
        certificate_id: str,
        *,
        months_after: int = 6,
        status: str = "employed",
        in_field: bool | None = True,
        monthly_earnings: int | None = None,
        outcome_id: str | None = None,
    ) -> str:
        outcome_id = outcome_id or self._next("E")
        self._add(
            EmploymentOutcome,
            outcome_id=outcome_id,
            candidate_id=candidate_id,
            certificate_id=certificate_id,
            months_after=months_after,
            status=status,
            in_field=in_field,
            monthly_earnings=monthly_earnings,
        )
        return outcome_id

    def insert(self, bind: Engine | Connection) -> None:
        """Write every row, table by table in foreign-key order, in one transaction.

        Fresh ORM objects are made on each call, so one factory can fill several databases.
        """
        with Session(bind) as session, session.begin():
            for model in REGISTRY_TABLES:
                objects = [model(**values) for m, values in self.rows if m is model]
                if objects:
                    session.add_all(objects)
                    session.flush()

    def build(self, url: str) -> Engine:
        """A new engine on `url` with the node schema and these rows."""
        engine = make_engine(url)
        create_schema(engine)
        self.insert(engine)
        return engine


def record_import(
    engine: Engine, reg: RegistryFactory, reference_date: dt.date, version: str = "v1-test"
) -> dict[str, str]:
    """What `node import` writes besides the registry: a data version, the persons' cohorts
    and the cohorts' digests (by the importer's own code). Returns cohort -> digest."""
    from sqlalchemy import insert

    from fedaudit.node.ingest import cohorts
    from fedaudit.node.store.models import DataVersion

    rows = {model.__tablename__: reg.rows_of(model) for model in REGISTRY_TABLES}
    with engine.begin() as conn:
        conn.execute(
            insert(DataVersion.__table__),
            {
                "version": version,
                "bundle_digest": version,
                "imported_at": dt.datetime.combine(reference_date, dt.time(), dt.UTC),
                "reference_date": reference_date,
                "row_counts": "{}",
            },
        )
        return cohorts.record(conn, rows, reference_date=reference_date, data_version=version)


def delete_person(conn: Connection, candidate_id: str) -> None:
    """Remove a person and every row that refers to them (the DP neighbour relation)."""
    for table in reversed(REGISTRY_TABLES):
        if "candidate_id" in table.__table__.c:
            conn.execute(delete(table).where(table.__table__.c.candidate_id == candidate_id))
