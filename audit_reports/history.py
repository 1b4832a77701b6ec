"""Findings over time: per subject, is a finding new, persisting or resolved?

A scheduled check produces one report per run. The board's question across runs is not
"how many findings" but "what changed": which subjects are flagged for the first time,
which stay flagged, and which are no longer flagged. This module answers it from the
reports' findings alone (pure functions, no files), so the archive index and any alert
use the same rule:

- new: flagged in the latest run and not in the run before it;
- persisting: flagged in the latest run and in the run before it (since when is kept);
- resolved: flagged before, not in the latest run, and the latest run looked at it
  (the run was complete, or the subject's municipality answered in full);
- not checked: flagged before, but the latest run did not cover it (failed, unreadable,
  or the municipality did not answer), so nothing can be said.

A finding is identified by its kind and subject (municipality, provider, occupation,
group, other municipality), not by its id, which is only unique within one report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedaudit.audit_reports.wording import KIND_LABELS, SEVERITY_ORDER, subject_label

_SUBJECT_KEYS = ("municipality", "provider_id", "isco_code", "group", "other_municipality")
STATES = ("new", "persisting", "resolved", "not_checked")
STATE_WORDS = {
    "new": "new",
    "persisting": "persisting",
    "resolved": "resolved",
    "not_checked": "not checked in the latest run",
}

FindingKey = tuple[Any, ...]


@dataclass(frozen=True)
class FlaggedFinding:
    """What the history needs of one finding."""

    key: FindingKey
    kind: str
    subject: Mapping[str, Any]
    severity: str
    summary: str


@dataclass(frozen=True)
class RunFindings:
    """One archived run as the history sees it: its status, who answered, what it flagged."""

    run_id: str
    label: str
    """How the run is named on the page, e.g. its scheduled time."""
    status: str
    """complete | partial | failed | unreadable."""
    answered: frozenset[str] = frozenset()
    """Municipalities that answered every question in this run."""
    findings: tuple[FlaggedFinding, ...] = ()

    @property
    def keys(self) -> frozenset[FindingKey]:
        return frozenset(f.key for f in self.findings)

    def covered(self, subject: Mapping[str, Any]) -> bool:
        """Did this run look at `subject`? (complete, or its municipality answered)"""
        if self.status == "complete":
            return True
        if self.status != "partial":
            return False
        places = [subject.get("municipality"), subject.get("other_municipality")]
        named = [p for p in places if p]
        return bool(named) and all(p in self.answered for p in named)


@dataclass(frozen=True)
class SubjectHistory:
    """One finding (kind and subject) across the runs of a plan, as of the latest run."""

    kind: str
    kind_label: str
    subject: str
    state: str
    severity: str
    summary: str
    first_flagged: str
    last_flagged: str
    runs_flagged: int
    runs: int
    streak_since: str = ""
    """For a persisting finding: the first run of the current unbroken streak."""
    trail: tuple[bool | None, ...] = field(default=())
    """Per run, oldest first: flagged (True), covered and not flagged (False), not covered (None)."""

    @property
    def state_words(self) -> str:
        return STATE_WORDS[self.state]


def finding_key(finding: Mapping[str, Any]) -> FindingKey:
    subject = finding.get("subject") or {}
    return (finding.get("kind"), *(subject.get(k) for k in _SUBJECT_KEYS))


def run_findings(
    report: Mapping[str, Any], *, run_id: str | None = None, label: str = ""
) -> RunFindings:
    """The history's view of one report.json (raises KeyError/TypeError if malformed)."""
    audit = report["audit"]
    answered = frozenset(
        str(n["node"]) for n in report["coverage"]["nodes"] if n.get("status") == "answered"
    )
    findings = tuple(
        FlaggedFinding(
            key=finding_key(f),
            kind=str(f["kind"]),
            subject=dict(f.get("subject") or {}),
            severity=str(f["severity"]),
            summary=str(f.get("summary", "")),
        )
        for f in report["findings"]
    )
    return RunFindings(
        run_id=str(run_id or audit["run_id"]),
        label=label or str(audit["run_id"]),
        status=str(audit["status"]),
        answered=answered,
        findings=findings,
    )


def _state(runs: Sequence[RunFindings], key: FindingKey, subject: Mapping[str, Any]) -> str:
    latest = runs[-1]
    if key in latest.keys:
        previous = runs[-2] if len(runs) > 1 else None
        return "persisting" if previous is not None and key in previous.keys else "new"
    return "resolved" if latest.covered(subject) else "not_checked"


def subject_histories(runs: Sequence[RunFindings]) -> list[SubjectHistory]:
    """Every finding ever raised in `runs` (oldest first), with its state as of the latest.

    Ordered for a reader: new, then persisting, then not checked, then resolved; within
    each, most severe first.
    """
    if not runs:
        return []
    seen: dict[FindingKey, FlaggedFinding] = {}
    for run in runs:
        for finding in run.findings:
            seen[finding.key] = finding  # the latest occurrence wins
    out = []
    for key, finding in seen.items():
        trail = tuple(
            True if key in run.keys else (False if run.covered(finding.subject) else None)
            for run in runs
        )
        flagged = [run for run, hit in zip(runs, trail, strict=True) if hit]
        state = _state(runs, key, finding.subject)
        streak = ""
        if state == "persisting":
            index = len(runs) - 1
            while index > 0 and trail[index - 1]:
                index -= 1
            streak = runs[index].label
        out.append(
            SubjectHistory(
                kind=finding.kind,
                kind_label=KIND_LABELS.get(finding.kind, finding.kind.replace("_", " ")),
                subject=subject_label(finding.subject),
                state=state,
                severity=finding.severity,
                summary=finding.summary,
                first_flagged=flagged[0].label,
                last_flagged=flagged[-1].label,
                runs_flagged=len(flagged),
                runs=len(runs),
                streak_since=streak,
                trail=trail,
            )
        )
    order = {"new": 0, "persisting": 1, "not_checked": 2, "resolved": 3}
    out.sort(key=lambda h: (order[h.state], SEVERITY_ORDER.get(h.severity, 3), h.subject, h.kind))
    return out


def changes(previous: RunFindings | None, current: RunFindings) -> dict[str, int]:
    """How one run differs from the one before: new, persisting and resolved findings."""
    before = previous.keys if previous is not None else frozenset()
    now = current.keys
    by_key = {f.key: f for f in (previous.findings if previous else ())}
    resolved = sum(1 for k in before - now if current.covered(by_key[k].subject))
    return {"new": len(now - before), "persisting": len(now & before), "resolved": resolved}


def counts(histories: Iterable[SubjectHistory]) -> dict[str, int]:
    """How many findings are in each state."""
    out = dict.fromkeys(STATES, 0)
    for h in histories:
        out[h.state] += 1
    return out


__all__ = [
    "STATES",
    "STATE_WORDS",
    "FlaggedFinding",
    "RunFindings",
    "SubjectHistory",
    "changes",
    "counts",
    "finding_key",
    "run_findings",
    "subject_histories",
]
