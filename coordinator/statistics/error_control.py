"""Family-wise error control: one Bonferroni split over every test the audit performed.

An audit makes many comparisons at once; at a per-test confidence of 95% some of
them would flag by chance alone. So the audit's error budget alpha = 1 - confidence
is split evenly over the m tests it actually performed: every test interval uses
z = NormalDist().inv_cdf(1 - alpha / (2 m)), and the probability that any interval of
the audit misses its true value (and so of any false finding) is at most alpha.

Subjects reported but not tested (too small a denominator, no reference) do not
count in m. Without any test, intervals stay at the plan's plain confidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.statistics.estimates import z_for
from fedaudit.coordinator.statistics.gap_tests import GapTest
from fedaudit.coordinator.statistics.metrics import Metric
from fedaudit.coordinator.statistics.wording import control_sentence


@dataclass(frozen=True)
class ErrorControl:
    """How the audit's tests were corrected together, as the report states it; `z` is per test."""

    method: str
    tests: int
    family_confidence: float
    per_test_confidence: float
    z: float
    untested: int
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tests": self.tests,
            "family_confidence": self.family_confidence,
            "per_test_confidence": self.per_test_confidence,
            "description": self.description,
        }


def bonferroni(plan: AuditPlan, tests: int, metrics: Sequence[Metric]) -> ErrorControl:
    """The error control of an audit with `tests` tests; `metrics` supply the untested count."""
    alpha = 1.0 - plan.confidence
    m = tests
    untested = sum(1 for t in metrics if t.note.startswith("not tested"))
    if m:
        per_test = 1.0 - alpha / m
        z = NormalDist().inv_cdf(1.0 - alpha / (2 * m))
    else:
        per_test, z = plan.confidence, z_for(plan.confidence)
    return ErrorControl(
        method="bonferroni" if m else "none",
        tests=m,
        family_confidence=plan.confidence,
        per_test_confidence=per_test,
        z=z,
        untested=untested,
        description=control_sentence(plan, m, per_test, untested),
    )


def adjust_tested(
    metrics: Sequence[Metric],
    tests: Sequence[GapTest],
    pending: Mapping[int, int],
    z: float,
) -> tuple[Metric, ...]:
    """The metrics with every tested one's interval (and its reference's) at the audit's z.

    `pending` maps a metric's index to the index of its test, so the report shows the
    same adjusted intervals the findings were judged by.
    """
    adjusted = list(metrics)
    for index, test_index in pending.items():
        test = tests[test_index]
        adjusted[index] = replace(
            adjusted[index],
            ci=test.estimate.interval(z),
            reference=test.reference,
            reference_ci=test.reference.value.interval(z),
            tested=True,
        )
    return tuple(adjusted)


__all__ = ["ErrorControl", "adjust_tested", "bonferroni"]
