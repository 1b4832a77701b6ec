"""The data bundle contract (version 1) written down as data.

`/work/shared/data-contract.md` is the human text; this module is the same contract in
a form the validator walks, so a rule added here is checked everywhere without new
code. Lengths of string columns come from the SQL models, so a value that validates
also fits its column on PostgreSQL (SQLite would store it silently, PostgreSQL would
fail half-way through an import).

Rules that span columns or files (conditional fields, date order, foreign keys into
the table an appeal names) live in `fedaudit.node.ingest.bundle`, next to the code that
checks them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from sqlalchemy import String

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

CONTRACT_VERSION = 1


class Kind(enum.Enum):
    """How a CSV field is read; each kind has one parser in `fedaudit.node.ingest.bundle`."""

    ID = "identifier"  # opaque string; surrounding blanks are a mistake, not data
    TEXT = "text"  # free text such as a name
    CODE = "code"  # string with a fixed shape (ISO country, ISCO unit group)
    ENUM = "enum"
    DATE = "date"
    INT = "integer"
    DECIMAL = "decimal"
    BOOL = "boolean"


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a bundle file.

    `personal` columns (contract class P) are never echoed in a problem message: the
    messages end up on terminals and in CI logs.
    """

    name: str
    kind: Kind
    required: bool = True
    choices: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    pattern_hint: str = ""
    min_value: int | None = None
    max_value: int | None = None
    allowed_ints: tuple[int, ...] = ()
    personal: bool = False
    references: str | None = None  # table whose identifier this column must name
    unique: bool = False
    max_length: int | None = None  # filled in from the model


@dataclass(frozen=True)
class FileSpec:
    """One file of the bundle and the table it loads into (same name without `.csv`)."""

    model: type[Base]
    key: str
    columns: tuple[ColumnSpec, ...]
    required: bool = True
    by_name: Mapping[str, ColumnSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})

    @property
    def table(self) -> str:
        return str(self.model.__tablename__)

    @property
    def filename(self) -> str:
        return f"{self.table}.csv"

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)


_COUNTRY = re.compile(r"[A-Z]{2}")
_COUNTRY_HINT = "an ISO 3166-1 alpha-2 code (two capital letters, e.g. AT)"
_ISCO = re.compile(r"[0-9]{4}")
_ISCO_HINT = "an ISCO-08 unit group of exactly 4 digits (e.g. 7411 or 0110)"


def _with_lengths(model: type[Base], columns: tuple[ColumnSpec, ...]) -> tuple[ColumnSpec, ...]:
    """Copy each string column's length limit from the model's SQL type."""
    table = model.__table__
    out = []
    for col in columns:
        sql_type = table.c[col.name].type
        length = sql_type.length if isinstance(sql_type, String) else None
        is_string = col.kind in (Kind.ID, Kind.TEXT, Kind.CODE)
        out.append(replace(col, max_length=length) if is_string and length else col)
    return tuple(out)


def _file(model: type[Base], key: str, *columns: ColumnSpec, required: bool = True) -> FileSpec:
    return FileSpec(model, key, _with_lengths(model, columns), required=required)


