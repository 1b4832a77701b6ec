"""Validate an audit report against its JSON Schema and write report.json and report.html.

report.json is the contract (DESIGN.md §6.3); report.html is the same content for an
oversight board. Both are produced only from a report that validates, so a board never
reads a page built from a malformed result, and both files are replaced atomically so a
scheduled run that crashes midway never leaves a half-written report behind.

The HTML is one self-contained file (inline CSS and SVG, no scripts, no external
resources): it must open offline, be archived as-is and print. Charts are laid out here
(pure arithmetic on the report's numbers) and drawn by the Jinja templates, which run
with autoescape on because every string in a report came from a node or a plan file.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jsonschema import Draft202012Validator

SCHEMA_VERSION = "1.0"
"""The report.schema.json version this module reads and writes."""

_SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
_TEMPLATE = "report.html.j2"


class ReportError(ValueError):
    """A report does not satisfy the schema; `problems` lists every violation with its path."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) in the report; nothing was written"
        super().__init__("\n".join([head, *self.problems]))


# --------------------------------------------------------------------------- validation


@functools.cache
def _schema() -> dict[str, Any]:
    schema = json.loads(_SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


def load_schema() -> dict[str, Any]:
    """Return the committed report JSON Schema (a copy: callers may modify it freely)."""
    return copy.deepcopy(_schema())


def _json_path(parts: Iterable[str | int]) -> str:
    """Render a jsonschema path as `$.findings[0].ci`, the form the problems use."""
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _as_json(report: Mapping[str, Any]) -> dict[str, Any]:
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
                yield f"{_json_path((*path, key))}: interval low {value[0]} exceeds high {value[1]}"
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
                    yield f"{_json_path((section, index, 'id'))}: duplicate id {ident!r}"
                seen.add(ident)


def _problems(report: Mapping[str, Any]) -> list[str]:
    validator = Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: _json_path(e.absolute_path))
    problems = [f"{_json_path(e.absolute_path)}: {e.message}" for e in errors]
    problems += _interval_problems(report, ())
    problems += _duplicate_id_problems(report)
    return problems


def validate_report(report: Mapping[str, Any]) -> None:
    """Raise ReportError listing every schema violation (with its JSON path) in `report`."""
    problems = _problems(_as_json(report))
    if problems:
        raise ReportError(problems)


# --------------------------------------------------------------------------- formatting

_KIND_LABELS = {
    "pass_rate_gap": "Pass rate out of line",
    "employment_gap": "Employment below the region",
    "credential_inflation": "Possible credential inflation",
    "recognition_delay": "Slow recognition decisions",
    "outcome_disparity": "Unequal outcomes between groups",
    "appeal_anomaly": "Unusual appeal outcomes",
    "cross_municipality_duplicates": "Same person certified in several municipalities",
    "assessment_shopping": "Failed in one town, passed in another",
    "revoked_still_recognised": "Revoked certificate still recognised",
}
_KIND_ORDER = {kind: i for i, kind in enumerate(_KIND_LABELS)}
_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
_COUNT_KINDS = frozenset(
    {"cross_municipality_duplicates", "assessment_shopping", "revoked_still_recognised"}
)

_REFUSAL_WORDS = {
    "REQUESTER_NOT_ALLOWED": "this auditor is not on the municipality's list of allowed requesters",
    "TEMPLATE_NOT_ALLOWED": "the municipality's policy does not allow this kind of question",
    "BUDGET_EXHAUSTED": "privacy budget exhausted",
    "INVALID_PARAMETERS": "the question was malformed",
    "VERSION_MISMATCH": "incompatible software versions",
    "DATA_UNAVAILABLE": "no data loaded",
    "RATE_LIMITED": "too many requests in a short time",
}
_NODE_STATUS_WORDS = {
    "answered": "answered",
    "partial": "answered in part",
    "refused": "refused",
    "timed_out": "timed out",
    "unavailable": "unavailable",
}


def _trim(number: float, decimals: int) -> str:
    text = f"{number:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _minus(text: str) -> str:
    """Use the typographic minus sign: a hyphen reads as a dash in running text."""
    return text.replace("-", "\u2212")


def _number(value: float, unit: str) -> str:
    """A value without its unit word: 52 for a share of 0.52, 2,310 for money."""
    if unit == "share":
        return _minus(_trim(value * 100, 1))
    if unit == "days":
        return _minus(_trim(value, 0 if abs(value) >= 10 else 1))
    return _minus(_trim(value, 0 if abs(value) >= 100 else 1))


