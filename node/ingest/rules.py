"""Rules across columns and files: uniqueness, references, dates in order.

They run after every file is parsed, and skip values that already failed to parse,
so one bad date is reported once, not again by every rule that reads it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from fedaudit.node.ingest.bundle_schema import (
    APPEAL_SUBJECT_TABLES,
    FILES_BY_NAME,
    FileSpec,
)
from fedaudit.node.ingest.problems import (
    INVALID,
    Context,
    ParsedTable,
    Row,
)

# --- rules across columns and files ---------------------------------------------------------

Emit = Callable[[str, str], None]


def _valid(*values: Any) -> bool:
    return all(v is not INVALID for v in values)


def _rule_certificate(row: Row, emit: Emit) -> None:
    pathway, status = row["pathway"], row["status"]
    if _valid(pathway):
        reciprocity = pathway == "reciprocity"
        if reciprocity and row["provider_id"] not in (None, INVALID):
            emit("provider_id", "must be empty when pathway is 'reciprocity'")
        for column in ("origin_municipality", "origin_certificate_no"):
            value = row[column]
            if reciprocity and value is None:
                emit(column, "required when pathway is 'reciprocity'")
            elif not reciprocity and value not in (None, INVALID):
                emit(column, f"must be empty when pathway is '{pathway}'")
    changed, issued = row["status_changed_on"], row["issued_on"]
    if _valid(status) and status != "valid" and changed is None:
        emit("status_changed_on", f"required when status is '{status}'")
    if changed is not None and _valid(changed, issued) and changed < issued:
        emit("status_changed_on", f"{changed} is before issued_on {issued}")


def _rule_recognition(row: Row, emit: Emit) -> None:
    received, decided, decision = row["received_on"], row["decided_on"], row["decision"]
    if decided is not None and _valid(decided, received) and decided < received:
        emit("decided_on", f"{decided} is before received_on {received}")
    if _valid(decision, decided):
        if decision == "pending" and decided is not None:
            emit("decided_on", "must be empty while decision is 'pending'")
        elif decision != "pending" and decided is None:
            emit("decided_on", f"required when decision is '{decision}' (empty means pending)")


def _rule_appeal(row: Row, emit: Emit) -> None:
    lodged, decided = row["lodged_on"], row["decided_on"]
    if decided is not None and _valid(decided, lodged) and decided < lodged:
        emit("decided_on", f"{decided} is before lodged_on {lodged}")


_ROW_RULES: Mapping[str, Callable[[Row, Emit], None]] = {
    "certificates": _rule_certificate,
    "recognition_requests": _rule_recognition,
    "appeals": _rule_appeal,
}


def _check_unique(spec: FileSpec, table: ParsedTable, ctx: Context) -> None:
    """Identifiers and other unique columns; fills `table.by_key` for foreign keys."""
    unique_columns = [c for c in spec.columns if c.name == spec.key or c.unique]
    for col in unique_columns:
        first_line: dict[Any, int] = {}
        is_key = col.name == spec.key
        for line, row in table.rows:
            value = row[col.name]
            if value is None or value is INVALID:
                continue
            if value in first_line:
                what = "value" if col.personal else repr(value)
                msg = f"duplicate {what} (first on line {first_line[value]})"
                ctx.problems.add(spec.filename, line, col.name, msg)
                continue
            first_line[value] = line
            if is_key and table.by_key is not None:
                table.by_key[value] = row


def _target(ctx: Context, table_name: str) -> dict[str, Row] | None:
    """The identifiers of a table, or None when they are unknown (file missing or broken)."""
    target = ctx.tables.get(table_name)
    return None if target is None else target.by_key


def _check_references(spec: FileSpec, table: ParsedTable, ctx: Context) -> None:
    refs = [(c, _target(ctx, c.references)) for c in spec.columns if c.references]
    for line, row in table.rows:
        for col, target in refs:
            value = row[col.name]
            if target is None or value is None or value is INVALID or value in target:
                continue
            assert col.references is not None
            target_spec = FILES_BY_NAME[f"{col.references}.csv"]
            msg = f"{value!r} matches no {target_spec.key} in {target_spec.filename}"
            ctx.problems.add(spec.filename, line, col.name, msg)


def _check_appeal_subjects(table: ParsedTable, ctx: Context) -> None:
    for line, row in table.rows:
        subject_type, subject_id = row["subject_type"], row["subject_id"]
        if not _valid(subject_type, subject_id) or subject_id is None:
            continue
        target_name = APPEAL_SUBJECT_TABLES[subject_type]
        target = _target(ctx, target_name)
        if target is not None and subject_id not in target:
            target_spec = FILES_BY_NAME[f"{target_name}.csv"]
            msg = f"{subject_id!r} matches no {target_spec.key} in {target_spec.filename}"
            ctx.problems.add("appeals.csv", line, "subject_id", msg)


def _check_outcome_certificates(table: ParsedTable, ctx: Context) -> None:
    certificates = _target(ctx, "certificates")
    if certificates is None:
        return
    for line, row in table.rows:
        certificate = certificates.get(row["certificate_id"])
        candidate = row["candidate_id"]
        if certificate is None or not _valid(candidate):
            continue
        owner = certificate["candidate_id"]
        if _valid(owner) and owner != candidate:
            cert = row["certificate_id"]
            msg = f"certificate {cert!r} belongs to candidate {owner!r}, not {candidate!r}"
            ctx.problems.add("employment_outcomes.csv", line, "certificate_id", msg)


def check_table(spec: FileSpec, table: ParsedTable, ctx: Context) -> None:
    rule = _ROW_RULES.get(spec.table)
    if rule is not None:
        for line, row in table.rows:
            rule(row, functools.partial(ctx.problems.add, spec.filename, line))
    _check_unique(spec, table, ctx)
    _check_references(spec, table, ctx)
    if spec.table == "appeals":
        _check_appeal_subjects(table, ctx)
    elif spec.table == "employment_outcomes":
        _check_outcome_certificates(table, ctx)
    elif spec.table == "municipality" and len(table.rows) != 1 and table.by_key is not None:
        count = len(table.rows)
        line = 2 if count == 0 else table.rows[1][0]
        found = "none" if count == 0 else str(count)
        ctx.problems.add(spec.filename, line, "-", f"expected exactly one data row, found {found}")
