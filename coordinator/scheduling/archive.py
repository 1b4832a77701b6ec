"""The archive of scheduled audit reports, and its index page of findings over time.

Layout::

    ARCHIVE/index.html                                   all plans, rebuilt after each run
    ARCHIVE/<plan>/schedule-state.json                   the scheduler's progress (schedule.py)
    ARCHIVE/<plan>/<YYYYmmddTHHMMSSZ>-<run id>/report.json|report.html

The timestamp is the slot's scheduled time, so directories sort chronologically and a
slot re-run after a crash replaces its own directory instead of adding a second one.
The index is derived only from the archived report.json files (nothing else to keep
in step), and one unreadable report becomes a row saying so rather than a missing page.
Per plan it shows, for every finding ever raised (kind and subject), whether it is new,
persisting or resolved as of the latest run (`audit_reports.history`), then the runs.
Like report.html it is one self-contained file: inline CSS and SVG, no scripts, and it
reads without sideways scrolling on a phone.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import tempfile
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import structlog

from fedaudit.audit_reports.history import (
    RunFindings,
    changes,
    counts,
    run_findings,
    subject_histories,
)
from fedaudit.audit_reports.render import write_report
from fedaudit.audit_reports.wording import KIND_LABELS

log = structlog.get_logger(__name__)

INDEX_FILE = "index.html"
_TEMPLATE = "archive_index.html.j2"
_RUN_DIR = re.compile(r"^(?P<stamp>\d{8}T\d{6}Z)-(?P<run_id>[A-Za-z0-9._:-]+)$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SEVERITIES = ("critical", "warning", "info")

# Trend chart geometry (pixels).
_BAR_WIDTH, _BAR_GAP, _CHART_HEIGHT, _CHART_PAD = 18, 6, 120, 28


@dataclass(frozen=True)
class ArchivedRun:
    """One row of the index, read back from an archived report.json."""

    plan: str
    directory: str
    stamp: str
    run_id: str
    status: str
    status_reason: str = ""
    started_at: str = ""
    answering: str = ""
    by_severity: Mapping[str, int] = field(default_factory=dict)
    by_kind: Mapping[str, int] = field(default_factory=dict)
    link: str = ""
    findings: RunFindings | None = None
    """The run's findings as the history reads them (None when unreadable)."""

    @property
    def total(self) -> int:
        return sum(self.by_severity.values())


@dataclass(frozen=True)
class TrendBar:
    x: int
    run_id: str
    segments: tuple[tuple[str, int, int, int], ...]  # (severity, y, height, count)
    total: int


@dataclass(frozen=True)
class Trend:
    width: int
    height: int
    baseline: int
    max_total: int
    bars: tuple[TrendBar, ...]


class Archive:
    """Stores reports under a root directory and rebuilds the index page."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def run_dir(self, plan: str, run_id: str, slot: dt.datetime) -> Path:
        """Where the report of `run_id` (scheduled at `slot`) is archived."""
        if not _SAFE_NAME.match(plan) or not _RUN_DIR.match(f"00000000T000000Z-{run_id}"):
            raise ValueError(f"unsafe plan or run id for a directory name: {plan!r}, {run_id!r}")
        stamp = slot.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return self.root / plan / f"{stamp}-{run_id}"

    def store(self, report: Mapping[str, Any], *, slot: dt.datetime) -> Path:
        """Write report.json and report.html for this run (atomically); return its directory."""
        audit = report["audit"]
        directory = self.run_dir(audit["plan"], audit["run_id"], slot)
        write_report(report, directory)
        log.info("report_archived", plan=audit["plan"], run_id=audit["run_id"], dir=str(directory))
        return directory

    def runs(self) -> dict[str, list[ArchivedRun]]:
        """Every archived run per plan, oldest first, read from the report.json files."""
        plans: dict[str, list[ArchivedRun]] = {}
        if not self.root.is_dir():
            return plans
        for plan_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if not _SAFE_NAME.match(plan_dir.name):
                continue
            rows = []
            for run_dir in sorted(p for p in plan_dir.iterdir() if p.is_dir()):
                match = _RUN_DIR.match(run_dir.name)
                if match is None:
                    continue
                rows.append(_read_run(plan_dir.name, run_dir, match["stamp"], match["run_id"]))
            if rows:
                plans[plan_dir.name] = rows
        return plans

    def rebuild_index(self) -> Path:
        """Regenerate ARCHIVE/index.html from the archive and replace it atomically."""
        plans = self.runs()
        html = (
            _environment()
            .get_template(_TEMPLATE)
            .render(
                plans=[_plan_view(name, rows) for name, rows in plans.items()],
                generated_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                severities=SEVERITIES,
            )
        )
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / INDEX_FILE
        fd, temp = tempfile.mkstemp(dir=self.root, prefix=f".{INDEX_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(html)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o644)
            os.replace(temp, target)
        finally:
            Path(temp).unlink(missing_ok=True)
        return target


def _history_rows(rows: Sequence[ArchivedRun]) -> list[RunFindings]:
    return [
        r.findings
        if r.findings is not None
        else RunFindings(run_id=r.run_id, label=_stamp_label(r.stamp), status=r.status)
        for r in rows
    ]


def _plan_view(name: str, rows: Sequence[ArchivedRun]) -> dict[str, Any]:
    """One plan's part of the index: findings by state, the trend and the runs (newest first)."""
    history = _history_rows(rows)
    subjects = subject_histories(history)
    runs = []
    for index, row in enumerate(rows):
        previous = history[index - 1] if index else None
        delta = changes(previous, history[index]) if row.findings is not None else None
        runs.append({"run": row, "changes": delta})
    return {
        "name": name,
        "runs": list(reversed(runs)),
        "trend": build_trend(rows),
        "subjects": subjects,
        "counts": counts(subjects),
        "latest": rows[-1],
    }