def format_value(value: float | None, unit: str) -> str:
    """Plain-language value: '52%', '63 days', '2,310', '41'."""
    if value is None:
        return "n/a"
    text = _number(value, unit)
    if unit == "share":
        return f"{text}%"
    if unit == "days":
        return f"{text} days"
    return text


def format_interval(ci: Sequence[float] | None, unit: str) -> str:
    """An interval as '47–57%' or '55 to 71 days' (words where a dash would read as minus)."""
    if not ci:
        return "n/a"
    low, high = (_number(v, unit) for v in ci)
    sep = " to " if (ci[0] < 0 or ci[1] < 0) else "–"
    suffix = {"share": "%", "days": " days"}.get(unit, "")
    return f"{low}{sep}{high}{suffix}"


def format_gap(value: float | None, unit: str) -> str:
    """A signed difference: shares in percentage points, other units in their own."""
    if value is None:
        return "n/a"
    sign = "+" if value > 0 else ""
    text = sign + _number(value, unit)
    if unit == "share":
        return f"{text} points"
    if unit == "days":
        return f"{text} days"
    return text


def format_gap_interval(ci: Sequence[float] | None, unit: str) -> str:
    if not ci:
        return "n/a"
    low, high = (("+" if v > 0 else "") + _number(v, unit) for v in ci)
    suffix = {"share": " points", "days": " days"}.get(unit, "")
    return f"{low} to {high}{suffix}"


def format_tolerance(value: float | None, unit: str) -> str:
    if value is None:
        return "any non-zero count"
    return format_gap(value, unit).lstrip("+")


def format_percent(value: float) -> str:
    """A probability as a percentage with as many decimals as it needs: 95%, 99.865%."""
    return f"{_trim(value * 100, 3)}%"


def format_timestamp(value: str) -> str:
    """'2026-11-26T09:00:00Z' as '26 November 2026, 09:00 UTC'."""
    moment = datetime.fromisoformat(value)
    return f"{moment.day} {moment:%B %Y, %H:%M} UTC"


def format_group(group: str) -> str:
    """'citizenship_group=foreign' as 'citizenship group: foreign'."""
    dimension, _, value = group.partition("=")
    return f"{dimension.replace('_', ' ')}: {value.replace('_', ' ')}"


def subject_label(subject: Mapping[str, Any]) -> str:
    """A subject in words: 'M03, provider P-M03-2', 'M03, citizenship group: foreign'."""
    municipality = subject.get("municipality")
    parts = [municipality if municipality else "whole region"]
    if subject.get("provider_id"):
        parts.append(f"provider {subject['provider_id']}")
    if subject.get("isco_code"):
        parts.append(f"occupation ISCO {subject['isco_code']}")
    if subject.get("group"):
        parts.append(format_group(subject["group"]))
    if subject.get("other_municipality"):
        parts.append(f"with {subject['other_municipality']}")
    return ", ".join(parts)


def node_status_words(node: Mapping[str, Any]) -> str:
    """'refused: privacy budget exhausted', 'timed out', 'answered'."""
    words = _NODE_STATUS_WORDS[node["status"]]
    reason = node.get("reason") or ""
    if reason:
        words = f"{words}: {_REFUSAL_WORDS.get(reason, reason)}"
    return words


# --------------------------------------------------------------------------- charts

_CHART_WIDTH = 720
_LABEL_WIDTH = 190
_FLAG_WIDTH = 80
_ROW_HEIGHT = 26
_TOP = 24
_AXIS_HEIGHT = 40

_LEVEL_TITLES = {
    "municipality": "by municipality",
    "provider": "by training provider",
    "occupation": "by occupation",
    "group": "by population group",
}


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class ChartRow:
    y: float
    label: str
    value_text: str
    interval_text: str
    reference_text: str
    x: float
    low_x: float
    high_x: float
    ref_x: float | None
    ref_low_x: float | None
    ref_high_x: float | None
    finding_ids: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        return bool(self.finding_ids)


@dataclass(frozen=True)
class Chart:
    """Geometry of one dot-and-whisker chart, in SVG user units (the viewBox)."""

    id: str
    title: str
    description: str
    unit: str
    axis_label: str
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    ticks: tuple[Tick, ...]
    rows: tuple[ChartRow, ...]
    shared_reference: tuple[float, float, float] | None
    """(x, low_x, high_x) when every row has the same reference: drawn once, full height."""


