"""Incremental cohort runs: what the archive says was answered, and the trend it shows.

A cohort plan's run asks only what no earlier run answered (`planning.cohort_runs`). The
archive is the memory: every archived report.json names, in `audit.cohorts.asked`, the
cohorts each check asked. A check's cohorts count as answered once a run that asked them
was complete or partial (the answering nodes were charged; asking again would charge
them twice for the missing node's sake, so that node's gap is left as the report said);
a failed run answered nothing, and the next run asks those cohorts again, pooled with its
own (up to the plan's `catch_up_months`).

The trend is free post-processing: the municipality-level estimates of every archived
report, laid out per cohort, newest answer per cohort winning (a re-asked cohort, see
`reask_plan`, replaces its earlier numbers). It is written to ARCHIVE/<plan>/trend.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from fedaudit.coordinator.planning.cohort_runs import plan_for_run
from fedaudit.coordinator.planning.cohorts import COHORT_CHECKS, parse_month
from fedaudit.coordinator.planning.plan import AuditPlan

log = structlog.get_logger(__name__)

TREND_FILE = "trend.json"
ANSWERED_STATUSES = frozenset({"complete", "partial"})

_METRIC_CHECK: tuple[tuple[str, str], ...] = (
    ("pass_rate", "pass_rates"),
    ("employment_rate_", "employment"),
    ("in_field_rate_", "employment"),
    ("recognition_", "recognition"),
    ("appeal_", "appeals"),
    ("certificates_", "certificates"),
    ("earnings_", "earnings"),
)


def check_of_metric(metric: str) -> str | None:
    """The check whose query a metric is computed from (None: not a cohort check's metric)."""
    for prefix, check in _METRIC_CHECK:
        if metric.startswith(prefix):
            return check
    return None


_CACHE: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}
_CACHE_LOCK = threading.Lock()


def archived_reports(archive_root: Path, plan: str) -> list[dict[str, Any]]:
    """The plan's archived reports, oldest first (unreadable ones are logged and skipped).

    Only what cohort runs read is kept (`_summary`: the audit's status, run id and
    cohorts, and the municipality-level metrics). A long-running scheduler reads every
    archived report twice per run, so a summary is parsed again only when its file changed
    (size or modification time). Callers must not modify the result.
    """
    directory = Path(archive_root) / plan
    if not directory.is_dir():
        return []
    out = []
    for run_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        path = run_dir / "report.json"
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.error("archived_report_unreadable", path=str(path), error=str(exc))
            continue
        key = (stat.st_mtime_ns, stat.st_size)
        with _CACHE_LOCK:
            cached = _CACHE.get(path)
        if cached is not None and cached[0] == key:
            out.append(cached[1])
            continue
        try:
            report = _summary(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("archived_report_unreadable", path=str(path), error=str(exc))
            continue
        with _CACHE_LOCK:
            _CACHE[path] = (key, report)
        out.append(report)
    return out


def _summary(report: Mapping[str, Any]) -> dict[str, Any]:
    audit = report.get("audit", {})
    return {
        "audit": {k: audit[k] for k in ("status", "run_id", "cohorts") if k in audit},
        "metrics": [
            m
            for m in report.get("metrics", [])
            if not any(m.get("subject", {}).get(k) for k in ("provider_id", "isco_code", "group"))
        ],
    }


def answered_cohorts(reports: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Per check, the cohorts a complete or partial archived run asked."""
    answered: dict[str, set[str]] = defaultdict(set)
    for report in reports:
        audit = report.get("audit", {})
        if audit.get("status") not in ANSWERED_STATUSES:
            continue
        for check, months in audit.get("cohorts", {}).get("asked", {}).items():
            answered[check].update(months)
    return dict(answered)


def reask_plan(
    plan: AuditPlan, cohort: str, reports: Iterable[Mapping[str, Any]], run_month: str
) -> AuditPlan:
    """The plan asking again, per check, exactly the cohorts of the archived query that read
    `cohort` (so a node replays its stored answer for free unless its data officer reopened
    the cohort at a corrected import, and then charges those cohorts only).

    ValueError when no archived run of the plan asked about `cohort`.
    """
    parse_month(cohort)
    if plan.cohorts is None:
        raise ValueError(f"plan {plan.name} has no cohorts section; nothing is asked per cohort")
    asked: dict[str, tuple[str, ...]] = {}
    for report in reports:
        for check, months in report.get("audit", {}).get("cohorts", {}).get("asked", {}).items():
            if cohort in months:
                asked[check] = tuple(months)
    if not asked:
        raise ValueError(f"no archived run of plan {plan.name} asked about cohort {cohort}")
    narrowed = plan_for_run(plan, run_month)
    changes = {c: None for c in COHORT_CHECKS if c not in asked}
    changes.update({"duplicates": None, "revocation": None})
    if "pass_rates" not in asked or "employment" not in asked:
        changes["credential_inflation"] = None
    if "pass_rates" not in asked and "employment" not in asked:
        changes["outcome_disparity"] = None
    checks = dataclasses.replace(plan.checks, **changes)
    return dataclasses.replace(narrowed, checks=checks, asked=asked)


def trend(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Municipality-level estimates per metric, municipality and cohort, newest answer winning."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for report in reports:
        audit = report.get("audit", {})
        if audit.get("status") not in ANSWERED_STATUSES:
            continue
        asked = audit.get("cohorts", {}).get("asked", {})
        for metric in report.get("metrics", []):
            subject = metric.get("subject", {})
            if any(subject.get(k) for k in ("provider_id", "isco_code", "group")):
                continue
            check = check_of_metric(str(metric.get("metric", "")))
            if check is None or check not in asked:
                continue
            cohorts = "+".join(asked[check])
            municipality = subject.get("municipality") or "region"
            rows[(metric["metric"], municipality, cohorts)] = {
                "metric": metric["metric"],
                "municipality": municipality,
                "cohorts": list(asked[check]),
                "estimate": metric.get("estimate"),
                "ci": metric.get("ci"),
                "denominator": metric.get("denominator"),
                "run_id": audit.get("run_id"),
            }
    series: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    # "YYYY-MM" keys sort chronologically as text.
    for (name, municipality, _), row in sorted(
        rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[1]["cohorts"])
    ):
        series[name][municipality].append(
            {k: row[k] for k in ("cohorts", "estimate", "ci", "denominator", "run_id")}
        )
    return {"version": 1, "metrics": {k: dict(v) for k, v in series.items()}}


def write_trend(archive_root: Path, plan: str, reports: Iterable[Mapping[str, Any]]) -> Path:
    """Rebuild ARCHIVE/<plan>/trend.json from the archived reports (atomically)."""
    directory = Path(archive_root) / plan
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(trend(reports), indent=2, sort_keys=True) + "\n"
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{TREND_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, directory / TREND_FILE)
    finally:
        Path(temp).unlink(missing_ok=True)
    return directory / TREND_FILE
