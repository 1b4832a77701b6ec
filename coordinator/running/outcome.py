"""What an audit's result means for whoever runs it: an exit code and a verdict in words.

DESIGN.md 6.2 fixes the exit codes of `audit run`, `schedule run` and the demo:

- 0: the audit is complete and no finding reached `--fail-on`;
- 1: a finding reached `--fail-on` (the audit covered what it had to);
- 3: the audit was incomplete: `failed` always (nothing could be compared), `partial`
  unless the caller accepted partial coverage (`--allow-partial`).

An incomplete audit takes precedence over its findings: exit 0 or 1 is given only to an
audit whose coverage the caller accepted, so a missing node is never read as "clean".
The codes live here, not only in the CLI, because the scheduler (a coordinator
module) reports them per run; `fedaudit.cli.errors` uses the same numbers.

`verdict` is the one sentence a terminal or alert leads with: it never says "no gap
found" about an audit that could not look everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_INCOMPLETE = 3

SEVERITIES = ("info", "warning", "critical")
"""Finding severities, lowest first: a threshold X catches X and everything after it."""


def findings_at(report: Mapping[str, Any], threshold: str | None) -> list[Mapping[str, Any]]:
    """The report's findings at or above `threshold` (none when there is no threshold)."""
    if threshold is None:
        return []
    level = SEVERITIES.index(threshold)
    return [f for f in report["findings"] if SEVERITIES.index(f["severity"]) >= level]


def is_incomplete(report: Mapping[str, Any], *, allow_partial: bool = False) -> bool:
    """True when the audit did not cover what it had to (failed, or partial not accepted)."""
    status = report["audit"]["status"]
    return status == "failed" or (status == "partial" and not allow_partial)


def exit_code(
    report: Mapping[str, Any], fail_on: str | None, *, allow_partial: bool = False
) -> int:
    """The exit code for `report` under DESIGN.md 6.2 (see the module docstring)."""
    if is_incomplete(report, allow_partial=allow_partial):
        return EXIT_INCOMPLETE
    return EXIT_FINDINGS if findings_at(report, fail_on) else EXIT_OK


def verdict(report: Mapping[str, Any]) -> str:
    """One plain sentence on what the audit can and cannot say."""
    audit = report["audit"]
    status = audit["status"]
    reason = audit.get("status_reason") or ""
    findings = report["findings"]
    confidence = f"{100 * audit['confidence']:g}%"
    not_assessable = report.get("not_assessable") or []
    unassessed = (
        f" {len(not_assessable)} check(s) or subject(s) could not be assessed (see below)."
        if not_assessable
        else ""
    )
    if status == "failed":
        return (
            f"The audit FAILED and says nothing about gaps: {reason}. Fix the cause and run "
            "it again with the same --run-id (answers already charged are replayed for free)."
        )
    count = _count(findings)
    if status == "partial":
        return (
            f"The audit is INCOMPLETE: {reason}. {count} among what was covered, at "
            f"{confidence} confidence; what was not covered was not checked, so the absence "
            f"of a finding there means nothing.{unassessed}"
        )
    if findings:
        return f"The audit is complete: {count} at {confidence} confidence.{unassessed}"
    return (
        f"The audit is complete: no gap beyond the plan's tolerances at {confidence} "
        f"confidence.{unassessed}"
    )


def _count(findings: list[Mapping[str, Any]]) -> str:
    if not findings:
        return "No finding"
    by = {s: sum(1 for f in findings if f["severity"] == s) for s in reversed(SEVERITIES)}
    parts = [f"{n} {s}" for s, n in by.items() if n]
    return f"{len(findings)} finding(s) ({', '.join(parts)})"


__all__ = [
    "EXIT_FINDINGS",
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "SEVERITIES",
    "exit_code",
    "findings_at",
    "is_incomplete",
    "verdict",
]