def _level(subject: Mapping[str, Any]) -> str:
    if subject.get("group"):
        return "group"
    if subject.get("provider_id"):
        return "provider"
    if subject.get("isco_code"):
        return "occupation"
    return "municipality"


def _subject_key(subject: Mapping[str, Any]) -> tuple[Any, ...]:
    keys = ("municipality", "provider_id", "isco_code", "group", "other_municipality")
    return tuple(subject.get(k) for k in keys)


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / target
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if multiple * magnitude >= raw:
            return multiple * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def _domain(values: Sequence[float], unit: str) -> tuple[float, float, float]:
    """Axis range and tick step covering every value, on round numbers."""
    low, high = min(values), max(values)
    if math.isclose(low, high):
        pad = abs(low) * 0.1 or (0.05 if unit == "share" else 1.0)
        low, high = low - pad, high + pad
    step = _nice_step(high - low)
    low = math.floor(low / step + 1e-9) * step
    high = math.ceil(high / step - 1e-9) * step
    if unit == "share":
        low, high = max(low, 0.0), min(high, 1.0)
    elif unit != "days" and min(values) >= 0:
        low = max(low, 0.0)
    return low, high, step


def _tick_label(value: float, unit: str) -> str:
    if unit == "share":
        return f"{_trim(value * 100, 1)}%"
    return _minus(_trim(value, 1))


_AXIS_LABELS = {
    "share": "percentage of the people concerned",
    "days": "days",
    "currency": "amount per month",
    "count": "number of persons",
}


def _chart(
    *,
    chart_id: str,
    label: str,
    level: str,
    unit: str,
    metrics: Sequence[Mapping[str, Any]],
    flags: Mapping[tuple[Any, ...], tuple[str, ...]],
    confidence: float,
) -> Chart:
    values: list[float] = []
    for metric in metrics:
        values += [metric["estimate"], *metric["ci"]]
        if metric["reference"]:
            values += [metric["reference"]["estimate"], *metric["reference"]["ci"]]
    low, high, step = _domain(values, unit)
    # Room for the longest row label (about 7 px a character at the chart's font size).
    longest = max((len(subject_label(m["subject"])) for m in metrics), default=0)
    left = max(_LABEL_WIDTH, 16 + 7 * longest)
    width = _CHART_WIDTH + left - _LABEL_WIDTH
    right = width - _FLAG_WIDTH

    def sx(value: float) -> float:
        return round(left + (value - low) / (high - low) * (right - left), 1)

    rows = []
    for index, metric in enumerate(metrics):
        ref = metric["reference"]
        rows.append(
            ChartRow(
                y=_TOP + index * _ROW_HEIGHT + _ROW_HEIGHT / 2,
                label=subject_label(metric["subject"]),
                value_text=format_value(metric["estimate"], unit),
                interval_text=format_interval(metric["ci"], unit),
                reference_text=(
                    f"{format_value(ref['estimate'], unit)} ({format_interval(ref['ci'], unit)})"
                    if ref
                    else "none"
                ),
                x=sx(metric["estimate"]),
                low_x=sx(metric["ci"][0]),
                high_x=sx(metric["ci"][1]),
                ref_x=sx(ref["estimate"]) if ref else None,
                ref_low_x=sx(ref["ci"][0]) if ref else None,
                ref_high_x=sx(ref["ci"][1]) if ref else None,
                finding_ids=flags.get((metric["metric"], *_subject_key(metric["subject"])), ()),
            )
        )
    refs = {(r.ref_x, r.ref_low_x, r.ref_high_x) for r in rows}
    shared = next(iter(refs)) if len(refs) == 1 and None not in next(iter(refs)) else None
    ticks = []
    count = round((high - low) / step)
    for i in range(count + 1):
        value = low + i * step
        ticks.append(Tick(sx(value), _tick_label(value, unit)))
    flagged = [r.label for r in rows if r.flagged]
    level_title = _LEVEL_TITLES[level]
    description = (
        f"{label}, {level_title}: each dot is an estimate, the line through it its "
        f"{format_percent(confidence)} interval; the grey band is the comparison value. "
        + (f"Flagged: {'; '.join(flagged)}." if flagged else "No subject flagged.")
    )
    plot_bottom = _TOP + len(rows) * _ROW_HEIGHT
    return Chart(
        id=chart_id,
        title=f"{label}, {level_title}",
        description=description,
        unit=unit,
        axis_label=_AXIS_LABELS[unit],
        width=width,
        height=plot_bottom + _AXIS_HEIGHT,
        plot_left=left,
        plot_right=right,
        plot_top=_TOP - 8,
        plot_bottom=plot_bottom,
        ticks=tuple(ticks),
        rows=tuple(rows),
        shared_reference=shared,
    )


