"""Family-wise error control: Holm's step-down procedure over every test the audit performed.

An audit makes many comparisons at once; at a per-test confidence of 95% some of
them would flag by chance alone. So the audit's error budget alpha = 1 - confidence
is shared over the m tests it actually performed, with Holm's step-down procedure
(Holm 1979): order the tests by p-value; the strongest is tested at alpha / m, the
next at alpha / (m - 1), and so on, stopping at the first that does not flag. The
probability of even one false finding in the whole audit stays at most alpha, as with
Bonferroni (which tests every one at alpha / m), and Holm never flags less: every
Bonferroni finding is a Holm finding.

Each test's p-value is the level at which its two-sided interval just touches its
bound (`GapTest.p_value`), so "flags at level a" and "its interval at confidence 1 - a
lies beyond the tolerance" are the same statement. The report shows each tested
metric's interval at the confidence of the step that decided it: a finding's interval
lies beyond its tolerance, a non-finding's reaches it.

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
    """How the audit's tests were corrected together, as the report states it.

    `z` is the most stringent step's (Bonferroni's) z; `test_z[i]` is the z at which
    test i was decided (its step under Holm).
    """

    method: str
    tests: int
    family_confidence: float
    per_test_confidence: float
    z: float
    untested: int
    description: str
    test_z: tuple[float, ...] = ()
    flagged: int = 0

    def z_of(self, index: int) -> float:
        """The z test `index` was decided at."""
        return self.test_z[index] if self.test_z else self.z

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tests": self.tests,
            "family_confidence": self.family_confidence,
            "per_test_confidence": self.per_test_confidence,
            "description": self.description,
        }


def _z(level: float) -> float:
    """The two-sided z of an interval at confidence 1 - level."""
    return NormalDist().inv_cdf(1.0 - level / 2.0)


def holm_steps(p_values: Sequence[float], alpha: float) -> tuple[list[float], int]:
    """Holm's step-down procedure: the level each test was decided at, and how many flag.

    Tests are taken in increasing p-value; step k (from 0) tests at alpha / (m - k) and
    the procedure stops at the first p-value not below its level. Every test from there
    on is decided at that stopping level.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    levels = [0.0] * m
    flagged = 0
    for step, i in enumerate(order):
        level = alpha / (m - step)
        if p_values[i] < level:
            levels[i] = level
            flagged += 1
            continue
        for j in order[step:]:
            levels[j] = level
        break
    return levels, flagged


def holm(
    plan: AuditPlan,
    tests: Sequence[GapTest],
    metrics: Sequence[Metric],
    *,
    alpha_share: float = 1.0,
) -> ErrorControl:
    """The error control of an audit with these tests (Holm); `metrics` give the untested count.

    `alpha_share` is the part of the audit's error budget these tests may use (one half
    when the blinding ring's tests take the other); the description states the audit-wide
    confidence either way.
    """
    alpha = (1.0 - plan.confidence) * alpha_share
    m = len(tests)
    untested = sum(1 for t in metrics if t.note.startswith("not tested"))
    if not m:
        return ErrorControl(
            method="none",
            tests=0,
            family_confidence=plan.confidence,
            per_test_confidence=plan.confidence,
            z=z_for(plan.confidence),
            untested=untested,
            description=control_sentence(plan, 0, plan.confidence, untested),
        )
    levels, flagged = holm_steps([t.p_value() for t in tests], alpha)
    per_test = 1.0 - alpha / m
    return ErrorControl(
        method="holm",
        tests=m,
        family_confidence=plan.confidence,
        per_test_confidence=per_test,
        z=_z(alpha / m),
        untested=untested,
        description=control_sentence(plan, m, per_test, untested, flagged=flagged),
        test_z=tuple(_z(level) for level in levels),
        flagged=flagged,
    )


def bonferroni(plan: AuditPlan, tests: int, metrics: Sequence[Metric]) -> ErrorControl:
    """Bonferroni over `tests` tests (every test at alpha / m): the baseline Holm improves on."""
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
        description=control_sentence(plan, m, per_test, untested, method="bonferroni"),
    )


def adjust_tested(
    metrics: Sequence[Metric],
    tests: Sequence[GapTest],
    pending: Mapping[int, int],
    control: ErrorControl,
) -> tuple[Metric, ...]:
    """The metrics with every tested one's interval (and its reference's) at its test's z.

    `pending` maps a metric's index to the index of its test, so the report shows the
    same intervals the findings were judged by.
    """
    adjusted = list(metrics)
    for index, test_index in pending.items():
        test = tests[test_index]
        z = control.z_of(test_index)
        adjusted[index] = replace(
            adjusted[index],
            ci=test.estimate.interval(z),
            reference=test.reference,
            reference_ci=test.reference.value.interval(z),
            tested=True,
            ci_level=2.0 * NormalDist().cdf(z) - 1.0,
        )
    return tuple(adjusted)


__all__ = ["ErrorControl", "adjust_tested", "bonferroni", "holm", "holm_steps"]
