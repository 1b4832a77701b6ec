"""Gap detection: metrics per subject, tests against references, error control, findings.

`evaluate` turns the node answers of one audit into

- **metrics**: every released estimate a finding could be computed from, per
  municipality, per provider (where the query has the provider dimension) and per
  municipality x group for the disparity groups, each with interval and denominator;
- **tests**: one per (kind, subject) whose denominators are large enough. Each compares
  the subject's estimate with a reference pooled from disjoint data: the rest of the
  region (other municipalities), all other providers of the region, or the rest of the
  subject's own municipality (group disparities). The difference d has variance
  var_subject + var_reference (independent noise and disjoint people);
- **error control**: Holm's step-down procedure over every test the audit actually
  performed (alpha = 1 - confidence): the strongest test at alpha / m, the next at
  alpha / (m - 1), ..., so the probability of any false finding is at most alpha, and
  never fewer findings than Bonferroni;
- **findings**: raised only when the whole interval of d at its step's z lies beyond the
  check's tolerance in the flagged direction (critical beyond twice the tolerance).
  A gap the noise could explain is never a finding, and neither is a real gap smaller
  than the tolerance.

Subjects with a (noisy) denominator below `plan.min_denominator`, on either side of the
comparison, are reported but not tested, and their note says so; they do not count in m.

This module only runs the steps in order; each lives in its own module:

- `metrics`: the collector of metrics and candidate tests, and the min-denominator rule;
- `outcome_checks`, `procedure_checks`, `descriptive_metrics`: what each check computes;
- `gap_tests`: the comparison d = estimate - reference and when it is beyond tolerance;
- `error_control`: Holm's steps and the adjusted intervals of tested metrics;
- `findings` and `wording`: which tests become findings, and their sentences;
- `evaluation`: the result and its report.json shape.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.statistics.descriptive_metrics import certificates, earnings
from fedaudit.coordinator.statistics.error_control import adjust_tested, holm
from fedaudit.coordinator.statistics.evaluation import Evaluation
from fedaudit.coordinator.statistics.findings import raise_findings
from fedaudit.coordinator.statistics.metrics import MetricCollector
from fedaudit.coordinator.statistics.outcome_checks import (
    Outcomes,
    credential_inflation,
    disparity,
    employment_gaps,
    in_field,
    pass_rate_gaps,
)
from fedaudit.coordinator.statistics.procedure_checks import appeals, recognition
from fedaudit.node.domain import Answer


def evaluate(
    plan: AuditPlan, answers: Mapping[str, Mapping[str, Answer]], *, alpha_share: float = 1.0
) -> Evaluation:
    """Metrics, tests and findings from node name -> query key -> Answer.

    Missing nodes or queries are simply absent: every comparison pools the nodes that
    answered, and its reference says which. `alpha_share` is the part of the audit's
    error budget these tests may use (the rest goes to the blinding ring's tests).
    """
    book = MetricCollector(plan, answers)
    _run_checks(book)
    control = holm(plan, book.tests, book.metrics, alpha_share=alpha_share)
    return Evaluation(
        metrics=adjust_tested(book.metrics, book.tests, book.pending, control),
        tests=tuple(book.tests),
        findings=raise_findings(book.tests, control, plan),
        error_control=control,
        skipped=tuple(book.skipped),
        not_assessable=tuple(book.not_assessable),
    )


def _run_checks(book: MetricCollector) -> None:
    """Every check the plan asks for, in a fixed order (metric ids follow it)."""
    c = book.plan.checks
    pass_out: Outcomes = {}
    emp_out: Outcomes = {}
    if c.pass_rates is not None:
        pass_out = pass_rate_gaps(book, c.pass_rates)
    if c.employment is not None:
        emp_out = employment_gaps(book, c.employment)
        in_field(book, c.employment.months_after)
    if c.credential_inflation is not None:
        credential_inflation(book, pass_out, emp_out, c.credential_inflation.tolerance)
    if c.outcome_disparity is not None:
        disparity(book, c.outcome_disparity.tolerance, c.outcome_disparity.by)
    if c.recognition is not None:
        recognition(book, c.recognition.tolerance, c.recognition.limit_days)
    if c.appeals is not None:
        appeals(book, c.appeals.tolerance)
    if c.certificates is not None:
        certificates(book)
    if c.earnings is not None:
        earnings(book, c.earnings.months_after)


__all__ = ["evaluate"]
