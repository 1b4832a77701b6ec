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
- **error control**: Bonferroni over every test the audit actually performed. With m
  tests and alpha = 1 - confidence, every test interval uses
  z = NormalDist().inv_cdf(1 - alpha / (2 m)), so the probability that any interval
  of the audit misses its true value (and so of any false finding) is at most alpha;
- **findings**: raised only when the whole adjusted interval of d lies beyond the
  check's tolerance in the flagged direction (critical beyond twice the tolerance).
  A gap the noise could explain is never a finding, and neither is a real gap smaller
  than the tolerance.

Subjects with a (noisy) denominator below `plan.min_denominator`, on either side of the
comparison, are reported but not tested, and their note says so; they do not count in m.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

import structlog

from fedaudit.coordinator.errors import AnswerError
from fedaudit.coordinator.planning import checks as q
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.statistics.estimates import (
    Bin,
    Estimate,
    Rate,
    RateParts,
    RowPredicate,
    binned_quantile,
    combine_parts,
    rate_parts,
    sum_cells,
    where,
    z_for,
)
from fedaudit.node.domain import Answer

log = structlog.get_logger(__name__)

NO_PROVIDER = "none"
"""The provider key of records without a provider (e.g. reciprocity certificates)."""

DISPARITY_GROUPS: Mapping[str, tuple[str, ...]] = {
    "citizenship_group": ("foreign", "national"),
    "sex": ("female", "male"),
}
"""Per disparity dimension: the group tested, then the group it is compared with.

One test per dimension, metric and municipality: with two groups, "A vs rest" and
"B vs rest" are the same comparison, and counting it twice would both double the
findings and loosen nothing but the Bonferroni divisor.
"""

TWO_SIDED, ABOVE, BELOW = "two_sided", "above", "below"


@dataclass(frozen=True)
class Subject:
    """What a metric or finding is about."""

    municipality: str
    provider_id: str | None = None
    group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "municipality": self.municipality,
            "provider_id": self.provider_id,
            "isco_code": None,
            "group": self.group,
        }


@dataclass(frozen=True)
class Value:
    """An estimate with its total variance; `bounded` shares have intervals within [0, 1]."""

    value: float
    var: float
    bounded: bool = True

    def interval(self, z: float) -> tuple[float, float]:
        half = z * math.sqrt(max(self.var, 0.0))
        low, high = self.value - half, self.value + half
        if self.bounded:
            return (max(0.0, low), min(1.0, high))
        return (low, high)


@dataclass(frozen=True)
class Reference:
    """What a subject is compared with, and which nodes' data it pooled."""

    description: str
    nodes: tuple[str, ...]
    value: Value


@dataclass(frozen=True)
class GapTest:
    """One test of the audit's family: d = estimate - reference against a tolerance."""

    kind: str
    metric: str
    subject: Subject
    estimate: Value
    reference: Reference
    tolerance: float
    direction: str
    context: Mapping[str, float] = field(default_factory=dict)

    @property
    def gap(self) -> float:
        return self.estimate.value - self.reference.value.value

    @property
    def gap_var(self) -> float:
        return self.estimate.var + self.reference.value.var

    def gap_interval(self, z: float) -> tuple[float, float]:
        half = z * math.sqrt(self.gap_var)
        return (self.gap - half, self.gap + half)

    def severity(self, z: float) -> str | None:
        """None unless the whole interval of d lies beyond the tolerance in the flagged way."""
        low, high = self.gap_interval(z)
        tol = self.tolerance
        if self.direction in (ABOVE, TWO_SIDED) and low > tol:
            return "critical" if low > 2 * tol else "warning"
        if self.direction in (BELOW, TWO_SIDED) and high < -tol:
            return "critical" if high < -2 * tol else "warning"
        return None


@dataclass(frozen=True)
class Metric:
    """A released estimate with its interval; `ci` is at the audit's z when `tested`."""

    metric: str
    label: str
    unit: str
    subject: Subject
    value: Value
    ci: tuple[float, float]
    denominator: float | None
    reference: Reference | None = None
    reference_ci: tuple[float, float] | None = None
    tested: bool = False
    note: str = ""


@dataclass(frozen=True)
class Finding:
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


@dataclass(frozen=True)
class ErrorControl:
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


