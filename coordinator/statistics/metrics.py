"""Per-subject metrics from node answers, and the candidate tests they come with.

Every check turns node answers into the same few things: a share (a rate with its
interval and denominator), a count, or a median, per municipality, provider or group;
and, for the shares a check tests, a `GapTest` against a reference. This module holds
the shared machinery so each check only says *what* to compute:

- `MetricCollector` gathers one audit's metrics, its candidate tests and the reasons
  anything was left out, in a fixed order (metric ids in the report follow it);
- its `rate_metric` applies the audit's rule for testing: a share is tested only when
  its own (noisy) denominator and its reference's both reach `plan.min_denominator`,
  and the metric's note says why it was not. Untested metrics do not count in the
  Bonferroni divisor (see `error_control`).

Intervals here are at the plan's plain confidence; the tested ones are widened to the
audit's adjusted z once the number of tests is known (`error_control.adjust_tested`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from fedaudit.coordinator.errors import AnswerError
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.statistics.estimates import (
    Estimate,
    Quantile,
    Rate,
    RateParts,
    RowPredicate,
    combine_parts,
    rate_parts,
    z_for,
)
from fedaudit.coordinator.statistics.gap_tests import GapTest, Reference, Subject, Value
from fedaudit.coordinator.statistics.wording import place_words
from fedaudit.node.domain import Answer

log = structlog.get_logger(__name__)

NO_PROVIDER = "none"
"""The provider key of records without a provider (e.g. reciprocity certificates)."""

RateReference = tuple[RateParts, str, tuple[str, ...]]
"""A reference for a share: its pooled rate parts, description and the nodes it pooled."""

RateTest = tuple[str, float, str]
"""What a tested share is tested for: (kind, tolerance, direction)."""


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
    ci_level: float | None = None
    """The confidence of `ci` (the plan's, or its test's step under the error control)."""


@dataclass(frozen=True)
class NotAssessable:
    """A check that could not be assessed for a subject, and why (its data are absent)."""

    check: str
    subject: Subject
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "check": self.check,
            "subject": self.subject.to_dict(),
            "where": place_words(self.subject),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Outcome:
    """A subject's rate, its reference rate, and whether the comparison is testable."""

    rate: Rate
    reference: Rate | None
    testable: bool
    reference_description: str = ""
    reference_nodes: tuple[str, ...] = ()


