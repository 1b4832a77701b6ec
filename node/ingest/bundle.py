"""Validate and import a municipality's data bundle (`fedaudit node import`).

An import either loads the whole bundle as a new data version or writes nothing and
lists every problem at once as `file:line: column: message`, so a data officer fixes
an export in one round instead of one error per attempt. Line numbers are the row
numbers a spreadsheet shows (header = 1), not physical lines, because that is where
the officer will look.

The validator never trusts the input: oversized files and fields, NUL bytes, other
encodings and broken quoting become problems, not tracebacks. Values of personal
columns (names, dates of birth, national ids, certificate numbers) are never echoed
in a problem, because problem lists end up on terminals and in logs.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import functools
import hashlib
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Final

import structlog
from sqlalchemy import Connection, Engine, Table, delete, func, insert, select, text

from fedaudit.node.errors import BundleError
from fedaudit.node.ingest.bundle_schema import (
    APPEAL_SUBJECT_TABLES,
    FILES,
    FILES_BY_NAME,
    ColumnSpec,
    FileSpec,
    Kind,
)
from fedaudit.node.store.db import create_schema
from fedaudit.node.store.models import REGISTRY_TABLES, DataVersion, Municipality

log = structlog.get_logger(__name__)

INSERT_CHUNK_ROWS: Final = 5_000
"""Rows per executemany (SQLite): large enough to be fast, small enough to bound memory."""


@dataclass(frozen=True)
class BundleLimits:
    """Guards against absurd input; the defaults are far above any real registry export."""

    max_file_bytes: int = 2 * 1024**3
    max_field_chars: int = 10_000
    max_listed_problems: int = 200


@dataclass(frozen=True)
class ParsedBundle:
    """A bundle that passed validation: typed rows ready to insert.

    `rows` and `row_counts` are keyed by table name (the file name without `.csv`);
    absent optional files have zero rows. Dates are `datetime.date`, earnings whole
    currency units (rounded half up).
    """

    municipality_code: str
    rows: Mapping[str, list[dict[str, Any]]]
    row_counts: Mapping[str, int]
    digest: str


@dataclass(frozen=True)
class ImportResult:
    """What an import produced: the version queries will now name, and what it holds."""

    data_version: str
    row_counts: dict[str, int]
    digest: str


# --- problem collection -------------------------------------------------------------------


class _Problems:
    """Collects problems in the order found; keeps only the first `limit` lines.

    A completely wrong million-row file would otherwise build a million strings and
    flood the terminal; counting the rest is enough.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: list[str] = []
        self.total = 0

    def add(self, file: str, line: int | None, column: str, message: str) -> None:
        self.total += 1
        if len(self.lines) < self.limit:
            where = f"{file}: -" if line is None else f"{file}:{line}"
            self.lines.append(f"{where}: {column}: {message}")

    def report(self, bundle_name: str) -> list[str]:
        more = self.total - len(self.lines)
        if not more:
            return list(self.lines)
        tail = f"{bundle_name}: -: -: {more} more problem(s) not listed; fix the above first"
        return [*self.lines, tail]


class _FieldError(ValueError):
    """A single value is wrong; the message says why, without the file and line."""


class _Invalid:
    """Marks a value that failed to parse, so rules that need it are skipped."""

    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Final = _Invalid()

Row = dict[str, Any]


@dataclass
class _Table:
    """A parsed file: its rows (with line numbers) and its identifiers."""

    rows: list[tuple[int, Row]] = field(default_factory=list)
    by_key: dict[str, Row] | None = field(default_factory=dict)  # None: cannot check FKs


@dataclass
class _Context:
    today: dt.date
    limits: BundleLimits
    problems: _Problems
    tables: dict[str, _Table] = field(default_factory=dict)


# --- single values ----------------------------------------------------------------------

_DATE_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_INT_SHAPE = re.compile(r"[+-]?[0-9]{1,18}")
_DECIMAL_SHAPE = re.compile(r"-?[0-9]{1,15}(\.[0-9]+)?")
_DECIMAL_COMMA = re.compile(r"-?[0-9]{1,15},[0-9]+")


def _got(col: ColumnSpec, raw: str) -> str:
    """How a bad value is quoted in a message: shortened, and never for personal data."""
    if col.personal:
        return "value not shown (personal data)"
    shown = raw if len(raw) <= 40 else raw[:37] + "..."
    return f"got {shown!r}"


