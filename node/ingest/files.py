"""One CSV file of a bundle: encoding, header, records, each value through its parser.

Reading is where hostile input arrives (other encodings, NUL bytes, broken quoting,
huge fields), so every way a file can be unreadable becomes a listed problem.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedaudit.node.ingest.bundle_schema import (
    ColumnSpec,
    FileSpec,
)
from fedaudit.node.ingest.fields import PARSERS
from fedaudit.node.ingest.problems import (
    INVALID,
    Context,
    FieldError,
    ParsedTable,
    Row,
)

ColumnPlan = list[tuple[str, int | None, Callable[[ColumnSpec, str, dt.date], Any], ColumnSpec]]


def parse_record(ctx: Context, file: str, line: int, plan: ColumnPlan, record: list[str]) -> Row:
    """One CSV record as typed values; bad values become INVALID after recording why.

    This loop runs once per field of a million-row export, so it avoids per-field
    lookups (the plan carries each column's parser and position).
    """
    row: Row = {}
    max_chars = ctx.limits.max_field_chars
    for name, pos, parse, col in plan:
        if pos is None:  # optional column absent from the header; required ones were reported
            row[name] = INVALID if col.required else None
            continue
        raw = record[pos]
        if not raw:
            if col.required:
                ctx.problems.add(file, line, name, "required value is missing")
                row[name] = INVALID
            else:
                row[name] = None
        elif len(raw) > max_chars:
            msg = f"value of {len(raw)} characters exceeds {max_chars}"
            ctx.problems.add(file, line, name, msg)
            row[name] = INVALID
        else:
            try:
                row[name] = parse(col, raw, ctx.today)
            except FieldError as exc:
                ctx.problems.add(file, line, name, str(exc))
                row[name] = INVALID
    return row


# --- files --------------------------------------------------------------------------------


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def read_text(path: Path, spec: FileSpec, ctx: Context, digest: Any) -> str | None:
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


def check_header(spec: FileSpec, header: list[str], ctx: Context) -> dict[str, int] | None:
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


def parse_file(spec: FileSpec, text_: str, ctx: Context) -> ParsedTable:
    name = spec.filename
    add = ctx.problems.add
    table = ParsedTable()
    reader = csv.reader(io.StringIO(text_, newline=""), strict=True)
    line = 1
    try:
        header = next(reader, None)
        if header is None:
            add(name, 1, "-", "file is empty; expected a header row")
            table.by_key = None
            return table
        positions = check_header(spec, header, ctx)
        if positions is None:
            table.by_key = None
            return table
        if spec.key not in positions:
            table.by_key = None
        plan: ColumnPlan = [
            (col.name, positions.get(col.name), PARSERS[col.kind], col) for col in spec.columns
        ]
        width = len(header)
        for record in reader:
            line += 1
            if not any(record):  # blank line or a row of empty cells
                continue
            if len(record) != width:
                add(name, line, "-", f"row has {len(record)} fields; the header has {width}")
                continue
            table.rows.append((line, parse_record(ctx, name, line, plan, record)))
    except csv.Error as exc:
        add(name, line + 1, "-", f"broken CSV ({exc}); the rest of the file was not checked")
        table.by_key = None  # a truncated table would make every later reference look dangling
    return table