@dataclass(frozen=True)
class Evaluation:
    """The outcome of evaluating one audit's answers."""

    metrics: tuple[Metric, ...]
    tests: tuple[GapTest, ...]
    findings: tuple[Finding, ...]
    error_control: ErrorControl
    skipped: tuple[str, ...] = ()
    """Subjects or answers that produced no metric, and why (e.g. all cells suppressed)."""

    def to_report_parts(self) -> dict[str, Any]:
        """`findings`, `metrics` and `error_control` in the report.json shape."""
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
                "note": m.note,
            }
            for i, m in enumerate(self.metrics, start=1)
        ]
        return {
            "findings": findings,
            "metrics": metrics,
            "error_control": self.error_control.to_dict(),
        }


def evaluate(plan: AuditPlan, answers: Mapping[str, Mapping[str, Answer]]) -> Evaluation:
    """Metrics, tests and findings from node name -> query key -> Answer.

    Missing nodes or queries are simply absent: every comparison pools the nodes that
    answered, and its reference says which.
    """
    audit = _Audit(plan, answers)
    audit.run()
    return audit.finish()


# --- evaluation -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    """A subject's rate, its reference rate, and whether the comparison is testable."""

    rate: Rate
    reference: Rate | None
    testable: bool
    reference_description: str = ""
    reference_nodes: tuple[str, ...] = ()


