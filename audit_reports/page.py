"""Assemble what report.html shows, section by section, from a validated report.

The template only lays out; the decisions a board relies on are made here and tested:
findings most severe first, each with one plain sentence, its interval and a suggested
next step; one confidence statement for the whole audit; a status that never reads as
"no gap found" when the audit did not cover everything; each node's budget in words;
counts shown no lower than zero; descriptive estimates moved to an appendix.

Optional fields a newer producer may add (`not_assessable`, a finding's `next_step`,
a metric's `ci_level`, a node's `requester_rho_cap`) are used when present and never
required, so older reports in an archive still render.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedaudit.audit_reports.charts import Chart, build_charts
from fedaudit.audit_reports.numbers import (
    format_estimate,
    format_gap,
    format_gap_interval,
    format_interval,
    format_percent,
    format_tolerance,
    format_value,
    was_clamped,
)
from fedaudit.audit_reports.wording import (
    COUNT_KINDS,
    KIND_LABELS,
    budget_sentence,
    epsilon_words,
    metric_words,
    next_step,
    severity_key,
    subject_label,
)


@dataclass(frozen=True)
class FindingView:
    id: str
    kind: str
    kind_label: str
    severity: str
    who: str
    summary: str
    next_step: str
    measured_label: str
    measured: str
    compared_label: str
    compared: str
    difference: str
    tolerance: str


@dataclass(frozen=True)
class Unassessed:
    what: str
    where: str
    reason: str


@dataclass(frozen=True)
class CountRow:
    label: str
    estimate: str
    interval: str
    flagged: tuple[str, ...]


@dataclass(frozen=True)
class Section:
    id: str
    title: str


def _unit(finding: Mapping[str, Any], units: Mapping[str, str]) -> str:
    """A finding's unit is its metric's; duplicates-style kinds count persons."""
    if finding["metric"] in units:
        return units[finding["metric"]]
    return "count" if finding["kind"] in COUNT_KINDS else "share"


def _points(value: float, ci: Sequence[float] | None, unit: str) -> str:
    """A difference of shares with its interval: '+40 points (31 to 49)'."""
    text = format_gap(value, unit, ci)
    return f"{text} ({format_gap_interval(ci, unit)})" if ci else text


def finding_views(report: Mapping[str, Any]) -> list[FindingView]:
    """Every finding, most severe first, with its numbers rounded to what they support."""
    units = {m["metric"]: m["unit"] for m in report["metrics"]}
    labels = {m["metric"]: m["label"] for m in report["metrics"]}
    views = []
    for f in sorted(report["findings"], key=severity_key):
        unit = _unit(f, units)
        # A finding on a derived measure (e.g. pass rate minus employment rate) is itself a
        # difference of shares: shown in points, not as a percentage of people.
        derived = f["metric"] not in units and unit == "share"
        show = _points if derived else format_estimate
        ref = f["reference"]
        compared = ref["description"]
        if ref.get("estimate") is not None:
            compared += f": {show(ref['estimate'], ref.get('ci'), unit)}"
        gap = f.get("gap")
        difference = ""
        if gap is not None:
            difference = format_gap(gap, unit, f.get("gap_ci"))
            if f.get("gap_ci"):
                difference += f" (interval {format_gap_interval(f['gap_ci'], unit)})"
        views.append(
            FindingView(
                id=f["id"],
                kind=f["kind"],
                kind_label=KIND_LABELS.get(f["kind"], f["kind"].replace("_", " ")),
                severity=f["severity"],
                who=subject_label(f["subject"]),
                summary=f["summary"],
                next_step=next_step(f),
                measured_label=metric_words(f["metric"], labels),
                measured=show(f["estimate"], f["ci"], unit),
                compared_label="Compared with",
                compared=compared,
                difference=difference,
                tolerance=format_tolerance(f.get("tolerance"), unit),
            )
        )
    return views


def unassessed(report: Mapping[str, Any]) -> list[Unassessed]:
    """Checks or subjects the audit could not assess (optional `not_assessable`), tolerant
    of the item's exact shape: a check or kind, a subject or a place, and a reason."""
    items = report.get("not_assessable") or []
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        what = item.get("check") or item.get("kind") or item.get("metric") or "check"
        what = KIND_LABELS.get(str(what), str(what).replace("_", " "))
        where = item.get("where")
        if not where and isinstance(item.get("subject"), Mapping):
            where = subject_label(item["subject"])
        out.append(Unassessed(str(what), str(where or "whole region"), str(item.get("reason", ""))))
    return out


def confidence_statement(report: Mapping[str, Any]) -> str:
    """The report's one statement of confidence, for the audit as a whole."""
    audit = report["audit"]
    ec = audit.get("error_control") or {}
    overall = format_percent(audit["confidence"])
    alpha = format_percent(1 - audit["confidence"])
    if not ec.get("tests"):
        return (
            f"No comparison could be tested in this audit, so it states no finding at any "
            f"confidence (planned: {overall})."
        )
    return (
        f"Confidence {overall} for the audit as a whole: the chance that even one finding "
        f"in this report is a false alarm (privacy noise or chance rather than a real gap) "
        f"is at most {alpha}, across all {ec['tests']} comparisons together."
    )


def _pair_flags(report: Mapping[str, Any]) -> dict[tuple[str, ...], tuple[str, ...]]:
    flags: dict[tuple[str, ...], tuple[str, ...]] = {}
    for f in report["findings"]:
        if f["kind"] not in COUNT_KINDS:
            continue
        s = f["subject"]
        key: tuple[str, ...]
        if s.get("municipality") and s.get("other_municipality"):
            key = ("pair", *sorted((s["municipality"], s["other_municipality"])))
        elif s.get("isco_code") and not s.get("municipality"):
            key = ("isco", s["isco_code"])
        else:
            continue
        flags[key] = (*flags.get(key, ()), f["id"])
    return flags


