"""Lay out the dot-and-whisker charts: one per metric and subject level, in percent of the plot.

Positions are fractions of the plot's width (0-100), so the template draws each chart
with HTML and CSS: the text stays at its own size at any screen width (an SVG scaled
down to a phone shrinks its labels to a few pixels) and the page never scrolls sideways.

Charts of tested metrics (and any with a finding) belong in the body of the report;
charts of descriptive metrics only (histogram buckets, medians, volumes) go to the
appendix, as tables, so a reader sees the few charts that carry the audit's verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedaudit.audit_reports.numbers import (
    clamp,
    format_estimate,
    format_interval,
    format_percent,
    format_value,
    minus,
    number,
    was_clamped,
)
from fedaudit.audit_reports.wording import subject_label

LEVEL_TITLES = {
    "municipality": "by municipality",
    "provider": "by training provider",
    "occupation": "by occupation",
    "group": "by population group",
}
_AXIS_LABELS = {
    "share": "percentage of the people concerned",
    "days": "days",
    "currency": "amount per month",
    "count": "number of persons",
}


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class ChartRow:
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
    tested: bool

    @property
    def flagged(self) -> bool:
        return bool(self.finding_ids)


@dataclass(frozen=True)
class Chart:
    """One dot-and-whisker chart; every x is a percentage of the plot width."""

    id: str
    metric: str
    title: str
    level: str
    description: str
    unit: str
    axis_label: str
    ticks: tuple[Tick, ...]
    rows: tuple[ChartRow, ...]
    main: bool
    """True when it belongs in the body (a tested or flagged row); else the appendix."""
    clamped: bool
    """True when a raw count below zero is drawn at zero."""
    interval_words: str
    """What the whiskers are, e.g. 'the 99.98% interval each test used'."""

    @property
    def flagged(self) -> tuple[str, ...]:
        return tuple(i for r in self.rows for i in r.finding_ids)


def level_of(subject: Mapping[str, Any]) -> str:
    if subject.get("group"):
        return "group"
    if subject.get("provider_id"):
        return "provider"
    if subject.get("isco_code"):
        return "occupation"
    return "municipality"


def subject_key(subject: Mapping[str, Any]) -> tuple[Any, ...]:
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
    """Axis range and tick step covering every (displayed) value, on round numbers."""
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
        return f"{number(value, unit, 1)}%"
    return minus(number(value, unit, 0 if abs(value) >= 10 or unit == "count" else 1))


def interval_words(metrics: Sequence[Mapping[str, Any]], report: Mapping[str, Any]) -> str:
    """What a chart's whiskers are, stated once and truthfully.

    A metric may carry its own `ci_level`; otherwise a tested metric's interval is the one
    its test used (wide enough for the audit-wide confidence) and an untested one is
    descriptive, not adjusted for the number of comparisons.
    """
    audit = report["audit"]
    overall = format_percent(audit["confidence"])
    levels = {m.get("ci_level") for m in metrics}
    tested = {bool(m.get("tested")) for m in metrics}
    if None not in levels and len(levels) == 1:
        level = format_percent(next(iter(levels)))
        if tested == {True}:
            return f"its {level} interval, the one its test used (audit-wide {overall})"
        return f"its {level} interval"
    if tested == {True}:
        return (
            f"the interval its test used, wide enough that all tests together hold at "
            f"{overall} confidence"
        )
    if tested == {False}:
        return "its interval (descriptive: not adjusted for the number of comparisons)"
    return (
        f"the interval its test used (solid dot; all tests together hold at {overall}); "
        "a hollow dot is descriptive, not tested"
    )


def _chart(
    *,
    chart_id: str,
    level: str,
    metrics: Sequence[Mapping[str, Any]],
    flags: Mapping[tuple[Any, ...], tuple[str, ...]],
    report: Mapping[str, Any],
) -> Chart:
    unit = metrics[0]["unit"]
    label = metrics[0]["label"]
    values: list[float] = []
    raw: list[float] = []
    for metric in metrics:
        raw += [metric["estimate"], *metric["ci"]]
        if metric.get("reference"):
            raw += [metric["reference"]["estimate"], *metric["reference"]["ci"]]
    values = [clamp(v, unit) for v in raw]
    low, high, step = _domain(values, unit)

    def sx(value: float) -> float:
        shown = min(max(clamp(value, unit), low), high)
        return round((shown - low) / (high - low) * 100, 2)

    rows = []
    for metric in metrics:
        ref = metric.get("reference")
        finding_ids = flags.get((metric["metric"], *subject_key(metric["subject"])), ())
        rows.append(
            ChartRow(
                label=subject_label(metric["subject"]),
                value_text=format_value(metric["estimate"], unit, metric["ci"]),
                interval_text=format_interval(metric["ci"], unit),
                reference_text=format_estimate(ref["estimate"], ref["ci"], unit) if ref else "—",
                x=sx(metric["estimate"]),
                low_x=sx(metric["ci"][0]),
                high_x=sx(metric["ci"][1]),
                ref_x=sx(ref["estimate"]) if ref else None,
                ref_low_x=sx(ref["ci"][0]) if ref else None,
                ref_high_x=sx(ref["ci"][1]) if ref else None,
                finding_ids=finding_ids,
                tested=bool(metric.get("tested")),
            )
        )
    count = round((high - low) / step)
    ticks = tuple(
        Tick(sx(low + i * step), _tick_label(low + i * step, unit)) for i in range(count + 1)
    )
    flagged = [r.label for r in rows if r.flagged]
    title = f"{label}, {LEVEL_TITLES[level]}"
    words = interval_words(metrics, report)
    description = (
        f"{title}: each dot is an estimate, the line through it {words}; the grey band is "
        "what it is compared with. "
        + (f"Flagged: {'; '.join(flagged)}." if flagged else "No subject flagged.")
    )
    return Chart(
        id=chart_id,
        metric=metrics[0]["metric"],
        title=title,
        level=level,
        description=description,
        unit=unit,
        axis_label=_AXIS_LABELS[unit],
        ticks=ticks,
        rows=tuple(rows),
        main=any(r.tested or r.flagged for r in rows),
        clamped=was_clamped(raw, unit),
        interval_words=words,
    )


def finding_flags(report: Mapping[str, Any]) -> dict[tuple[Any, ...], tuple[str, ...]]:
    """(metric, subject...) -> ids of the findings about that estimate."""
    flags: dict[tuple[Any, ...], tuple[str, ...]] = {}
    for finding in report["findings"]:
        key = (finding["metric"], *subject_key(finding["subject"]))
        flags[key] = (*flags.get(key, ()), finding["id"])
    return flags


def build_charts(report: Mapping[str, Any]) -> list[Chart]:
    """One chart per metric and subject level (municipality, provider, occupation, group).

    Metrics keep the order of their first appearance in the report; rows within a
    chart are sorted by subject so a municipality's providers sit together.
    """
    flags = finding_flags(report)
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    first_seen: dict[str, int] = {}
    for index, metric in enumerate(report["metrics"]):
        first_seen.setdefault(metric["metric"], index)
        groups.setdefault((metric["metric"], level_of(metric["subject"])), []).append(metric)
    level_order = list(LEVEL_TITLES)
    ordered = sorted(
        groups.items(), key=lambda item: (first_seen[item[0][0]], level_order.index(item[0][1]))
    )
    charts = []
    for index, ((_, level), metrics) in enumerate(ordered, start=1):
        rows = sorted(metrics, key=lambda m: tuple(str(v) for v in subject_key(m["subject"])))
        charts.append(
            _chart(chart_id=f"chart-{index}", level=level, metrics=rows, flags=flags, report=report)
        )
    return charts


__all__ = ["Chart", "ChartRow", "Tick", "build_charts", "finding_flags", "interval_words"]
