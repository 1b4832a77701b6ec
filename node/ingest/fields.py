"""Single values of a bundle: one parser per column kind of the data contract.

A parser turns one raw CSV field into a typed value or raises `FieldError` with a
message that never echoes a personal value (problem lists reach terminals and logs).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from fedaudit.node.ingest.bundle_schema import (
    ColumnSpec,
    Kind,
)
from fedaudit.node.ingest.problems import (
    FieldError,
)

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
        raise FieldError("expected a date as YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise FieldError("not a real calendar date") from None


def _parse_id(col: ColumnSpec, raw: str, _today: dt.date) -> str:
    if raw != raw.strip():
        raise FieldError(f"has leading or trailing spaces, {_got(col, raw)}")
    if col.max_length is not None and len(raw) > col.max_length:
        raise FieldError(f"is {len(raw)} characters long; at most {col.max_length} allowed")
    return raw


def _parse_text(col: ColumnSpec, raw: str, _today: dt.date) -> str:
    if not raw.strip():
        raise FieldError("contains only spaces")
    if col.max_length is not None and len(raw) > col.max_length:
        raise FieldError(f"is {len(raw)} characters long; at most {col.max_length} allowed")
    return raw


def _parse_code(col: ColumnSpec, raw: str, _today: dt.date) -> str:
    assert col.pattern is not None
    if not col.pattern.fullmatch(raw):
        raise FieldError(f"expected {col.pattern_hint}, {_got(col, raw)}")
    return raw


def _parse_enum(col: ColumnSpec, raw: str, _today: dt.date) -> str:
    if raw in col.choices:
        return raw
    hint = " (check letter case and spaces)" if raw.strip().lower() in col.choices else ""
    raise FieldError(f"expected one of {' | '.join(col.choices)}, {_got(col, raw)}{hint}")


def _parse_date(col: ColumnSpec, raw: str, today: dt.date) -> dt.date:
    try:
        value = _calendar_date(raw)
    except FieldError as exc:
        raise FieldError(f"{exc}, {_got(col, raw)}") from None
    if value > today:
        raise FieldError(f"date is in the future (after {today.isoformat()}), {_got(col, raw)}")
    return value


def _parse_int(col: ColumnSpec, raw: str, _today: dt.date) -> int:
    if not _INT_SHAPE.fullmatch(raw):
        raise FieldError(f"expected a whole number, {_got(col, raw)}")
    value = int(raw)
    if col.allowed_ints and value not in col.allowed_ints:
        allowed = " or ".join(str(v) for v in col.allowed_ints)
        raise FieldError(f"must be {allowed}, {_got(col, raw)}")
    if col.min_value is not None and value < col.min_value:
        raise FieldError(f"must be at least {col.min_value}, {_got(col, raw)}")
    if col.max_value is not None and value > col.max_value:
        raise FieldError(f"must be at most {col.max_value}, {_got(col, raw)}")
    return value


def _parse_decimal(col: ColumnSpec, raw: str, _today: dt.date) -> int:
    if not _DECIMAL_SHAPE.fullmatch(raw):
        hint = "; use '.' as the decimal separator" if _DECIMAL_COMMA.fullmatch(raw) else ""
        raise FieldError(f"expected a decimal number such as 1234.50, {_got(col, raw)}{hint}")
    value = Decimal(raw)
    if value < 0:
        raise FieldError(f"must not be negative, {_got(col, raw)}")
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _parse_bool(col: ColumnSpec, raw: str, _today: dt.date) -> bool:
    if raw == "true":
        return True
    if raw == "false":
        return False
    raise FieldError(f"expected 'true' or 'false', {_got(col, raw)}")


PARSERS: Mapping[Kind, Callable[[ColumnSpec, str, dt.date], Any]] = {
    Kind.ID: _parse_id,
    Kind.TEXT: _parse_text,
    Kind.CODE: _parse_code,
    Kind.ENUM: _parse_enum,
    Kind.DATE: _parse_date,
    Kind.INT: _parse_int,
    Kind.DECIMAL: _parse_decimal,
    Kind.BOOL: _parse_bool,
}
