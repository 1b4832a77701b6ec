"""Write report.json and report.html for an audit, both from a report that validates.

report.json is the contract (DESIGN.md §6.3); report.html is the same content for an
oversight board. Both are produced only from a report that validates, so a board never
reads a page built from a malformed result, and both files are replaced atomically so a
scheduled run that crashes midway never leaves a half-written report behind.

The HTML is one self-contained file (inline CSS, no scripts, no external resources): it
must open offline, be archived as-is and print. The work is split by job: `validation`
(schema), `numbers` (rounding, clamping, units), `wording` (labels, next steps),
`charts` (chart layout), `page` (what each section shows); this module renders the
Jinja templates (autoescape on: every string in a report came from a node or a plan
file) and writes the files. Names used elsewhere are re-exported here.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from fedaudit.audit_reports.charts import Chart, ChartRow, Tick, build_charts
from fedaudit.audit_reports.numbers import (
    format_amount,
    format_estimate,
    format_gap,
    format_gap_interval,
    format_interval,
    format_percent,
    format_probability,
    format_tolerance,
    format_value,
)
from fedaudit.audit_reports.page import page_context
from fedaudit.audit_reports.validation import (
    SCHEMA_VERSION,
    ReportError,
    load_schema,
    validate_report,
    validated,
)
from fedaudit.audit_reports.wording import (
    KIND_LABELS,
    format_group,
    format_timestamp,
    node_status_words,
    subject_label,
)

_TEMPLATE = "report.html.j2"


@functools.cache
def environment() -> jinja2.Environment:
    """The Jinja environment for the report and the archive index (autoescape, strict)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fedaudit.audit_reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        value=format_value,
        interval=format_interval,
        estimate=format_estimate,
        gap=format_gap,
        gap_interval=format_gap_interval,
        tolerance=format_tolerance,
        percent=format_percent,
        amount=format_amount,
        probability=format_probability,
        timestamp=format_timestamp,
        subject=subject_label,
        node_status=node_status_words,
    )
    env.globals.update(kind_labels=KIND_LABELS)
    return env


def _render(report: Mapping[str, Any]) -> str:
    return environment().get_template(_TEMPLATE).render(**page_context(report))


def render_html(report: Mapping[str, Any]) -> str:
    """The self-contained report.html for an oversight board; validates first.

    Rendering assumes the schema's shape; an invalid report would fail deep in the
    template or, worse, render a misleading page, so it is refused up front.
    """
    return _render(validated(report))


def _write_temp(directory: Path, name: str, text: str) -> Path:
    """Write `text` to a fresh temp file beside its target, flushed to disk."""
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)  # mkstemp makes 0600; a report is meant to be read
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return Path(temp)


def write_text_atomically(target: Path, text: str) -> None:
    """Replace `target` with `text` whole or not at all (temp file + os.replace)."""
    temp = _write_temp(target.parent, target.name, text)
    try:
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def write_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Validate, then atomically write out_dir/report.json and out_dir/report.html.

    Both texts are produced before anything touches the disk, so an invalid report
    or a rendering error writes nothing; each file then appears whole or not at all
    (temp file in the same directory + os.replace). Returns (json_path, html_path).
    """
    plain = validated(report)
    html = _render(plain)
    text = json.dumps(plain, ensure_ascii=False, indent=2, allow_nan=False) + "\n"

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = (out_dir / "report.json", out_dir / "report.html")
    temps: list[Path] = []
    try:
        for target, content in zip(targets, (text, html), strict=True):
            temps.append(_write_temp(out_dir, target.name, content))
        for temp, target in zip(temps, targets, strict=True):
            os.replace(temp, target)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    return targets


__all__ = [
    "SCHEMA_VERSION",
    "Chart",
    "ChartRow",
    "ReportError",
    "Tick",
    "build_charts",
    "environment",
    "format_gap",
    "format_gap_interval",
    "format_group",
    "format_interval",
    "format_percent",
    "format_value",
    "load_schema",
    "node_status_words",
    "render_html",
    "subject_label",
    "validate_report",
    "write_report",
    "write_text_atomically",
]
