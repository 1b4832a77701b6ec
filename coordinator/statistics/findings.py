"""Findings: the tests whose whole adjusted interval lies beyond the tolerance.

A finding is raised only when the whole interval of d, at the z of its Holm step,
lies beyond the check's tolerance in the flagged direction (critical beyond twice the
tolerance; see `GapTest.severity`). A gap the noise could explain is never a finding,
and neither is a real gap smaller than the tolerance. This module turns the audit's
tests into its findings, each with the intervals it was judged by and its sentence,
most severe first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.statistics.error_control import ErrorControl
from fedaudit.coordinator.statistics.gap_tests import GapTest, Reference, Subject
from fedaudit.coordinator.statistics.wording import finding_summary, next_step

KIND_ORDER = {
    k: i
    for i, k in enumerate(
        (
            "pass_rate_gap",
            "employment_gap",
            "credential_inflation",
            "recognition_delay",
            "outcome_disparity",
            "appeal_anomaly",
        )
    )
}
"""The order of finding kinds within a severity in the report."""


@dataclass(frozen=True)
class Finding:
    """A test beyond its tolerance, with the adjusted intervals it was judged by."""

    kind: str
    metric: str
    subject: Subject
    estimate: float
    ci: tuple[float, float]
    reference: Reference
    reference_ci: tuple[float, float]
    gap: float
    gap_ci: tuple[float, float]
    tolerance: float
    severity: str
    summary: str
    next_step: str = ""


def raise_findings(
    tests: Sequence[GapTest], control: ErrorControl, plan: AuditPlan
) -> tuple[Finding, ...]:
    """The findings among `tests`, each at the z its step was decided at: critical first."""
    findings: list[Finding] = []
    for index, test in enumerate(tests):
        z = control.z_of(index)
        severity = test.severity(z)
        if severity is None:
            continue
        findings.append(
            Finding(
                kind=test.kind,
                metric=test.metric,
                subject=test.subject,
                estimate=test.estimate.value,
                ci=test.estimate.interval(z),
                reference=test.reference,
                reference_ci=test.reference.value.interval(z),
                gap=test.gap,
                gap_ci=test.gap_interval(z),
                tolerance=test.tolerance,
                severity=severity,
                summary=finding_summary(test, z, severity, plan),
                next_step=next_step(test, plan),
            )
        )
    findings.sort(key=lambda f: (f.severity != "critical", KIND_ORDER[f.kind]))
    return tuple(findings)


__all__ = ["KIND_ORDER", "Finding", "raise_findings"]
