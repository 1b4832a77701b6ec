"""Monthly exports of a synthetic municipality, and a brute-force per-person privacy loss.

`export_as_of` cuts one long synthetic bundle (fedaudit/synthetic, dates up to years ahead)
to what the registry held at the end of a month: records dated after the cut are dropped,
decisions and status changes after it are undone (pending, valid), employment outcomes
appear once their horizon has passed, persons appear with their first record. Importing
these month by month is a municipality's monthly export: every month adds a new cohort.

`brute_force_loss` recomputes a person's loss at a node without the node's cohort
bookkeeping: from the ledger's charges, the query log's record of what each request asked
(its filters) and the person's own records. A request whose logged parameters restrict it
to cohorts reads the person only when the person's cohort is one of them; every other
charge (queries over all cohorts, the blinding ring, reconciliation) reads everyone.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import sqlalchemy as sa

DATED = {
    "assessments.csv": "assessed_on",
    "certificates.csv": "issued_on",
    "recognition_requests.csv": "received_on",
    "appeals.csv": "lodged_on",
}
REFERENCE_FILES = ("municipality.csv", "providers.csv", "qualifications.csv")
RHO_UNIT = 1e-12


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _write(path: Path, header: list[str], rows: Iterable[Mapping[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return dt.date(year, month + 1, min(day.day, 28))


class MonthlyExports:
    """One long bundle, read once, cut to the end of any month."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle
        self.tables = {p.name: _read(p) for p in sorted(bundle.glob("*.csv"))}

    def first_record(self) -> dict[str, dt.date]:
        """Each candidate's earliest dated record (their cohort is its month)."""
        first: dict[str, dt.date] = {}
        for name, column in DATED.items():
            for row in self.tables.get(name, ([], []))[1]:
                day = _day(row[column])
                cand = row["candidate_id"]
                if cand not in first or day < first[cand]:
                    first[cand] = day
        return first

    def export_as_of(self, cut: dt.date, out: Path) -> Path:
        """Write the registry as it stood at the end of `cut` into `out`; returns `out`."""
        out.mkdir(parents=True, exist_ok=True)
        kept: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
        rows_out: dict[str, list[dict[str, str]]] = {}
        for name in ("assessments.csv", "certificates.csv", "recognition_requests.csv"):
            if name not in self.tables:
                continue
            _, rows = self.tables[name]
            column = DATED[name]
            selected = []
            for original in rows:
                if _day(original[column]) > cut:
                    continue
                row = dict(original)
                changed = row.get("status_changed_on")
                if name == "certificates.csv" and changed and _day(changed) > cut:
                    row["status"], row["status_changed_on"] = "valid", ""
                decided = row.get("decided_on")
                if name == "recognition_requests.csv" and decided and _day(decided) > cut:
                    row["decision"], row["decided_on"] = "pending", ""
                selected.append(row)
            rows_out[name] = selected
        for row in rows_out.get("assessments.csv", []):
            kept["assessments"][row["assessment_id"]] = row
        for row in rows_out.get("certificates.csv", []):
            kept["certificates"][row["certificate_id"]] = row
        for row in rows_out.get("recognition_requests.csv", []):
            kept["recognition_requests"][row["request_id"]] = row
        if "appeals.csv" in self.tables:
            subjects = {
                "assessment": kept["assessments"],
                "certificate": kept["certificates"],
                "recognition": kept["recognition_requests"],
            }
            appeals = []
            for original in self.tables["appeals.csv"][1]:
                if (
                    _day(original["lodged_on"]) > cut
                    or original["subject_id"] not in subjects[original["subject_type"]]
                ):
                    continue
                row = dict(original)
                if row["decided_on"] and _day(row["decided_on"]) > cut:
                    row["outcome"], row["decided_on"] = "pending", ""
                appeals.append(row)
            rows_out["appeals.csv"] = appeals
        if "employment_outcomes.csv" in self.tables:
            outcomes = []
            for row in self.tables["employment_outcomes.csv"][1]:
                cert = kept["certificates"].get(row["certificate_id"])
                if cert is None:
                    continue
                if _add_months(_day(cert["issued_on"]), int(row["months_after"])) > cut:
                    continue
                outcomes.append(row)
            rows_out["employment_outcomes.csv"] = outcomes
        persons = {r["candidate_id"] for rows in rows_out.values() for r in rows}
        header, candidates = self.tables["candidates.csv"]
        _write(
            out / "candidates.csv", header, [c for c in candidates if c["candidate_id"] in persons]
        )
        for name, rows in rows_out.items():
            _write(out / name, self.tables[name][0], rows)
        for name in REFERENCE_FILES:
            header, rows = self.tables[name]
            _write(out / name, header, rows)
        return out


def brute_force_loss(
    engine: sa.Engine,
    person_cohort: str,
    first_seen: dt.datetime,
    requester: str | None = None,
) -> float:
    """Rho charged at this node by every request that could read a person of `person_cohort`
    who has been in the registry since `first_seen` (their first import).

    From the ledger (charges that stand: released or failed) joined by request id to the
    query log's logged parameters; independent of the node's `ledger_cohort_ranges`. A
    request restricted to cohorts could read the person when their cohort is one of them;
    any other charge (a query over all cohorts, the ring, reconciliation) when it was made
    after the person arrived.
    """
    with engine.connect() as conn:
        charges = conn.execute(
            sa.text(
                "SELECT requester, request_id, rho_units, created_at FROM ledger_entries "
                "WHERE state IN ('released', 'failed')"
            )
        ).all()
        logged = conn.execute(
            sa.text(
                "SELECT requester, request_id, parameters FROM query_log "
                "WHERE method = 'query' AND parameters != ''"
            )
        ).all()
    params = {(r, rid): p for r, rid, p in logged}
    total = 0
    for who, request_id, units, created in charges:
        if requester is not None and who != requester:
            continue
        cohorts = _cohort_filter(params.get((who, request_id)))
        if cohorts is not None:
            if person_cohort in cohorts:
                total += int(units)
        elif _moment(created) >= first_seen:
            total += int(units)
    return total * RHO_UNIT


def _moment(value: object) -> dt.datetime:
    """A `created_at` as SQLite returns it (text or datetime), as an aware UTC datetime."""
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _cohort_filter(parameters: str | None) -> set[str] | None:
    """The cohorts a logged query was restricted to, or None when it could read anyone."""
    if not parameters:
        return None
    spec = json.loads(parameters)
    filters = spec.get("filters") or {}
    value = filters.get("cohort")
    if value is None:
        return None
    return set(value)
