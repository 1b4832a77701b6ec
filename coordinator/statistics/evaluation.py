"""The outcome of evaluating one audit, and its shape in report.json.

`gaps.evaluate` returns an `Evaluation`; the audit runner only needs its report parts
(`findings`, `metrics`, `error_control`), while tests and benchmarks look at the
tests and skip reasons too. Keeping the result and its serialisation apart from the
calculation means the report schema can be followed here alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedaudit.coordinator.statistics.error_control import ErrorControl
from fedaudit.coordinator.statistics.findings import Finding
from fedaudit.coordinator.statistics.gap_tests import GapTest
from fedaudit.coordinator.statistics.metrics import Metric, NotAssessable


@dataclass(frozen=True)
class Evaluation:
    """The outcome of evaluating one audit's answers."""

    metrics: tuple[Metric, ...]
    tests: tuple[GapTest, ...]
    findings: tuple[Finding, ...]
    error_control: ErrorControl
    skipped: tuple[str, ...] = ()
    """Subjects or answers that produced no metric, and why (e.g. all cells suppressed)."""
    not_assessable: tuple[NotAssessable, ...] = ()
    """Checks whose data are absent at a node (no outcomes at the horizon, no appeals...)."""

    def to_report_parts(self) -> dict[str, Any]:
        """`findings`, `metrics`, `error_control` and `not_assessable` in the report.json shape."""
        findings = [
            {
                "id": f"F{i:03d}",
                "kind": f.kind,
                "subject": f.subject.to_dict(),
                "metric": f.metric,
                "estimate": _r(f.estimate),
                "ci": _ci(f.ci),
                "reference": {
                    "description": f.reference.description,
                    "estimate": _r(f.reference.value.value),
                    "ci": _ci(f.reference_ci),
                },
                "gap": _r(f.gap),
                "gap_ci": _ci(f.gap_ci),
                "tolerance": f.tolerance,
                "severity": f.severity,
                "summary": f.summary,
                "next_step": f.next_step,
            }
            for i, f in enumerate(self.findings, start=1)
        ]
        metrics = [
            {
                "id": f"M{i:04d}",
                "metric": m.metric,
                "label": m.label,
                "unit": m.unit,
                "subject": m.subject.to_dict(),
                "estimate": _r(m.value.value),
                "ci": _ci(m.ci),
                "denominator": None if m.denominator is None else _r(m.denominator),
                "reference": None
                if m.reference is None or m.reference_ci is None
                else {
                    "description": m.reference.description,
                    "estimate": _r(m.reference.value.value),
                    "ci": _ci(m.reference_ci),
                },
                "tested": m.tested,
                **({} if m.ci_level is None else {"ci_level": round(m.ci_level, 8)}),
                "note": m.note,
            }
            for i, m in enumerate(self.metrics, start=1)
        ]
        return {
            "findings": findings,
            "metrics": metrics,
            "error_control": self.error_control.to_dict(),
            "not_assessable": [n.to_dict() for n in self.not_assessable],
        }


def _r(x: float) -> float:
    return round(x, 6)


def _ci(ci: tuple[float, float]) -> list[float]:
    return [_r(ci[0]), _r(ci[1])]


__all__ = ["Evaluation"]
