"""The administrative-procedure checks: recognition of foreign qualifications, appeals.

Unlike the outcome checks, these look at how a municipality handles requests: how
many recognition requests it decides after the legal limit (or leaves overdue), and
how many appeals against its decisions are upheld. Each is tested per municipality
against the rest of the region; the rest (on-time shares by group, decision mix,
median days, appeals by subject type) is reported but not tested.

Recognition answers come as day bins ("d0_30", ..., "d366_plus") plus two pending
categories; `recognition_classes` sorts them against the plan's limit.
"""

from __future__ import annotations

import math
import re

from fedaudit.coordinator.errors import AnswerError
from fedaudit.coordinator.planning import checks as q
from fedaudit.coordinator.statistics.estimates import (
    Bin,
    RateParts,
    RowPredicate,
    binned_quantile,
    sum_cells,
    where,
)
from fedaudit.coordinator.statistics.gap_tests import ABOVE, TWO_SIDED, Subject
from fedaudit.coordinator.statistics.metrics import MetricCollector, equals, keys_of
from fedaudit.coordinator.statistics.outcome_checks import DISPARITY_GROUPS
from fedaudit.node.domain import Answer

_DAY_BIN = re.compile(r"^d(\d+)_(\d+|plus)$")

RecognitionClasses = tuple[list[str], list[str], list[str], list[Bin]]
"""On-time categories, late ones, pending within the limit, and the decided day bins."""


def recognition_classes(answer: Answer, limit: int) -> RecognitionClasses:
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


def recognition_words(category: str) -> str:
    """A recognition category as it reads in a metric label."""
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


def recognition(book: MetricCollector, tolerance: float, limit: int) -> None:
    """Late share tested per municipality; on-time shares, counts, median days described."""
    answers = book.node_answers(q.KEY_RECOGNITION_TIME)
    classes: dict[str, RecognitionClasses] = {}
    for node, answer in list(answers.items()):
        try:
            classes[node] = recognition_classes(answer, limit)
        except AnswerError as exc:
            book.skip(f"{node}: answer not used: {exc}")
            del answers[node]
    late: dict[str, RateParts] = {}
    for node, answer in answers.items():
        on_time, late_cats, pending_ok, _ = classes[node]
        parts = book.parts(node, answer, late_cats, [*on_time, *pending_ok])
        if parts is not None and book.assessable(
            "recognition", node, parts, "recognition requests"
        ):
            late[node] = parts
    for node, parts in late.items():
        book.rate_metric(
            metric="recognition_late_share",
            label=f"Recognition requests decided after {limit} days or pending beyond it",
            subject=Subject(book.code[node]),
            parts=parts,
            reference=book.rest_of_region(node, late),
            test=("recognition_delay", tolerance, ABOVE),
        )
    for node, answer in answers.items():
        _recognition_descriptives(book, node, answer, classes[node], limit)
    _recognition_decisions(book)


def _recognition_descriptives(
    book: MetricCollector, node: str, answer: Answer, classes: RecognitionClasses, limit: int
) -> None:
    on_time, late_cats, pending_ok, bins = classes
    code = book.code[node]
    groups: list[tuple[Subject, RowPredicate | None]] = [(Subject(code), None)]
    groups += [
        (Subject(code, group=f"citizenship_group={g}"), equals("citizenship_group", g))
        for g in DISPARITY_GROUPS["citizenship_group"]
        if "citizenship_group" in answer.group_by
    ]
    for subject, rows in groups:
        parts = book.parts(node, answer, on_time, [*late_cats, *pending_ok], rows)
        if parts is not None:
            book.rate_metric(
                metric="recognition_on_time_share",
                label=f"Recognition requests decided within {limit} days "
                "(of all requests, pending included)",
                subject=subject,
                parts=parts,
            )
    for category in answer.categories:
        book.count_metric(
            metric=f"recognition_{category}",
            label=f"Recognition requests: {recognition_words(category)}",
            subject=Subject(code),
            estimate=sum_cells(answer, where(categories={category})),
        )
    median = binned_quantile(bins, 0.5, book.z_plain)
    if median is not None:
        book.median_metric(
            metric="recognition_median_days",
            label="Median days from request to decision (decided requests)",
            unit="days",
            subject=Subject(code),
            median=median,
            open_note="median falls in the open last bin: shown at its lower edge",
        )


def _recognition_decisions(book: MetricCollector) -> None:
    for node, answer in book.node_answers(q.KEY_RECOGNITION_DECISIONS).items():
        code = book.code[node]
        decided = ("full", "partial", "rejected")
        for category in decided:
            others = tuple(d for d in decided if d != category)
            parts = book.parts(node, answer, (category,), others)
            if parts is not None:
                book.rate_metric(
                    metric=f"recognition_{category}_share",
                    label=f"Decided recognition requests: {category} recognition"
                    if category != "rejected"
                    else "Decided recognition requests: rejected",
                    subject=Subject(code),
                    parts=parts,
                )
        book.count_metric(
            metric="recognition_pending",
            label="Recognition requests pending",
            subject=Subject(code),
            estimate=sum_cells(answer, where(categories={"pending"})),
        )


def appeals(book: MetricCollector, tolerance: float) -> None:
    """Upheld share tested two-sided per municipality; by subject type described."""
    upheld: dict[str, RateParts] = {}
    answers = book.node_answers(q.KEY_APPEALS)
    for node, answer in answers.items():
        parts = book.parts(node, answer, ("upheld",), ("dismissed",))
        if parts is not None and book.assessable("appeals", node, parts, "decided appeals"):
            upheld[node] = parts
    label = "Appeals upheld (of upheld and dismissed)"
    for node, parts in upheld.items():
        book.rate_metric(
            metric="appeal_upheld_rate",
            label=label,
            subject=Subject(book.code[node]),
            parts=parts,
            reference=book.rest_of_region(node, upheld),
            test=("appeal_anomaly", tolerance, TWO_SIDED),
        )
    for node, answer in answers.items():
        if "subject_type" not in answer.group_by:
            continue
        for st in keys_of(answer, "subject_type"):
            parts = book.parts(
                node, answer, ("upheld",), ("dismissed",), equals("subject_type", st)
            )
            if parts is not None:
                book.rate_metric(
                    metric="appeal_upheld_rate",
                    label=f"{label}, appeals about a {st}",
                    subject=Subject(book.code[node], group=f"subject_type={st}"),
                    parts=parts,
                )


__all__ = ["appeals", "recognition", "recognition_classes", "recognition_words"]
