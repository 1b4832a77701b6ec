"""Writing one municipality's rows as a data bundle: the CSV files of data contract v1.

Why: the generator's rows are Python values and references to other rows; this module alone
decides how they become contract CSV (ids for references, ISO dates, `true`/`false`), with
exactly the contract's columns, optional ones included, in its order.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from fedaudit.synthetic.params import COUNTRY, QUALIFICATIONS
from fedaudit.synthetic.records import Bundle, Rec

__all__ = ["FILE_OF_KIND", "HEADERS", "write_bundle"]


def _cols(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Exactly the columns of data-contract.md, optional ones included, in its order.
HEADERS = {
    "municipality.csv": _cols("municipality_code name country"),
    "providers.csv": _cols("provider_id name provider_type accreditation_status"),
    "qualifications.csv": _cols("qualification_id title isco_code eqf_level"),
    "candidates.csv": _cols(
        "candidate_id national_id given_name family_name date_of_birth sex citizenship"
    ),
    "assessments.csv": _cols(
        "assessment_id candidate_id qualification_id provider_id attempt_no assessed_on result"
    ),
    "certificates.csv": _cols(
        "certificate_id certificate_no candidate_id qualification_id provider_id pathway "
        "origin_municipality origin_certificate_no issued_on status status_changed_on"
    ),
    "recognition_requests.csv": _cols(
        "request_id candidate_id qualification_id origin_municipality received_on "
        "decided_on decision"
    ),
    "appeals.csv": _cols(
        "appeal_id candidate_id subject_type subject_id lodged_on decided_on outcome"
    ),
    "employment_outcomes.csv": _cols(
        "outcome_id candidate_id certificate_id months_after status in_field monthly_earnings"
    ),
}
FILE_OF_KIND = {
    "C": ("candidates.csv", "candidate_id"),
    "A": ("assessments.csv", "assessment_id"),
    "CT": ("certificates.csv", "certificate_id"),
    "RR": ("recognition_requests.csv", "request_id"),
    "AP": ("appeals.csv", "appeal_id"),
    "EO": ("employment_outcomes.csv", "outcome_id"),
}


def _row(rec: Rec) -> dict[str, object]:
    """The CSV row: records become their ids, dates ISO text, booleans `true`/`false`."""
    row: dict[str, object] = {FILE_OF_KIND[rec.kind][1]: rec.id}
    for key, value in rec.data.items():
        kind = type(value)
        if kind is dt.date:
            row[key] = value.isoformat()  # type: ignore[attr-defined]
        elif kind is Rec:
            row[key] = value.id  # type: ignore[attr-defined]
        elif kind is bool:
            row[key] = "true" if value else "false"
        else:
            row[key] = value
    return row


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[dict[str, object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(header))
        writer.writeheader()
        writer.writerows(rows)


def write_bundle(b: Bundle, directory: Path) -> None:
    """Write `b` (numbered) into `directory`, overwriting files of the same names."""
    directory.mkdir(parents=True, exist_ok=True)
    prof = b.profile
    fixed = {
        "municipality.csv": [{"municipality_code": b.code, "name": prof.name, "country": COUNTRY}],
        "providers.csv": [
            {
                "provider_id": p.provider_id,
                "name": p.name,
                "provider_type": p.provider_type,
                "accreditation_status": p.accreditation_status,
            }
            for p in b.providers
        ],
        "qualifications.csv": [
            {
                "qualification_id": q.qualification_id,
                "title": q.title,
                "isco_code": q.isco_code,
                "eqf_level": q.eqf_level,
            }
            for q in QUALIFICATIONS
        ],
    }
    for name, rows in fixed.items():
        _write_csv(directory / name, HEADERS[name], rows)
    for kind, (name, _) in FILE_OF_KIND.items():
        _write_csv(directory / name, HEADERS[name], [_row(r) for r in b.rows[kind]])