def build_charts(report: Mapping[str, Any]) -> list[Chart]:
    """One chart per metric and subject level (municipality, provider, occupation, group).

    Metrics keep the order of their first appearance in the report; rows within a
    chart are sorted by subject so a municipality's providers sit together.
    """
    flags: dict[tuple[Any, ...], tuple[str, ...]] = {}
    for finding in report["findings"]:
        key = (finding["metric"], *_subject_key(finding["subject"]))
        flags[key] = (*flags.get(key, ()), finding["id"])
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for metric in report["metrics"]:
        groups.setdefault((metric["metric"], _level(metric["subject"])), []).append(metric)
    level_order = list(_LEVEL_TITLES)
    ordered = sorted(
        groups.items(),
        key=lambda item: (
            [m["metric"] for m in report["metrics"]].index(item[0][0]),
            level_order.index(item[0][1]),
        ),
    )
    charts = []
    for index, ((_, level), metrics) in enumerate(ordered, start=1):
        rows = sorted(metrics, key=lambda m: tuple(str(v) for v in _subject_key(m["subject"])))
        charts.append(
            _chart(
                chart_id=f"chart-{index}",
                label=rows[0]["label"],
                level=level,
                unit=rows[0]["unit"],
                metrics=rows,
                flags=flags,
                confidence=report["audit"]["confidence"],
            )
        )
    return charts


# --------------------------------------------------------------------------- page


def _finding_unit(finding: Mapping[str, Any], units: Mapping[str, str]) -> str:
    """A finding's unit is its metric's; duplicates-style kinds count persons."""
    if finding["metric"] in units:
        return units[finding["metric"]]
    return "count" if finding["kind"] in _COUNT_KINDS else "share"


def _sorted_findings(findings: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(
        findings,
        key=lambda f: (_SEVERITY_ORDER[f["severity"]], _KIND_ORDER[f["kind"]], f["id"]),
    )


@functools.cache
def _environment() -> jinja2.Environment:
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
        gap=format_gap,
        gap_interval=format_gap_interval,
        tolerance=format_tolerance,
        percent=format_percent,
        timestamp=format_timestamp,
        subject=subject_label,
        node_status=node_status_words,
    )
    env.globals.update(kind_labels=_KIND_LABELS)
    return env


def _render(report: Mapping[str, Any]) -> str:
    units = {m["metric"]: m["unit"] for m in report["metrics"]}
    findings = [
        {**f, "unit": _finding_unit(f, units)} for f in _sorted_findings(report["findings"])
    ]
    nodes = report["coverage"]["nodes"]
    missing = [n["node"] for n in nodes if n["status"] != "answered"]
    template = _environment().get_template(_TEMPLATE)
    return template.render(
        report=report,
        audit=report["audit"],
        findings=findings,
        charts=build_charts(report),
        missing_nodes=missing,
        untested=sum(1 for m in report["metrics"] if not m["tested"]),
    )


def render_html(report: Mapping[str, Any]) -> str:
    """The self-contained report.html for an oversight board; validates first.

    Rendering assumes the schema's shape; an invalid report would fail deep in the
    template or, worse, render a misleading page, so it is refused up front.
    """
    plain = _as_json(report)
    problems = _problems(plain)
    if problems:
        raise ReportError(problems)
    return _render(plain)


# --------------------------------------------------------------------------- files


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


def write_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Validate, then atomically write out_dir/report.json and out_dir/report.html.

    Both texts are produced before anything touches the disk, so an invalid report
    or a rendering error writes nothing; each file then appears whole or not at all
    (temp file in the same directory + os.replace). Returns (json_path, html_path).
    """
    plain = _as_json(report)
    problems = _problems(plain)
    if problems:
        raise ReportError(problems)
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