class MetricCollector:
    """Collects one audit's metrics and candidate tests, in the order the checks add them."""

    def __init__(self, plan: AuditPlan, answers: Mapping[str, Mapping[str, Answer]]) -> None:
        self.plan = plan
        self.answers = answers
        self.nodes = sorted(answers)
        self.code = {n: municipality_of(n, answers[n]) for n in self.nodes}
        self.z_plain = z_for(plan.confidence)
        self.metrics: list[Metric] = []
        self.tests: list[GapTest] = []
        self.pending: dict[int, int] = {}  # metric index -> test index
        self.skipped: list[str] = []
        self.not_assessable: list[NotAssessable] = []

    # answers ---------------------------------------------------------------------

    def answer(self, node: str, key: str) -> Answer | None:
        """A node's answer to query `key`, None when the node did not answer it."""
        return self.answers[node].get(key)

    def node_answers(self, key: str) -> dict[str, Answer]:
        """Node -> answer to query `key`, for the nodes that answered it (sorted by node)."""
        return {n: a for n in self.nodes if (a := self.answer(n, key)) is not None}

    def region_label(self, nodes: Iterable[str]) -> str:
        """The municipality codes of `nodes`, as a reference description lists them."""
        return ", ".join(self.code[n] for n in nodes)

    def rest_of_region(self, node: str, parts: Mapping[str, RateParts]) -> RateReference | None:
        """The other nodes' parts pooled, as the reference of `node`; None if it is alone."""
        others = tuple(n for n in parts if n != node)
        if not others:
            return None
        ref = combine_parts(parts[n] for n in others)
        return (ref, f"rest of region ({self.region_label(others)})", others)

    # building blocks -------------------------------------------------------------

    def parts(
        self,
        node: str,
        answer: Answer,
        numerator: Sequence[str],
        rest: Sequence[str],
        rows: RowPredicate | None = None,
    ) -> RateParts | None:
        """The rate parts of `answer`, or None (and a skip reason) if the answer is unusable."""
        try:
            return rate_parts(answer, numerator, rest, rows)
        except AnswerError as exc:
            self.skip(f"{node}: answer not used: {exc}")
            return None

    def assessable(self, check: str, node: str, parts: RateParts, what: str) -> bool:
        """False (and a `not_assessable` entry) when a node's data for a check are absent.

        The test is on the released total itself (post-processing, so it costs and
        reveals nothing more): when the noisy denominator lies within its own interval
        of zero, or when most group rows were withheld as small and what was released
        stays below `min_denominator`, the node holds no (or too few) records of `what`,
        e.g. no employment outcomes at the plan's horizon. Such a node is left out of the
        check and of every reference, instead of adding a noisy near-zero rate.
        """
        sd = (parts.numerator.noise_var + parts.rest.noise_var) ** 0.5
        min_den = self.plan.min_denominator
        # A node that suppresses small groups releases only the rows whose noise happened
        # to be large: when most rows were withheld and what is left is small, that
        # remainder is selected noise, not data.
        mostly_withheld = parts.withheld_rows > parts.rows and parts.denominator < min_den
        if parts.rows and parts.denominator > self.z_plain * sd and not mostly_withheld:
            return True
        subject = Subject(self.code[node])
        if parts.rows and mostly_withheld:
            total = parts.rows + parts.withheld_rows
            reason = (
                f"no {what} recorded at this node, or too few to assess: the released total "
                f"({parts.denominator:.0f}) is below {min_den} and {parts.withheld_rows} of "
                f"{total} group rows were withheld as small"
            )
        else:
            reason = (
                f"no {what} recorded at this node: the released total "
                f"({parts.denominator:.0f}) cannot be told apart from zero"
            )
        self.not_assessable.append(NotAssessable(check, subject, reason))
        self.skip(f"{check} {place_words(subject)}: not assessable: {reason}")
        return False

    def was_not_assessable(self, check: str, node: str) -> bool:
        """True when `check` was found not assessable at `node` (see `assessable`)."""
        code = self.code[node]
        return any(
            n.check == check and n.subject.municipality == code and n.subject.provider_id is None
            for n in self.not_assessable
        )

    def skip(self, message: str) -> None:
        """Record why something produced no metric (Evaluation.skipped)."""
        log.debug("metric_skipped", reason=message)
        self.skipped.append(message)

    def rate_metric(
        self,
        *,
        metric: str,
        label: str,
        subject: Subject,
        parts: RateParts,
        reference: RateReference | None = None,
        test: RateTest | None = None,
    ) -> Outcome | None:
        """Add a share metric (and its test when `test` and both sides are large enough)."""
        where_ = place_words(subject)
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
                ci_level=self.plan.confidence,
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
        return Outcome(r, ref_rate, testable, ref_desc, ref_nodes)

    def add_test(self, metric_index: int | None, test: GapTest) -> None:
        """Add a test; `metric_index` names the metric whose interval it will adjust."""
        self.tests.append(test)
        if metric_index is not None:
            self.pending[metric_index] = len(self.tests) - 1

    def count_metric(
        self, *, metric: str, label: str, subject: Subject, estimate: Estimate, unit: str = "count"
    ) -> None:
        """Add a count (never tested), or a skip reason when nothing of it was released."""
        if estimate.n_cells == 0:
            why = "withheld by the node (suppressed)" if estimate.missing_cells else "not released"
            self.skip(f"{metric} {place_words(subject)}: not reported: {why}")
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
                ci_level=self.plan.confidence,
            )
        )

    def median_metric(
        self,
        *,
        metric: str,
        label: str,
        unit: str,
        subject: Subject,
        median: Quantile,
        open_note: str,
    ) -> None:
        """Add a median of a binned distribution (never tested), with its Woodruff interval."""
        self.metrics.append(
            Metric(
                metric=metric,
                label=label,
                unit=unit,
                subject=subject,
                value=Value(median.value, 0.0, bounded=False),
                ci=(median.low, median.high),
                denominator=median.total,
                note=open_note if median.open_ended else "",
                ci_level=self.plan.confidence,
            )
        )


# --- reading answers ------------------------------------------------------------------


def municipality_of(node: str, answers: Mapping[str, Answer]) -> str:
    """The municipality code a node's answers carry, or the node name if they disagree."""
    codes = {a.municipality_code for a in answers.values() if a.municipality_code}
    return codes.pop() if len(codes) == 1 else node


def keys_of(answer: Answer, dim: str) -> list[str]:
    """The sorted keys of dimension `dim` in an answer's cells (empty if not grouped by it)."""
    if dim not in answer.group_by:
        return []
    i = answer.group_by.index(dim)
    return sorted({cell.keys[i] for cell in answer.cells if len(cell.keys) > i})


def equals(dim: str, key: str) -> RowPredicate:
    """Selects the group rows whose `dim` key is `key`."""
    return lambda keys: keys.get(dim) == key


__all__ = [
    "NO_PROVIDER",
    "Metric",
    "MetricCollector",
    "NotAssessable",
    "Outcome",
    "RateReference",
    "RateTest",
    "equals",
    "keys_of",
    "municipality_of",
]