class _Audit:
    """Collects metrics and candidate tests, then applies the error control."""

    def __init__(self, plan: AuditPlan, answers: Mapping[str, Mapping[str, Answer]]) -> None:
        self.plan = plan
        self.answers = answers
        self.nodes = sorted(answers)
        self.code = {n: _municipality(n, answers[n]) for n in self.nodes}
        self.z_plain = z_for(plan.confidence)
        self.metrics: list[Metric] = []
        self.tests: list[GapTest] = []
        self.pending: dict[int, int] = {}  # metric index -> test index
        self.skipped: list[str] = []

    # answers ---------------------------------------------------------------------

    def answer(self, node: str, key: str) -> Answer | None:
        return self.answers[node].get(key)

    def node_answers(self, key: str) -> dict[str, Answer]:
        return {n: a for n in self.nodes if (a := self.answer(n, key)) is not None}

    def run(self) -> None:
        c = self.plan.checks
        pass_out: dict[tuple[str, str | None], _Outcome] = {}
        emp_out: dict[tuple[str, str | None], _Outcome] = {}
        if c.pass_rates is not None:
            pass_out = self.outcome_check(
                key=q.KEY_PASS_RATES,
                kind="pass_rate_gap",
                tolerance=c.pass_rates.tolerance,
                direction=TWO_SIDED,
                metric="pass_rate",
                label="Assessment pass rate (passed / assessed)",
                numerator=("pass",),
                rest=("fail",),
            )
        if c.employment is not None:
            m = c.employment.months_after
            emp_out = self.outcome_check(
                key=q.KEY_EMPLOYMENT,
                kind="employment_gap",
                tolerance=c.employment.tolerance,
                direction=BELOW,
                metric=f"employment_rate_{m}m",
                label=f"Employed {m} months after certification (of those with a known status)",
                numerator=("employed_in_field", "employed_other_field"),
                rest=("not_employed",),
            )
            self.in_field(m)
        if c.credential_inflation is not None:
            self.credential_inflation(pass_out, emp_out, c.credential_inflation.tolerance)
        if c.outcome_disparity is not None:
            self.disparity(c.outcome_disparity.tolerance, c.outcome_disparity.by)
        if c.recognition is not None:
            self.recognition(c.recognition.tolerance, c.recognition.limit_days)
        if c.appeals is not None:
            self.appeals(c.appeals.tolerance)
        if c.certificates is not None:
            self.certificates()
        if c.earnings is not None:
            self.earnings(c.earnings.months_after)

    # building blocks -------------------------------------------------------------

    def parts(
        self,
        node: str,
        answer: Answer,
        numerator: Sequence[str],
        rest: Sequence[str],
        rows: RowPredicate | None = None,
    ) -> RateParts | None:
        try:
            return rate_parts(answer, numerator, rest, rows)
        except AnswerError as exc:
            self.skip(f"{node}: answer not used: {exc}")
            return None

    def skip(self, message: str) -> None:
        log.debug("metric_skipped", reason=message)
        self.skipped.append(message)

    def rate_metric(
        self,
        *,
        metric: str,
        label: str,
        subject: Subject,
        parts: RateParts,
        reference: tuple[RateParts, str, tuple[str, ...]] | None = None,
        test: tuple[str, float, str] | None = None,
    ) -> _Outcome | None:
        """Add a share metric (and its test when `test` and both sides are large enough)."""
        where_ = _where(subject)
        if parts.rows == 0:
            why = (
                f"all {parts.withheld_rows} group row(s) withheld by the node (suppressed)"
                if parts.withheld_rows
                else "no released data"
            )
            self.skip(f"{metric} {where_}: not reported: {why}")
            return None
        r = parts.rate()
        notes: list[str] = []
        if parts.withheld_rows:
            notes.append(
                f"{parts.withheld_rows} small group row(s) withheld by the node are left out"
            )
        ref_rate: Rate | None = None
        ref_desc, ref_nodes = "", ()
        testable = False
        if test is not None:
            min_den = self.plan.min_denominator
            if reference is not None and reference[0].rows > 0:
                ref_parts, ref_desc, ref_nodes = reference
                ref_rate = ref_parts.rate()
            if parts.denominator < min_den:
                notes.insert(
                    0,
                    f"not tested: fewer than {min_den} in the denominator "
                    f"({parts.denominator:.0f})",
                )
            elif ref_rate is None or reference is None:
                notes.insert(0, "not tested: no reference data (no other subject answered)")
            elif reference[0].denominator < min_den:
                notes.insert(
                    0,
                    f"not tested: fewer than {min_den} in the reference's denominator "
                    f"({reference[0].denominator:.0f})",
                )
            else:
                testable = True
        value = Value(r.value, r.var)
        self.metrics.append(
            Metric(
                metric=metric,
                label=label,
                unit="share",
                subject=subject,
                value=value,
                ci=r.interval(self.z_plain),
                denominator=parts.denominator,
                note="; ".join(notes),
            )
        )
        if testable and test is not None and ref_rate is not None:
            kind, tolerance, direction = test
            self.add_test(
                len(self.metrics) - 1,
                GapTest(
                    kind=kind,
                    metric=metric,
                    subject=subject,
                    estimate=value,
                    reference=Reference(ref_desc, ref_nodes, Value(ref_rate.value, ref_rate.var)),
                    tolerance=tolerance,
                    direction=direction,
                ),
            )
        return _Outcome(r, ref_rate, testable, ref_desc, ref_nodes)

    def add_test(self, metric_index: int | None, test: GapTest) -> None:
        self.tests.append(test)
        if metric_index is not None:
            self.pending[metric_index] = len(self.tests) - 1

    def count_metric(
        self, *, metric: str, label: str, subject: Subject, estimate: Estimate, unit: str = "count"
    ) -> None:
        if estimate.n_cells == 0:
            why = "withheld by the node (suppressed)" if estimate.missing_cells else "not released"
            self.skip(f"{metric} {_where(subject)}: not reported: {why}")
            return
        note = (
            f"{estimate.missing_cells} suppressed cell(s) left out"
            if estimate.missing_cells
            else ""
        )
        value = Value(estimate.value, estimate.noise_var, bounded=False)
        self.metrics.append(
            Metric(
                metric=metric,
                label=label,
                unit=unit,
                subject=subject,
                value=value,
                ci=value.interval(self.z_plain),
                denominator=None,
                note=note,
            )
        )

    def region_label(self, nodes: Iterable[str]) -> str:
        return ", ".join(self.code[n] for n in nodes)

    # checks ----------------------------------------------------------------------

    def outcome_check(
        self,
        *,
        key: str,
        kind: str,
        tolerance: float,
        direction: str,
        metric: str,
        label: str,
        numerator: Sequence[str],
        rest: Sequence[str],
    ) -> dict[tuple[str, str | None], _Outcome]:
        """Municipality vs rest of region, provider vs all other providers of the region."""
        muni: dict[str, RateParts] = {}
        prov: dict[tuple[str, str], RateParts] = {}
        for node, answer in self.node_answers(key).items():
            parts = self.parts(node, answer, numerator, rest)
            if parts is None:
                continue
            muni[node] = parts
            for p in _keys_of(answer, "provider"):
                if p == NO_PROVIDER:
                    continue
                pp = self.parts(node, answer, numerator, rest, _equals("provider", p))
                if pp is not None:
                    prov[(node, p)] = pp
        test = (kind, tolerance, direction)
        out: dict[tuple[str, str | None], _Outcome] = {}
        for node, parts in muni.items():
            others = tuple(n for n in muni if n != node)
            ref = combine_parts(muni[n] for n in others)
            desc = f"rest of region ({self.region_label(others)})" if others else "rest of region"
            res = self.rate_metric(
                metric=metric,
                label=label,
                subject=Subject(self.code[node]),
                parts=parts,
                reference=(ref, desc, others) if others else None,
                test=test,
            )
            if res is not None:
                out[(node, None)] = res
        pooled_nodes = tuple(sorted({n for n, _ in prov}))
        for (node, p), parts in prov.items():
            ref = combine_parts(v for k, v in prov.items() if k != (node, p))
            count = len(prov) - 1
            desc = (
                f"all other providers of the region pooled ({count} in "
                f"{self.region_label(pooled_nodes)})"
            )
            res = self.rate_metric(
                metric=metric,
                label=label,
                subject=Subject(self.code[node], provider_id=p),
                parts=parts,
                reference=(ref, desc, pooled_nodes) if count else None,
                test=test,
            )
            if res is not None:
                out[(node, p)] = res
        return out

    def in_field(self, months: int) -> None:
        """Share of the employed who work in their certificate's field (descriptive)."""
        for node, answer in self.node_answers(q.KEY_EMPLOYMENT).items():
            subjects: list[tuple[Subject, RowPredicate | None]] = [(Subject(self.code[node]), None)]
            subjects += [
                (Subject(self.code[node], provider_id=p), _equals("provider", p))
                for p in _keys_of(answer, "provider")
                if p != NO_PROVIDER
            ]
            for subject, rows in subjects:
                parts = self.parts(
                    node, answer, ("employed_in_field",), ("employed_other_field",), rows
                )
                if parts is not None:
                    self.rate_metric(
                        metric=f"in_field_rate_{months}m",
                        label=f"Working in the certificate's field, of those employed "
                        f"{months} months after certification",
                        subject=subject,
                        parts=parts,
                    )

    def credential_inflation(
        self,
        pass_out: Mapping[tuple[str, str | None], _Outcome],
        emp_out: Mapping[tuple[str, str | None], _Outcome],
        tolerance: float,
    ) -> None:
        """(pass - pass_ref) - (emp - emp_ref) > tolerance, for municipalities and providers.

        Pass and employment estimates come from different queries (independent noise)
        and are treated as independent; the variance of d is the sum of all four.
        """
        for key in sorted(pass_out.keys() & emp_out.keys(), key=_subject_order):
            p, e = pass_out[key], emp_out[key]
            if not (p.testable and e.testable) or p.reference is None or e.reference is None:
                continue
            node, provider = key
            spread = Value(p.rate.value - e.rate.value, p.rate.var + e.rate.var, bounded=False)
            ref_spread = Value(
                p.reference.value - e.reference.value,
                p.reference.var + e.reference.var,
                bounded=False,
            )
            self.add_test(
                None,
                GapTest(
                    kind="credential_inflation",
                    metric="pass_employment_spread",
                    subject=Subject(self.code[node], provider_id=provider),
                    estimate=spread,
                    reference=Reference(p.reference_description, p.reference_nodes, ref_spread),
                    tolerance=tolerance,
                    direction=ABOVE,
                    context={
                        "pass": p.rate.value,
                        "pass_ref": p.reference.value,
                        "emp": e.rate.value,
                        "emp_ref": e.reference.value,
                    },
                ),
            )

    def disparity(self, tolerance: float, by: Sequence[str]) -> None:
        """Within a municipality: each group vs the rest of that municipality, two-sided."""
        c = self.plan.checks
        sources: list[tuple[str, str, str, Sequence[str], Sequence[str]]] = []
        if c.pass_rates is not None:
            sources.append(
                (q.KEY_PASS_RATES, "pass_rate", "Assessment pass rate", ("pass",), ("fail",))
            )
        if c.employment is not None:
            m = c.employment.months_after
            sources.append(
                (
                    q.KEY_EMPLOYMENT,
                    f"employment_rate_{m}m",
                    f"Employed {m} months after certification",
                    ("employed_in_field", "employed_other_field"),
                    ("not_employed",),
                )
            )
        for key, metric, label, num, rest in sources:
            for node, answer in self.node_answers(key).items():
                code = self.code[node]
                for dim in by:
                    if dim not in answer.group_by:
                        self.skip(f"{node}/{key}: answer not grouped by {dim}; no disparity test")
                        continue
                    focus, comparison = DISPARITY_GROUPS[dim]
                    parts = self.parts(node, answer, num, rest, _equals(dim, focus))
                    ref = self.parts(node, answer, num, rest, _equals(dim, comparison))
                    if parts is None or ref is None:
                        continue
                    self.rate_metric(
                        metric=metric,
                        label=label,
                        subject=Subject(code, group=f"{dim}={focus}"),
                        parts=parts,
                        reference=(ref, f"{_group_words(dim, comparison)} in {code}", (node,)),
                        test=("outcome_disparity", tolerance, TWO_SIDED),
                    )
                    self.rate_metric(
                        metric=metric,
                        label=label,
                        subject=Subject(code, group=f"{dim}={comparison}"),
                        parts=ref,
                    )

    def recognition(self, tolerance: float, limit: int) -> None:
        answers = self.node_answers(q.KEY_RECOGNITION_TIME)
        classes: dict[str, tuple[list[str], list[str], list[str], list[Bin]]] = {}
        for node, answer in list(answers.items()):
            try:
                classes[node] = _recognition_classes(answer, limit)
            except AnswerError as exc:
                self.skip(f"{node}: answer not used: {exc}")
                del answers[node]
        late: dict[str, RateParts] = {}
        for node, answer in answers.items():
            on_time, late_cats, pending_ok, _ = classes[node]
            parts = self.parts(node, answer, late_cats, [*on_time, *pending_ok])
            if parts is not None:
                late[node] = parts
        for node, parts in late.items():
            others = tuple(n for n in late if n != node)
            ref = combine_parts(late[n] for n in others)
            desc = f"rest of region ({self.region_label(others)})" if others else "rest of region"
            self.rate_metric(
                metric="recognition_late_share",
                label=f"Recognition requests decided after {limit} days or pending beyond it",
                subject=Subject(self.code[node]),
                parts=parts,
                reference=(ref, desc, others) if others else None,
                test=("recognition_delay", tolerance, ABOVE),
            )
        for node, answer in answers.items():
            on_time, late_cats, pending_ok, bins = classes[node]
            code = self.code[node]
            groups: list[tuple[Subject, RowPredicate | None]] = [(Subject(code), None)]
            groups += [
                (Subject(code, group=f"citizenship_group={g}"), _equals("citizenship_group", g))
                for g in DISPARITY_GROUPS["citizenship_group"]
                if "citizenship_group" in answer.group_by
            ]
            for subject, rows in groups:
                parts = self.parts(node, answer, on_time, [*late_cats, *pending_ok], rows)
                if parts is not None:
                    self.rate_metric(
                        metric="recognition_on_time_share",
                        label=f"Recognition requests decided within {limit} days "
                        "(of all requests, pending included)",
                        subject=subject,
                        parts=parts,
                    )
            for category in answer.categories:
                self.count_metric(
                    metric=f"recognition_{category}",
                    label=f"Recognition requests: {_recognition_words(category)}",
                    subject=Subject(code),
                    estimate=sum_cells(answer, where(categories={category})),
                )
            median = binned_quantile(bins, 0.5, self.z_plain)
            if median is not None:
                note = "median falls in the open last bin: shown at its lower edge"
                self.metrics.append(
                    Metric(
                        metric="recognition_median_days",
                        label="Median days from request to decision (decided requests)",
                        unit="days",
                        subject=Subject(code),
                        value=Value(median.value, 0.0, bounded=False),
                        ci=(median.low, median.high),
                        denominator=median.total,
                        note=note if median.open_ended else "",
                    )
                )
        for node, answer in self.node_answers(q.KEY_RECOGNITION_DECISIONS).items():
            code = self.code[node]
            decided = ("full", "partial", "rejected")
            for category in decided:
                others = tuple(d for d in decided if d != category)
                parts = self.parts(node, answer, (category,), others)
                if parts is not None:
                    self.rate_metric(
                        metric=f"recognition_{category}_share",
                        label=f"Decided recognition requests: {category} recognition"
                        if category != "rejected"
                        else "Decided recognition requests: rejected",
                        subject=Subject(code),
                        parts=parts,
                    )
            self.count_metric(
                metric="recognition_pending",
                label="Recognition requests pending",
                subject=Subject(code),
                estimate=sum_cells(answer, where(categories={"pending"})),
            )

    def appeals(self, tolerance: float) -> None:
        upheld: dict[str, RateParts] = {}
        answers = self.node_answers(q.KEY_APPEALS)
        for node, answer in answers.items():
            parts = self.parts(node, answer, ("upheld",), ("dismissed",))
            if parts is not None:
                upheld[node] = parts
        label = "Appeals upheld (of upheld and dismissed)"
        for node, parts in upheld.items():
            others = tuple(n for n in upheld if n != node)
            ref = combine_parts(upheld[n] for n in others)
            desc = f"rest of region ({self.region_label(others)})" if others else "rest of region"
            self.rate_metric(
                metric="appeal_upheld_rate",
                label=label,
                subject=Subject(self.code[node]),
                parts=parts,
                reference=(ref, desc, others) if others else None,
                test=("appeal_anomaly", tolerance, TWO_SIDED),
            )
        for node, answer in answers.items():
            if "subject_type" not in answer.group_by:
                continue
            for st in _keys_of(answer, "subject_type"):
                parts = self.parts(
                    node, answer, ("upheld",), ("dismissed",), _equals("subject_type", st)
                )
                if parts is not None:
                    self.rate_metric(
                        metric="appeal_upheld_rate",
                        label=f"{label}, appeals about a {st}",
                        subject=Subject(self.code[node], group=f"subject_type={st}"),
                        parts=parts,
                    )

    def certificates(self) -> None:
        for node, answer in self.node_answers(q.KEY_CERTIFICATES).items():
            code = self.code[node]
            for pathway in answer.categories:
                self.count_metric(
                    metric=f"certificates_{pathway}",
                    label=f"Certificates issued ({pathway.replace('_', ' ')})",
                    subject=Subject(code),
                    estimate=sum_cells(answer, where(categories={pathway})),
                )
            parts = self.parts(node, answer, ("reciprocity",), ("training", "prior_learning"))
            if parts is not None:
                self.rate_metric(
                    metric="certificates_reciprocity_share",
                    label="Certificates issued by reciprocity (of all issued)",
                    subject=Subject(code),
                    parts=parts,
                )
            for p in _keys_of(answer, "provider"):
                if p == NO_PROVIDER:
                    continue
                for pathway in ("training", "prior_learning"):
                    if pathway in answer.categories:
                        self.count_metric(
                            metric=f"certificates_{pathway}",
                            label=f"Certificates issued ({pathway.replace('_', ' ')})",
                            subject=Subject(code, provider_id=p),
                            estimate=sum_cells(answer, where(categories={pathway}, provider={p})),
                        )

    def earnings(self, months: int) -> None:
        for node, answer in self.node_answers(q.KEY_EARNINGS).items():
            code = self.code[node]
            bins: list[Bin] = []
            for category in answer.categories:
                estimate = sum_cells(answer, where(categories={category}))
                self.count_metric(
                    metric=f"earnings_{category}_{months}m",
                    label=f"Employed {months} months after certification earning "
                    f"{_earnings_words(category)} a month",
                    subject=Subject(code),
                    estimate=estimate,
                )
                edges = _earnings_edges(category)
                if edges is not None and estimate.n_cells:
                    bins.append(Bin(edges[0], edges[1], estimate))
            median = binned_quantile(sorted(bins, key=lambda b: b.low), 0.5, self.z_plain)
            if median is None:
                self.skip(f"earnings_median_{months}m in {code}: no earnings released")
                continue
            note = "median falls in the open top bin: shown at its lower edge"
            self.metrics.append(
                Metric(
                    metric=f"earnings_median_{months}m",
                    label=f"Median monthly earnings {months} months after certification "
                    "(of the employed who reported earnings)",
                    unit="currency",
                    subject=Subject(code),
                    value=Value(median.value, 0.0, bounded=False),
                    ci=(median.low, median.high),
                    denominator=median.total,
                    note=note if median.open_ended else "",
                )
            )

    # error control -----------------------------------------------------------------

    def finish(self) -> Evaluation:
        plan = self.plan
        alpha = 1.0 - plan.confidence
        m = len(self.tests)
        untested = sum(1 for t in self.metrics if t.note.startswith("not tested"))
        if m:
            per_test = 1.0 - alpha / m
            z = NormalDist().inv_cdf(1.0 - alpha / (2 * m))
        else:
            per_test, z = plan.confidence, self.z_plain
        metrics = list(self.metrics)
        for index, test_index in self.pending.items():
            test = self.tests[test_index]
            metrics[index] = replace(
                metrics[index],
                ci=test.estimate.interval(z),
                reference=test.reference,
                reference_ci=test.reference.value.interval(z),
                tested=True,
            )
        findings: list[Finding] = []
        for test in self.tests:
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
                    summary=_summary(test, z, severity, plan),
                )
            )
        findings.sort(key=lambda f: (f.severity != "critical", _KIND_ORDER[f.kind]))
        control = ErrorControl(
            method="bonferroni" if m else "none",
            tests=m,
            family_confidence=plan.confidence,
            per_test_confidence=per_test,
            z=z,
            untested=untested,
            description=_control_sentence(plan, m, per_test, untested),
        )
        return Evaluation(
            metrics=tuple(metrics),
            tests=tuple(self.tests),
            findings=tuple(findings),
            error_control=control,
            skipped=tuple(self.skipped),
        )