_READ_CACHE: dict[Path, tuple[tuple[int, int], ArchivedRun]] = {}
_READ_LOCK = threading.Lock()


def _read_run(plan: str, run_dir: Path, stamp: str, run_id: str) -> ArchivedRun:
    """One index row; parsed again only when the report file changed (the index is
    rebuilt after every run, and a scheduler running for years archives hundreds)."""
    path = run_dir / "report.json"
    try:
        stat = path.stat()
    except OSError:
        return _parse_run(plan, run_dir, stamp, run_id)
    key = (stat.st_mtime_ns, stat.st_size)
    with _READ_LOCK:
        cached = _READ_CACHE.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    row = _parse_run(plan, run_dir, stamp, run_id)
    if row.status != "unreadable":
        with _READ_LOCK:
            _READ_CACHE[path] = (key, row)
    return row


def _parse_run(plan: str, run_dir: Path, stamp: str, run_id: str) -> ArchivedRun:
    link = f"{plan}/{run_dir.name}/report.html"
    try:
        report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
        audit = report["audit"]
        findings = report["findings"]
        coverage = report["coverage"]
        by_severity = Counter(str(f["severity"]) for f in findings)
        history = run_findings(report, run_id=run_id, label=_stamp_label(stamp))
        return ArchivedRun(
            plan=plan,
            directory=run_dir.name,
            stamp=stamp,
            run_id=str(audit["run_id"]),
            status=str(audit["status"]),
            status_reason=str(audit.get("status_reason", "")),
            started_at=str(audit.get("started_at", "")),
            answering=f"{coverage['answering']} of {len(coverage['nodes'])}",
            by_severity={s: by_severity.get(s, 0) for s in SEVERITIES},
            by_kind=dict(sorted(Counter(str(f["kind"]) for f in findings).items())),
            link=link,
            findings=history,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.error("archived_report_unreadable", dir=str(run_dir), error=str(exc))
        return ArchivedRun(
            plan=plan,
            directory=run_dir.name,
            stamp=stamp,
            run_id=run_id,
            status="unreadable",
            status_reason=f"report.json could not be read: {exc.__class__.__name__}",
            by_severity=dict.fromkeys(SEVERITIES, 0),
            link=link,
        )


def build_trend(rows: Sequence[ArchivedRun]) -> Trend:
    """Stacked bars of findings per run (oldest left), one segment per severity."""
    max_total = max((r.total for r in rows), default=0)
    scale = (_CHART_HEIGHT - _CHART_PAD) / max(1, max_total)
    baseline = _CHART_HEIGHT - 4
    bars = []
    for i, run in enumerate(rows):
        x = 4 + i * (_BAR_WIDTH + _BAR_GAP)
        y = baseline
        segments = []
        for severity in SEVERITIES:
            count = run.by_severity.get(severity, 0)
            if count:
                height = max(2, round(count * scale))
                y -= height
                segments.append((severity, y, height, count))
        bars.append(TrendBar(x=x, run_id=run.run_id, segments=tuple(segments), total=run.total))
    width = max(120, 8 + len(rows) * (_BAR_WIDTH + _BAR_GAP))
    return Trend(
        width=width, height=_CHART_HEIGHT, baseline=baseline, max_total=max_total, bars=tuple(bars)
    )


def _stamp_label(stamp: str) -> str:
    """'20261101T000000Z' as '2026-11-01 00:00 UTC'."""
    moment = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")
    return f"{moment:%Y-%m-%d %H:%M} UTC"


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
    env.filters.update(stamp=_stamp_label)
    env.globals.update(kind_labels=KIND_LABELS)
    return env
