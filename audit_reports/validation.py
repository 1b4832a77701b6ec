"""Check a report against its committed JSON Schema, and the rules the schema cannot say.

report.json is the contract (DESIGN.md §6.3): the HTML page, the archive index and
alerts are all built from it, so nothing is rendered or written from a report that does
not validate. Every violation is listed at once, each with its JSON path.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_VERSION = "1.0"
"""The report.schema.json version this package reads and writes."""

_SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


class ReportError(ValueError):
    """A report does not satisfy the schema; `problems` lists every violation with its path."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) in the report; nothing was written"
        super().__init__("\n".join([head, *self.problems]))


@functools.cache
def _schema() -> dict[str, Any]:
    schema = json.loads(_SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


def load_schema() -> dict[str, Any]:
    """Return the committed report JSON Schema (a copy: callers may modify it freely)."""
    return copy.deepcopy(_schema())


def json_path(parts: Iterable[str | int]) -> str:
    """Render a jsonschema path as `$.findings[0].ci`, the form the problems use."""
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def as_json(report: Mapping[str, Any]) -> dict[str, Any]:
    """Round-trip through JSON so we validate exactly what report.json will contain.

    This turns tuples into lists and rejects NaN, infinities and non-JSON values, which
    the standard library would otherwise write as invalid JSON or fail on halfway.
    """
    try:
        return json.loads(json.dumps(report, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ReportError([f"$: not representable as strict JSON: {exc}"]) from exc


def _interval_problems(node: Any, path: tuple[str | int, ...]) -> Iterable[str]:
    """Intervals must be ordered (low <= high); JSON Schema cannot say so."""
    if isinstance(node, dict):
        for key, value in node.items():
            is_interval = (
                key in ("ci", "gap_ci")
                and isinstance(value, list)
                and len(value) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            )
            if is_interval and value[0] > value[1]:
                yield f"{json_path((*path, key))}: interval low {value[0]} exceeds high {value[1]}"
            yield from _interval_problems(value, (*path, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _interval_problems(item, (*path, index))


def _duplicate_id_problems(report: Mapping[str, Any]) -> Iterable[str]:
    """Finding and metric ids are references (charts, alerts): they must be unique."""
    for section in ("findings", "metrics"):
        items = report.get(section)
        if not isinstance(items, list):
            continue
        seen: set[str] = set()
        for index, item in enumerate(items):
            ident = item.get("id") if isinstance(item, dict) else None
            if isinstance(ident, str):
                if ident in seen:
                    yield f"{json_path((section, index, 'id'))}: duplicate id {ident!r}"
                seen.add(ident)


def problems(report: Mapping[str, Any]) -> list[str]:
    """Every violation in an already JSON-plain report (see `as_json`), with its path."""
    validator = Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: json_path(e.absolute_path))
    found = [f"{json_path(e.absolute_path)}: {e.message}" for e in errors]
    found += _interval_problems(report, ())
    found += _duplicate_id_problems(report)
    return found


def validate_report(report: Mapping[str, Any]) -> None:
    """Raise ReportError listing every schema violation (with its JSON path) in `report`."""
    found = problems(as_json(report))
    if found:
        raise ReportError(found)


def validated(report: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-plain copy of `report`, or ReportError listing every violation."""
    plain = as_json(report)
    found = problems(plain)
    if found:
        raise ReportError(found)
    return plain


__all__ = [
    "SCHEMA_VERSION",
    "ReportError",
    "as_json",
    "json_path",
    "load_schema",
    "problems",
    "validate_report",
    "validated",
]