@functools.lru_cache(maxsize=65_536)
def _calendar_date(raw: str) -> dt.date:
    # Registry exports repeat the same few thousand dates; the cache makes 1M rows cheap.
    if not _DATE_SHAPE.fullmatch(raw):
        raise _FieldError("expected a date as YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise _FieldError("not a real calendar date") from None


def _parse_id(col: ColumnSpec, raw: str, _today: dt.date) -> str:
    if raw != raw.strip():
        raise _FieldError(f"has leading or trailing spaces, {_got(col, raw)}")
    if col.max_length is not None and len(raw) > col.max_length:
        raise _FieldError(f"is {len(raw)} characters long; at most {col.max_length} allowed")
    return raw


def _parse_text(col: ColumnSpec, raw: str, _today: dt.date) -> str:
    if not raw.strip():
        raise _FieldError("contains only spaces")
    if col.max_length is not None and len(raw) > col.max_length:
        raise _FieldError(f"is {len(raw)} characters long; at most {col.max_length} allowed")
    return raw


def _parse_code(col: ColumnSpec, raw: str, _today: dt.date) -> str:
    assert col.pattern is not None
    if not col.pattern.fullmatch(raw):
        raise _FieldError(f"expected {col.pattern_hint}, {_got(col, raw)}")
    return raw


def _parse_enum(col: ColumnSpec, raw: str, _today: dt.date) -> str:
    if raw in col.choices:
        return raw
    hint = " (check letter case and spaces)" if raw.strip().lower() in col.choices else ""
    raise _FieldError(f"expected one of {' | '.join(col.choices)}, {_got(col, raw)}{hint}")


def _parse_date(col: ColumnSpec, raw: str, today: dt.date) -> dt.date:
    try:
        value = _calendar_date(raw)
    except _FieldError as exc:
        raise _FieldError(f"{exc}, {_got(col, raw)}") from None
    if value > today:
        raise _FieldError(f"date is in the future (after {today.isoformat()}), {_got(col, raw)}")
    return value


def _parse_int(col: ColumnSpec, raw: str, _today: dt.date) -> int:
    if not _INT_SHAPE.fullmatch(raw):
        raise _FieldError(f"expected a whole number, {_got(col, raw)}")
    value = int(raw)
    if col.allowed_ints and value not in col.allowed_ints:
        allowed = " or ".join(str(v) for v in col.allowed_ints)
        raise _FieldError(f"must be {allowed}, {_got(col, raw)}")
    if col.min_value is not None and value < col.min_value:
        raise _FieldError(f"must be at least {col.min_value}, {_got(col, raw)}")
    if col.max_value is not None and value > col.max_value:
        raise _FieldError(f"must be at most {col.max_value}, {_got(col, raw)}")
    return value


def _parse_decimal(col: ColumnSpec, raw: str, _today: dt.date) -> int:
    if not _DECIMAL_SHAPE.fullmatch(raw):
        hint = "; use '.' as the decimal separator" if _DECIMAL_COMMA.fullmatch(raw) else ""
        raise _FieldError(f"expected a decimal number such as 1234.50, {_got(col, raw)}{hint}")
    value = Decimal(raw)
    if value < 0:
        raise _FieldError(f"must not be negative, {_got(col, raw)}")
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _parse_bool(col: ColumnSpec, raw: str, _today: dt.date) -> bool:
    if raw == "true":
        return True
    if raw == "false":
        return False
    raise _FieldError(f"expected 'true' or 'false', {_got(col, raw)}")


_PARSERS: Mapping[Kind, Callable[[ColumnSpec, str, dt.date], Any]] = {
    Kind.ID: _parse_id,
    Kind.TEXT: _parse_text,
    Kind.CODE: _parse_code,
    Kind.ENUM: _parse_enum,
    Kind.DATE: _parse_date,
    Kind.INT: _parse_int,
    Kind.DECIMAL: _parse_decimal,
    Kind.BOOL: _parse_bool,
}


_Plan = list[tuple[str, int | None, Callable[[ColumnSpec, str, dt.date], Any], ColumnSpec]]


def _parse_record(ctx: _Context, file: str, line: int, plan: _Plan, record: list[str]) -> Row:
    """One CSV record as typed values; bad values become _INVALID after recording why.

    This loop runs once per field of a million-row export, so it avoids per-field
    lookups (the plan carries each column's parser and position).
    """
    row: Row = {}
    max_chars = ctx.limits.max_field_chars
    for name, pos, parse, col in plan:
        if pos is None:  # optional column absent from the header; required ones were reported
            row[name] = _INVALID if col.required else None
            continue
        raw = record[pos]
        if not raw:
            if col.required:
                ctx.problems.add(file, line, name, "required value is missing")
                row[name] = _INVALID
            else:
                row[name] = None
        elif len(raw) > max_chars:
            msg = f"value of {len(raw)} characters exceeds {max_chars}"
            ctx.problems.add(file, line, name, msg)
            row[name] = _INVALID
        else:
            try:
                row[name] = parse(col, raw, ctx.today)
            except _FieldError as exc:
                ctx.problems.add(file, line, name, str(exc))
                row[name] = _INVALID
    return row


# --- files --------------------------------------------------------------------------------


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _read_text(path: Path, spec: FileSpec, ctx: _Context, digest: Any) -> str | None:
    """The file's text, or None after recording why it cannot be read as UTF-8 CSV."""
    name = spec.filename
    add = ctx.problems.add
    try:
        size = path.stat().st_size
        if size > ctx.limits.max_file_bytes:
            add(name, 1, "-", f"file is {size} bytes; at most {ctx.limits.max_file_bytes} allowed")
            return None
        raw = path.read_bytes()
    except OSError as exc:
        add(name, None, "-", f"cannot read the file: {exc.strerror or exc.__class__.__name__}")
        return None
    digest.update(f"{name}\0{len(raw)}\0".encode())
    digest.update(raw)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        add(name, 1, "-", "file is UTF-16 encoded; export it as UTF-8")
        return None
    nul = raw.find(b"\x00")
    if nul >= 0:
        add(name, _line_of(raw, nul), "-", "contains a NUL byte; is this really a CSV file?")
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        line = _line_of(raw, exc.start)
        add(name, line, "-", f"not valid UTF-8 (byte 0x{bad}); export the file as UTF-8")
        return None


def _check_header(spec: FileSpec, header: list[str], ctx: _Context) -> dict[str, int] | None:
    """Column positions by name, or None when the header is unusable."""
    name = spec.filename
    add = ctx.problems.add
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        add(name, 1, "-", "header is not comma-separated (semicolons or tabs?); use commas")
        return None
    positions: dict[str, int] = {}
    for index, column in enumerate(header):
        shown = column if len(column) <= 40 else column[:37] + "..."
        if column == "":
            add(name, 1, "-", f"header column {index + 1} has no name")
        elif column in positions:
            add(
                name,
                1,
                shown,
                f"column appears twice (columns {positions[column] + 1} and {index + 1})",
            )
        elif column not in spec.by_name:
            close = difflib.get_close_matches(column.strip().lower(), spec.by_name, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            add(name, 1, shown, f"unknown column{hint}")
        else:
            positions[column] = index
    for required in spec.required_columns:
        if required not in positions:
            add(name, 1, "-", f"missing required column '{required}'")
    return positions


def _parse_file(spec: FileSpec, text_: str, ctx: _Context) -> _Table:
    name = spec.filename
    add = ctx.problems.add
    table = _Table()
    reader = csv.reader(io.StringIO(text_, newline=""), strict=True)
    line = 1
    try:
        header = next(reader, None)
        if header is None:
            add(name, 1, "-", "file is empty; expected a header row")
            table.by_key = None
            return table
        positions = _check_header(spec, header, ctx)
        if positions is None:
            table.by_key = None
            return table
        if spec.key not in positions:
            table.by_key = None
        plan: _Plan = [
            (col.name, positions.get(col.name), _PARSERS[col.kind], col) for col in spec.columns
        ]
        width = len(header)
        for record in reader:
            line += 1
            if not any(record):  # blank line or a row of empty cells
                continue
            if len(record) != width:
                add(name, line, "-", f"row has {len(record)} fields; the header has {width}")
                continue
            table.rows.append((line, _parse_record(ctx, name, line, plan, record)))
    except csv.Error as exc:
        add(name, line + 1, "-", f"broken CSV ({exc}); the rest of the file was not checked")
        table.by_key = None  # a truncated table would make every later reference look dangling
    return table


# --- rules across columns and files ---------------------------------------------------------

Emit = Callable[[str, str], None]


def _valid(*values: Any) -> bool:
    return all(v is not _INVALID for v in values)


def _rule_certificate(row: Row, emit: Emit) -> None:
    pathway, status = row["pathway"], row["status"]
    if _valid(pathway):
        reciprocity = pathway == "reciprocity"
        if reciprocity and row["provider_id"] not in (None, _INVALID):
            emit("provider_id", "must be empty when pathway is 'reciprocity'")
        for column in ("origin_municipality", "origin_certificate_no"):
            value = row[column]
            if reciprocity and value is None:
                emit(column, "required when pathway is 'reciprocity'")
            elif not reciprocity and value not in (None, _INVALID):
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


def _check_unique(spec: FileSpec, table: _Table, ctx: _Context) -> None:
    """Identifiers and other unique columns; fills `table.by_key` for foreign keys."""
    unique_columns = [c for c in spec.columns if c.name == spec.key or c.unique]
    for col in unique_columns:
        first_line: dict[Any, int] = {}
        is_key = col.name == spec.key
        for line, row in table.rows:
            value = row[col.name]
            if value is None or value is _INVALID:
                continue
            if value in first_line:
                what = "value" if col.personal else repr(value)
                msg = f"duplicate {what} (first on line {first_line[value]})"
                ctx.problems.add(spec.filename, line, col.name, msg)
                continue
            first_line[value] = line
            if is_key and table.by_key is not None:
                table.by_key[value] = row


def _target(ctx: _Context, table_name: str) -> dict[str, Row] | None:
    """The identifiers of a table, or None when they are unknown (file missing or broken)."""
    target = ctx.tables.get(table_name)
    return None if target is None else target.by_key


def _check_references(spec: FileSpec, table: _Table, ctx: _Context) -> None:
    refs = [(c, _target(ctx, c.references)) for c in spec.columns if c.references]
    for line, row in table.rows:
        for col, target in refs:
            value = row[col.name]
            if target is None or value is None or value is _INVALID or value in target:
                continue
            assert col.references is not None
            target_spec = FILES_BY_NAME[f"{col.references}.csv"]
            msg = f"{value!r} matches no {target_spec.key} in {target_spec.filename}"
            ctx.problems.add(spec.filename, line, col.name, msg)


def _check_appeal_subjects(table: _Table, ctx: _Context) -> None:
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


def _check_outcome_certificates(table: _Table, ctx: _Context) -> None:
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


def _check_table(spec: FileSpec, table: _Table, ctx: _Context) -> None:
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


# --- the bundle -----------------------------------------------------------------------------


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower().startswith("readme")


def _check_directory(path: Path, ctx: _Context) -> None:
    """Unknown entries are errors: a misspelt file name must not silently drop its data."""
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        ctx.problems.add(path.name, None, "-", f"cannot list the directory: {exc.strerror}")
        return
    for entry in entries:
        name = entry.name
        if _is_ignored(name):
            continue
        if name in FILES_BY_NAME:
            if not entry.is_file():
                ctx.problems.add(name, None, "-", "is not a regular file")
            continue
        kind = "directory" if entry.is_dir() else "file"
        close = difflib.get_close_matches(name.lower(), FILES_BY_NAME, n=1, cutoff=0.75)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        ctx.problems.add(name, None, "-", f"unknown {kind} in the bundle{hint}")


def _parse_bundle(path: Path, ctx: _Context) -> str:
    """Parse and check every file; returns the content digest."""
    digest = hashlib.sha256(b"fedaudit-bundle-v1\0")
    _check_directory(path, ctx)
    for spec in FILES:
        file_path = path / spec.filename
        if not file_path.is_file():
            if spec.required:
                if not file_path.exists():
                    ctx.problems.add(spec.filename, None, "-", "required file is missing")
                ctx.tables[spec.table] = _Table(by_key=None)
            else:
                digest.update(f"{spec.filename}\0absent\0".encode())
                ctx.tables[spec.table] = _Table()
            continue
        text_ = _read_text(file_path, spec, ctx, digest)
        table = _Table(by_key=None) if text_ is None else _parse_file(spec, text_, ctx)
        _check_table(spec, table, ctx)
        ctx.tables[spec.table] = table
    return digest.hexdigest()


def validate_bundle(
    path: Path, *, today: dt.date | None = None, limits: BundleLimits | None = None
) -> ParsedBundle:
    """Check a bundle against the data contract and return its typed rows.

    Every problem is collected before anything is raised, so one run tells the data
    officer everything that is wrong. Raises `BundleError` with the problem lines.
    """
    limits = limits or BundleLimits()
    ctx = _Context(
        today=today or dt.date.today(),
        limits=limits,
        problems=_Problems(limits.max_listed_problems),
    )
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise BundleError([f"{path}: -: -: bundle directory {what}"])
    digest = _parse_bundle(path, ctx)
    if ctx.problems.total:
        raise BundleError(ctx.problems.report(path.name or str(path)), total=ctx.problems.total)
    rows = {spec.table: [row for _, row in ctx.tables[spec.table].rows] for spec in FILES}
    return ParsedBundle(
        municipality_code=rows["municipality"][0]["municipality_code"],
        rows=rows,
        row_counts={table: len(table_rows) for table, table_rows in rows.items()},
        digest=digest,
    )


# --- import -------------------------------------------------------------------------------


def _copy_rows_postgresql(conn: Connection, table: Table, rows: list[Row]) -> None:
    """COPY is several times faster than batched INSERTs for a registry of a million rows."""
    from psycopg import sql  # the driver of this connection, so it is installed

    columns = [column.name for column in table.columns]
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    driver_connection = conn.connection.driver_connection
    assert driver_connection is not None
    with driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([row[name] for name in columns])


def _clear_registry(conn: Connection) -> None:
    """Empty the registry tables inside the import transaction.

    On PostgreSQL a row-by-row DELETE fires a foreign-key check per deleted parent
    row, which is quadratic where the child column has no index (200k certificates
    took minutes); TRUNCATE of all registry tables at once skips those checks and is
    still transactional. Its price is an exclusive lock: queries on the registry wait
    for the import to commit and then see the new data, never a mix.
    """
    if conn.dialect.name == "postgresql":
        names = ", ".join(
            conn.dialect.identifier_preparer.quote(m.__tablename__) for m in REGISTRY_TABLES
        )
        conn.execute(text(f"TRUNCATE {names}"))
        return
    for model in reversed(REGISTRY_TABLES):
        conn.execute(delete(model.__table__))


def _insert_rows(conn: Connection, table: Table, rows: list[Row]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        _copy_rows_postgresql(conn, table, rows)
        return
    for start in range(0, len(rows), INSERT_CHUNK_ROWS):
        conn.execute(insert(table), rows[start : start + INSERT_CHUNK_ROWS])


def import_bundle(
    engine: Engine,
    path: Path,
    *,
    now: dt.datetime | None = None,
    allow_municipality_change: bool = False,
    limits: BundleLimits | None = None,
) -> ImportResult:
    """Validate a bundle, then replace the registry with it as a new data version.

    Validation runs before the transaction opens, so a bad bundle writes nothing. The
    replacement and the new `DataVersion` row commit together: queries never see a
    half-loaded registry or data without its version. A node serves one municipality,
    so a bundle for another one is refused unless the change is explicit.
    """
    # Local time: the node runs at the municipality, and "today" is its calendar day.
    now = now or dt.datetime.now().astimezone()
    if now.tzinfo is None:
        now = now.astimezone()  # a naive time is local time
    create_schema(engine)
    parsed = validate_bundle(path, today=now.date(), limits=limits)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Serialise imports (version numbering) without blocking readers.
            conn.execute(text("LOCK TABLE data_versions IN EXCLUSIVE MODE"))
        current = set(conn.execute(select(Municipality.municipality_code)).scalars())
        if current and parsed.municipality_code not in current and not allow_municipality_change:
            held = ", ".join(sorted(current))
            raise BundleError(
                [
                    f"municipality.csv:2: municipality_code: this node holds the data of "
                    f"municipality {held!r} and the bundle is for {parsed.municipality_code!r}; "
                    "refusing to replace it without an explicit municipality change"
                ]
            )
        _clear_registry(conn)
        for model in REGISTRY_TABLES:
            table = model.__table__
            _insert_rows(conn, table, parsed.rows[table.name])
        count = conn.execute(select(func.count()).select_from(DataVersion)).scalar_one()
        version = f"v{count + 1}-{parsed.digest[:12]}"
        conn.execute(
            insert(DataVersion.__table__),
            {
                "version": version,
                "bundle_digest": parsed.digest,
                "imported_at": now,
                "reference_date": now.date(),
                "row_counts": json.dumps(dict(parsed.row_counts), sort_keys=True),
            },
        )
    # Fresh planner statistics: without them PostgreSQL picks nested loops for the
    # bounded aggregations and a 200k-row query takes seconds instead of tenths.
    with engine.begin() as conn:
        for model in REGISTRY_TABLES:
            conn.exec_driver_sql(f"ANALYZE {model.__tablename__}")
    log.info(
        "bundle_imported",
        data_version=version,
        municipality=parsed.municipality_code,
        row_counts=dict(parsed.row_counts),
    )
    return ImportResult(
        data_version=version, row_counts=dict(parsed.row_counts), digest=parsed.digest
    )
