"""What bundle validation carries from file to file: limits, problems found, parsed tables.

Every stage of validation (values, files, cross-file rules) adds to one problem list
and reads the tables parsed so far, so these few types are shared by all of them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final


@dataclass(frozen=True)
class BundleLimits:
    """Guards against absurd input; the defaults are far above any real registry export."""

    max_file_bytes: int = 2 * 1024**3
    max_field_chars: int = 10_000
    max_listed_problems: int = 200


# --- problem collection -------------------------------------------------------------------


class Problems:
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


class FieldError(ValueError):
    """A single value is wrong; the message says why, without the file and line."""


class Invalid:
    """Marks a value that failed to parse, so rules that need it are skipped."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Final = Invalid()

Row = dict[str, Any]


@dataclass
class ParsedTable:
    """A parsed file: its rows (with line numbers) and its identifiers."""

    rows: list[tuple[int, Row]] = field(default_factory=list)
    by_key: dict[str, Row] | None = field(default_factory=dict)  # None: cannot check FKs


@dataclass
class Context:
    today: dt.date
    limits: BundleLimits
    problems: Problems
    tables: dict[str, ParsedTable] = field(default_factory=dict)