FILES: tuple[FileSpec, ...] = (
    _file(
        Municipality,
        "municipality_code",
        ColumnSpec("municipality_code", Kind.ID),
        ColumnSpec("name", Kind.TEXT),
        ColumnSpec("country", Kind.CODE, pattern=_COUNTRY, pattern_hint=_COUNTRY_HINT),
    ),
    _file(
        Provider,
        "provider_id",
        ColumnSpec("provider_id", Kind.ID),
        ColumnSpec("name", Kind.TEXT),
        ColumnSpec(
            "provider_type",
            Kind.ENUM,
            choices=("school", "company", "chamber", "private", "public_service"),
        ),
        ColumnSpec(
            "accreditation_status",
            Kind.ENUM,
            choices=("accredited", "conditional", "suspended", "withdrawn"),
        ),
    ),
    _file(
        Qualification,
        "qualification_id",
        ColumnSpec("qualification_id", Kind.ID),
        ColumnSpec("title", Kind.TEXT),
        ColumnSpec("isco_code", Kind.CODE, pattern=_ISCO, pattern_hint=_ISCO_HINT),
        ColumnSpec("eqf_level", Kind.INT, min_value=1, max_value=8),
    ),
    _file(
        Candidate,
        "candidate_id",
        ColumnSpec("candidate_id", Kind.ID),
        ColumnSpec("national_id", Kind.ID, required=False, personal=True),
        ColumnSpec("given_name", Kind.TEXT, personal=True),
        ColumnSpec("family_name", Kind.TEXT, personal=True),
        ColumnSpec("date_of_birth", Kind.DATE, personal=True),
        ColumnSpec("sex", Kind.ENUM, choices=("female", "male", "other", "unknown")),
        ColumnSpec(
            "citizenship",
            Kind.CODE,
            required=False,
            pattern=_COUNTRY,
            pattern_hint=_COUNTRY_HINT,
        ),
    ),
    _file(
        Assessment,
        "assessment_id",
        ColumnSpec("assessment_id", Kind.ID),
        ColumnSpec("candidate_id", Kind.ID, references="candidates"),
        ColumnSpec("qualification_id", Kind.ID, references="qualifications"),
        ColumnSpec("provider_id", Kind.ID, references="providers"),
        ColumnSpec("attempt_no", Kind.INT, min_value=1),
        ColumnSpec("assessed_on", Kind.DATE),
        ColumnSpec("result", Kind.ENUM, choices=("pass", "fail", "absent")),
    ),
    _file(
        Certificate,
        "certificate_id",
        ColumnSpec("certificate_id", Kind.ID),
        ColumnSpec("certificate_no", Kind.ID, personal=True, unique=True),
        ColumnSpec("candidate_id", Kind.ID, references="candidates"),
        ColumnSpec("qualification_id", Kind.ID, references="qualifications"),
        ColumnSpec("provider_id", Kind.ID, required=False, references="providers"),
        ColumnSpec("pathway", Kind.ENUM, choices=("training", "prior_learning", "reciprocity")),
        ColumnSpec("origin_municipality", Kind.ID, required=False),
        ColumnSpec("origin_certificate_no", Kind.ID, required=False, personal=True),
        ColumnSpec("issued_on", Kind.DATE),
        ColumnSpec("status", Kind.ENUM, choices=("valid", "suspended", "revoked", "expired")),
        ColumnSpec("status_changed_on", Kind.DATE, required=False),
    ),
    _file(
        RecognitionRequest,
        "request_id",
        ColumnSpec("request_id", Kind.ID),
        ColumnSpec("candidate_id", Kind.ID, references="candidates"),
        ColumnSpec("qualification_id", Kind.ID, references="qualifications"),
        ColumnSpec("origin_municipality", Kind.ID),
        ColumnSpec("received_on", Kind.DATE),
        ColumnSpec("decided_on", Kind.DATE, required=False),
        ColumnSpec("decision", Kind.ENUM, choices=("full", "partial", "rejected", "pending")),
        required=False,
    ),
    _file(
        Appeal,
        "appeal_id",
        ColumnSpec("appeal_id", Kind.ID),
        ColumnSpec("candidate_id", Kind.ID, references="candidates"),
        ColumnSpec("subject_type", Kind.ENUM, choices=("assessment", "certificate", "recognition")),
        ColumnSpec("subject_id", Kind.ID),
        ColumnSpec("lodged_on", Kind.DATE),
        ColumnSpec("decided_on", Kind.DATE, required=False),
        ColumnSpec("outcome", Kind.ENUM, choices=("upheld", "dismissed", "withdrawn", "pending")),
        required=False,
    ),
    _file(
        EmploymentOutcome,
        "outcome_id",
        ColumnSpec("outcome_id", Kind.ID),
        ColumnSpec("candidate_id", Kind.ID, references="candidates"),
        ColumnSpec("certificate_id", Kind.ID, references="certificates"),
        ColumnSpec("months_after", Kind.INT, allowed_ints=(6, 12)),
        ColumnSpec(
            "status",
            Kind.ENUM,
            choices=(
                "employed",
                "self_employed",
                "unemployed",
                "inactive",
                "in_education",
                "unknown",
            ),
        ),
        ColumnSpec("in_field", Kind.BOOL, required=False),
        ColumnSpec("monthly_earnings", Kind.DECIMAL, required=False),
        required=False,
    ),
)
"""Every bundle file, in foreign-key order (the order of `REGISTRY_TABLES`)."""

FILES_BY_NAME: Mapping[str, FileSpec] = {f.filename: f for f in FILES}

APPEAL_SUBJECT_TABLES: Mapping[str, str] = {
    "assessment": "assessments",
    "certificate": "certificates",
    "recognition": "recognition_requests",
}
"""Which table an appeal's `subject_id` points into, by its `subject_type`."""


def _check_matches_models() -> None:
    """Fail at import if the contract and the SQL models drift apart."""
    if tuple(f.model for f in FILES) != REGISTRY_TABLES:
        raise RuntimeError("bundle FILES must list the registry tables in REGISTRY_TABLES order")
    for spec in FILES:
        if set(spec.by_name) != set(spec.model.__table__.c.keys()):
            raise RuntimeError(f"{spec.filename}: columns differ from table {spec.table}")


_check_matches_models()