def duplicate_rows(report: Mapping[str, Any]) -> dict[str, Any]:
    """The duplicate counts, clamped at zero for display, flagged where a finding names them."""
    d = report["duplicates"]
    flags = _pair_flags(report)
    values = [r["estimate"] for r in d.get("per_occupation", [])]
    values += [r["estimate"] for r in d.get("overlap_histogram", [])]
    values += [r["estimate"] for r in d.get("pairwise", [])]
    for row in (*d.get("per_occupation", []), *d.get("pairwise", [])):
        values += row["ci"]
    if d.get("overall"):
        values += [d["overall"]["estimate"], *d["overall"]["ci"]]

    def row(label: str, r: Mapping[str, Any], key: tuple[str, ...]) -> CountRow:
        return CountRow(
            label,
            format_value(r["estimate"], "count"),
            format_interval(r["ci"], "count"),
            flags.get(key, ()),
        )

    return {
        "overall": (
            format_estimate(d["overall"]["estimate"], d["overall"]["ci"], "count")
            if d.get("overall")
            else ""
        ),
        "per_occupation": [
            row(r["isco_code"], r, ("isco", r["isco_code"])) for r in d.get("per_occupation", [])
        ],
        "overlap": [
            row(str(r["k"]), r, ("k", str(r["k"]))) for r in d.get("overlap_histogram", [])
        ],
        "pairwise": [
            row(f"{r['a']} and {r['b']}", r, ("pair", *sorted((r["a"], r["b"]))))
            for r in d.get("pairwise", [])
        ],
        "clamped": was_clamped(values, "count"),
    }


def reconciliation_view(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """Revocation reconciliation's DP counts per recognising municipality (clamped at zero),
    with the pairs that were not checked and the municipalities that refused; None when the
    audit did not run it."""
    section = report.get("reconciliation")
    if not isinstance(section, Mapping):
        return None
    counts = section.get("per_municipality") or {}
    rows = [
        CountRow(
            str(code), format_value(c["estimate"], "count"), format_interval(c["ci"], "count"), ()
        )
        for code, c in sorted(counts.items())
    ]
    raw = [v for c in counts.values() for v in (c["estimate"], *c["ci"])]
    skipped = [
        f"{p.get('recogniser')} against {p.get('origin')}: {p.get('reason', '')}"
        for p in section.get("skipped_pairs") or []
    ]
    refused = [f"{code}: {why}" for code, why in sorted((section.get("refused") or {}).items())]
    return {
        "status": str(section.get("status", "")),
        "rows": rows,
        "skipped": skipped,
        "refused": refused,
        "clamped": was_clamped(raw, "count"),
    }


def budget_lines(report: Mapping[str, Any]) -> list[dict[str, str]]:
    """Per node: the budget spent, its cap and what is left, in words."""
    out = []
    for n in report["privacy"]["nodes"]:
        extra = epsilon_words(n)
        queries = f"{n['queries']} question{'s' if n['queries'] != 1 else ''} charged"
        if n.get("replayed"):
            queries += f", {n['replayed']} repeated free"
        out.append(
            {
                "node": n["node"],
                "sentence": budget_sentence(n),
                "detail": "; ".join(p for p in (queries, extra) if p),
            }
        )
    return out


def sections(report: Mapping[str, Any], charts: Sequence[Chart], appendix: bool) -> list[Section]:
    """The table of contents, in page order."""
    out = [Section("summary", "Summary")]
    if report["findings"]:
        out.append(Section("findings", "Findings in detail"))
    if any(c.main for c in charts):
        out.append(Section("charts", "Estimates at a glance"))
    out.append(Section("duplicates", "Same person in several municipalities"))
    if report.get("reconciliation"):
        out.append(Section("reconciliation", "Recognitions resting on revoked certificates"))
    out += [
        Section("coverage", "Who answered"),
        Section("privacy", "Privacy budget"),
        Section("howto", "How to read this report"),
    ]
    if appendix:
        out.append(Section("appendix-estimates", "Appendix A: descriptive estimates"))
    out.append(Section("appendix-method", "Appendix B: method and raw counts"))
    return out


def page_context(report: Mapping[str, Any]) -> dict[str, Any]:
    """Everything report.html.j2 needs, from a validated, JSON-plain report."""
    charts = build_charts(report)
    main = [c for c in charts if c.main]
    extra = [c for c in charts if not c.main]
    nodes = report["coverage"]["nodes"]
    return {
        "report": report,
        "audit": report["audit"],
        "findings": finding_views(report),
        "unassessed": unassessed(report),
        "confidence": confidence_statement(report),
        "charts": main,
        "appendix_charts": extra,
        "duplicates": duplicate_rows(report),
        "reconciliation": reconciliation_view(report),
        "budgets": budget_lines(report),
        "toc": sections(report, charts, bool(extra)),
        "missing_nodes": [n["node"] for n in nodes if n["status"] != "answered"],
        "untested": sum(1 for m in report["metrics"] if not m["tested"]),
        "total_rho": report["privacy"]["total_rho"],
    }


__all__ = [
    "CountRow",
    "FindingView",
    "Section",
    "Unassessed",
    "budget_lines",
    "confidence_statement",
    "duplicate_rows",
    "finding_views",
    "page_context",
    "reconciliation_view",
    "sections",
    "unassessed",
]