# --- helpers --------------------------------------------------------------------------

_KIND_ORDER = {
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
_DAY_BIN = re.compile(r"^d(\d+)_(\d+|plus)$")
_EARNINGS_LT = re.compile(r"^lt_(\d+)$")
_EARNINGS_GE = re.compile(r"^ge_(\d+)$")
_EARNINGS_RANGE = re.compile(r"^(\d+)_(\d+)$")


def _municipality(node: str, answers: Mapping[str, Answer]) -> str:
    codes = {a.municipality_code for a in answers.values() if a.municipality_code}
    return codes.pop() if len(codes) == 1 else node


def _keys_of(answer: Answer, dim: str) -> list[str]:
    if dim not in answer.group_by:
        return []
    i = answer.group_by.index(dim)
    return sorted({cell.keys[i] for cell in answer.cells if len(cell.keys) > i})


def _equals(dim: str, key: str) -> RowPredicate:
    return lambda keys: keys.get(dim) == key


def _subject_order(key: tuple[str, str | None]) -> tuple[str, str]:
    return (key[0], key[1] or "")


def _recognition_classes(
    answer: Answer, limit: int
) -> tuple[list[str], list[str], list[str], list[Bin]]:
    """Split recognition_decision_time categories: on time, late, pending in time; day bins."""
    on_time: list[str] = []
    late: list[str] = []
    pending_ok: list[str] = []
    bins: list[Bin] = []
    for category in answer.categories:
        if category == "pending_within_limit":
            pending_ok.append(category)
            continue
        if category == "pending_overdue":
            late.append(category)
            continue
        match = _DAY_BIN.match(category)
        if match is None:
            raise AnswerError(
                f"{answer.municipality_code}/{answer.template}: unknown category {category!r}"
            )
        low = int(match.group(1))
        high = math.inf if match.group(2) == "plus" else int(match.group(2)) + 1
        (on_time if high - 1 <= limit else late).append(category)
        count = sum_cells(answer, where(categories={category}))
        if count.n_cells:
            bins.append(Bin(low, high, count))
    return on_time, late, pending_ok, bins


def _recognition_words(category: str) -> str:
    if category == "pending_within_limit":
        return "pending, within the limit"
    if category == "pending_overdue":
        return "pending, overdue"
    match = _DAY_BIN.match(category)
    if match is None:
        return category
    if match.group(2) == "plus":
        return f"decided after {match.group(1)} days or more"
    return f"decided in {match.group(1)}-{match.group(2)} days"


def _earnings_edges(category: str) -> tuple[float, float] | None:
    if m := _EARNINGS_LT.match(category):
        return (0.0, float(m.group(1)))
    if m := _EARNINGS_GE.match(category):
        return (float(m.group(1)), math.inf)
    if m := _EARNINGS_RANGE.match(category):
        return (float(m.group(1)), float(m.group(2)) + 1)
    return None


def _earnings_words(category: str) -> str:
    if m := _EARNINGS_LT.match(category):
        return f"less than {m.group(1)}"
    if m := _EARNINGS_GE.match(category):
        return f"{m.group(1)} or more"
    if m := _EARNINGS_RANGE.match(category):
        return f"{m.group(1)}-{m.group(2)}"
    return "an unreported amount" if category == "not_reported" else category


def _group_words(dim: str, key: str) -> str:
    if dim == "subject_type":
        return f"appeals about a {key}"
    if dim == "sex":
        return {"female": "women", "male": "men"}.get(key, f"sex {key}")
    return f"{key} candidates"


def _where(subject: Subject) -> str:
    if subject.provider_id is not None:
        return f"at provider {subject.provider_id} ({subject.municipality})"
    if subject.group is not None:
        dim, _, key = subject.group.partition("=")
        return f"for {_group_words(dim, key)} in {subject.municipality}"
    return f"in {subject.municipality}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _pts(x: float) -> str:
    return f"{abs(100 * x):.0f} points"


def _range(ci: tuple[float, float]) -> str:
    return f"{100 * ci[0]:.0f}–{100 * ci[1]:.0f}%"


def _side(x: float) -> str:
    return "above" if x > 0 else "below"


def _summary(test: GapTest, z: float, severity: str, plan: AuditPlan) -> str:
    """One plain-language sentence for the oversight board."""
    est, ref, gap = test.estimate.value, test.reference.value.value, test.gap
    ci = test.estimate.interval(z)
    tol = f"{100 * test.tolerance:g}-point tolerance"
    beyond = f"twice the {tol}" if severity == "critical" else f"the {tol}"
    conf = f"{100 * plan.confidence:g}% confidence"
    s = test.subject
    if test.kind == "credential_inflation":
        c = test.context
        months = plan.checks.employment.months_after if plan.checks.employment else 12
        low, high = test.gap_interval(z)
        who = "the other providers" if s.provider_id else "the rest of the region"
        return (
            f"{_where(s)[0].upper()}{_where(s)[1:]}, the pass rate is {_pct(c['pass'])} against "
            f"{_pct(c['pass_ref'])} for {who}, while employment {months} months after "
            f"certification is {_pct(c['emp'])} against {_pct(c['emp_ref'])}: pass rates "
            f"outrun job outcomes by {_pts(gap)} ({100 * low:.0f} to {100 * high:.0f}), "
            f"beyond {beyond} at {conf}."
        )
    if s.provider_id:
        reference = "the region's other providers"
    elif s.group:
        reference = test.reference.description  # e.g. "national candidates in M05"
    else:
        reference = "the rest of the region"
    tail = (
        f"{_pts(gap)} {_side(gap)} {reference} ({_pct(ref)}); the gap exceeds {beyond} at {conf}."
    )
    if test.kind == "pass_rate_gap":
        return f"The assessment pass rate {_where(s)} is {_pct(est)} ({_range(ci)}), {tail}"
    if test.kind == "employment_gap":
        months = plan.checks.employment.months_after if plan.checks.employment else 12
        return (
            f"Employment {months} months after certification {_where(s)} is {_pct(est)} "
            f"({_range(ci)}), {tail}"
        )
    if test.kind == "recognition_delay":
        limit = plan.checks.recognition.limit_days if plan.checks.recognition else 90
        return (
            f"In {s.municipality}, {_pct(est)} ({_range(ci)}) of recognition requests were "
            f"decided after the {limit}-day limit or are overdue, {tail}"
        )
    if test.kind == "appeal_anomaly":
        return (
            f"In {s.municipality}, {_pct(est)} ({_range(ci)}) of decided appeals were upheld, "
            f"{tail}"
        )
    dim, _, key = (s.group or "").partition("=")
    what = "assessment pass rate" if test.metric == "pass_rate" else "employment rate"
    return (
        f"In {s.municipality}, the {what} of {_group_words(dim, key)} is {_pct(est)} "
        f"({_range(ci)}), {tail}"
    )


def _control_sentence(plan: AuditPlan, m: int, per_test: float, untested: int) -> str:
    conf = f"{100 * plan.confidence:g}%"
    skipped = (
        f" {untested} estimate(s) with fewer than {plan.min_denominator} in a denominator were "
        "reported but not tested."
        if untested
        else ""
    )
    if m == 0:
        return "No test could be performed, so no finding was possible." + skipped
    return (
        f"Bonferroni correction over all {m} tests of this audit: each test's interval is at "
        f"{100 * per_test:.4g}% confidence, so the chance of even one false finding in the "
        f"whole audit is at most {100 - 100 * plan.confidence:.3g}% (family-wise confidence "
        f"{conf}). A finding needs the whole interval of its gap, DP noise and sampling "
        "variability included, beyond the check's tolerance. Tested metrics and their "
        f"references show these adjusted intervals; other metrics show {conf} intervals." + skipped
    )


def _r(x: float) -> float:
    return round(x, 6)


def _ci(ci: tuple[float, float]) -> list[float]:
    return [_r(ci[0]), _r(ci[1])]


__all__ = [
    "ErrorControl",
    "Evaluation",
    "Finding",
    "GapTest",
    "Metric",
    "Reference",
    "Subject",
    "Value",
    "evaluate",
]
