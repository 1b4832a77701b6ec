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

import datetime as dt
import difflib
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from sqlalchemy import Connection, Engine, Table, delete, func, insert, select, text

from fedaudit.node.errors import BundleError
from fedaudit.node.ingest import cohorts
from fedaudit.node.ingest.bundle_schema import (
    FILES,
    FILES_BY_NAME,
)
from fedaudit.node.ingest.files import parse_file, read_text
from fedaudit.node.ingest.problems import (
    BundleLimits,
    Context,
    ParsedTable,
    Problems,
    Row,
)
from fedaudit.node.ingest.rules import check_table
from fedaudit.node.privacy.cohorts import is_month, month_of
from fedaudit.node.store.db import create_schema
from fedaudit.node.store.models import REGISTRY_TABLES, DataVersion, Municipality, PersonCohort

log = structlog.get_logger(__name__)

INSERT_CHUNK_ROWS: Final = 5_000
"""Rows per executemany (SQLite): large enough to be fast, small enough to bound memory."""


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
    changed_cohorts: tuple[str, ...] = ()
    """Cohorts whose data this import changed (the officer's view; see `--reopen`)."""
    reopened_cohorts: tuple[str, ...] = ()
    empty_reopened_cohorts: tuple[str, ...] = ()
    """Reopened cohorts that hold no person at this node (most likely a mistyped month)."""


# --- the bundle -----------------------------------------------------------------------------


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower().startswith("readme")


def _check_directory(path: Path, ctx: Context) -> None:
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


def _parse_bundle(path: Path, ctx: Context) -> str:
    """Parse and check every file; returns the content digest."""
    digest = hashlib.sha256(b"fedaudit-bundle-v1\0")
    _check_directory(path, ctx)
    for spec in FILES:
        file_path = path / spec.filename
        if not file_path.is_file():
            if spec.required:
                if not file_path.exists():
                    ctx.problems.add(spec.filename, None, "-", "required file is missing")
                ctx.tables[spec.table] = ParsedTable(by_key=None)
            else:
                digest.update(f"{spec.filename}\0absent\0".encode())
                ctx.tables[spec.table] = ParsedTable()
            continue
        text_ = read_text(file_path, spec, ctx, digest)
        table = ParsedTable(by_key=None) if text_ is None else parse_file(spec, text_, ctx)
        check_table(spec, table, ctx)
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
    ctx = Context(
        today=today or dt.date.today(),
        limits=limits,
        problems=Problems(limits.max_listed_problems),
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
    reopen: Sequence[str] = (),
) -> ImportResult:
    """Validate a bundle, then replace the registry with it as a new data version.

    Validation runs before the transaction opens, so a bad bundle writes nothing. The
    replacement and the new `DataVersion` row commit together: queries never see a
    half-loaded registry or data without its version. A node serves one municipality,
    so a bundle for another one is refused unless the change is explicit.

    `reopen` names cohorts ("YYYY-MM") whose data this import corrects: questions about
    them become new (chargeable, to them) even when they are no longer open. Whether
    other cohorts' data changed is reported in the result, never made public.
    """
    # Local time: the node runs at the municipality, and "today" is its calendar day.
    now = now or dt.datetime.now().astimezone()
    if now.tzinfo is None:
        now = now.astimezone()  # a naive time is local time
    _check_reopen(reopen, now.date())
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
        # New persons get their cohort (fixed from now on); every cohort's data a digest.
        changes = cohorts.record(
            conn, parsed.rows, reference_date=now.date(), data_version=version, reopen=reopen
        )
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
        for model in (*REGISTRY_TABLES, PersonCohort):
            conn.exec_driver_sql(f"ANALYZE {model.__tablename__}")
    log.info(
        "bundle_imported",
        data_version=version,
        municipality=parsed.municipality_code,
        row_counts=dict(parsed.row_counts),
    )
    return ImportResult(
        data_version=version,
        row_counts=dict(parsed.row_counts),
        digest=parsed.digest,
        changed_cohorts=changes.changed,
        reopened_cohorts=changes.reopened,
        empty_reopened_cohorts=changes.empty_reopened,
    )


def _check_reopen(reopen: Sequence[str], today: dt.date) -> None:
    """Cohorts to reopen are months no later than the import's own month."""
    problems = []
    for cohort in reopen:
        if not is_month(cohort):
            problems.append(f"--reopen: -: {cohort!r} is not a month as YYYY-MM")
        elif cohort > month_of(today):
            problems.append(
                f"--reopen: -: cohort {cohort} is after this import's month {month_of(today)}; "
                "no person can be in it yet"
            )
    if problems:
        raise BundleError(problems)
