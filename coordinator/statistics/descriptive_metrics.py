"""Descriptive metrics that are reported but never tested: certificates and earnings.

The plan asks for these to give the board context (how many certificates were issued
by which pathway, what certified people earn), not to flag anyone: there is no agreed
tolerance for them. So they add metrics only, never a test, and do not count in the
audit's Bonferroni divisor.

Earnings answers come as monthly bands ("lt_500", "500_999", ..., "ge_5000");
`earnings_edges` reads their bounds for the median.
"""

from __future__ import annotations

import math
import re

from fedaudit.coordinator.planning import checks as q
from fedaudit.coordinator.statistics.estimates import Bin, binned_quantile, sum_cells, where
from fedaudit.coordinator.statistics.gap_tests import Subject
from fedaudit.coordinator.statistics.metrics import NO_PROVIDER, MetricCollector, keys_of

_EARNINGS_LT = re.compile(r"^lt_(\d+)$")
_EARNINGS_GE = re.compile(r"^ge_(\d+)$")
_EARNINGS_RANGE = re.compile(r"^(\d+)_(\d+)$")


def earnings_edges(category: str) -> tuple[float, float] | None:
    """[low, high) of an earnings band (high may be inf); None for a non-band category."""
    if m := _EARNINGS_LT.match(category):
        return (0.0, float(m.group(1)))
    if m := _EARNINGS_GE.match(category):
        return (float(m.group(1)), math.inf)
    if m := _EARNINGS_RANGE.match(category):
        return (float(m.group(1)), float(m.group(2)) + 1)
    return None


def earnings_words(category: str) -> str:
    """An earnings category as it reads in a metric label."""
    if m := _EARNINGS_LT.match(category):
        return f"less than {m.group(1)}"
    if m := _EARNINGS_GE.match(category):
        return f"{m.group(1)} or more"
    if m := _EARNINGS_RANGE.match(category):
        return f"{m.group(1)}-{m.group(2)}"
    return "an unreported amount" if category == "not_reported" else category


def certificates(book: MetricCollector) -> None:
    """Certificates per pathway per municipality and provider, and the reciprocity share."""
    for node, answer in book.node_answers(q.KEY_CERTIFICATES).items():
        code = book.code[node]
        for pathway in answer.categories:
            book.count_metric(
                metric=f"certificates_{pathway}",
                label=f"Certificates issued ({pathway.replace('_', ' ')})",
                subject=Subject(code),
                estimate=sum_cells(answer, where(categories={pathway})),
            )
        parts = book.parts(node, answer, ("reciprocity",), ("training", "prior_learning"))
        if parts is not None:
            book.rate_metric(
                metric="certificates_reciprocity_share",
                label="Certificates issued by reciprocity (of all issued)",
                subject=Subject(code),
                parts=parts,
            )
        for p in keys_of(answer, "provider"):
            if p == NO_PROVIDER:
                continue
            for pathway in ("training", "prior_learning"):
                if pathway in answer.categories:
                    book.count_metric(
                        metric=f"certificates_{pathway}",
                        label=f"Certificates issued ({pathway.replace('_', ' ')})",
                        subject=Subject(code, provider_id=p),
                        estimate=sum_cells(answer, where(categories={pathway}, provider={p})),
                    )


def earnings(book: MetricCollector, months: int) -> None:
    """Counts per earnings band and the median monthly earnings, per municipality."""
    for node, answer in book.node_answers(q.KEY_EARNINGS).items():
        code = book.code[node]
        bins: list[Bin] = []
        for category in answer.categories:
            estimate = sum_cells(answer, where(categories={category}))
            book.count_metric(
                metric=f"earnings_{category}_{months}m",
                label=f"Employed {months} months after certification earning "
                f"{earnings_words(category)} a month",
                subject=Subject(code),
                estimate=estimate,
            )
            edges = earnings_edges(category)
            if edges is not None and estimate.n_cells:
                bins.append(Bin(edges[0], edges[1], estimate))
        median = binned_quantile(sorted(bins, key=lambda b: b.low), 0.5, book.z_plain)
        if median is None:
            book.skip(f"earnings_median_{months}m in {code}: no earnings released")
            continue
        book.median_metric(
            metric=f"earnings_median_{months}m",
            label=f"Median monthly earnings {months} months after certification "
            "(of the employed who reported earnings)",
            unit="currency",
            subject=Subject(code),
            median=median,
            open_note="median falls in the open top bin: shown at its lower edge",
        )


__all__ = ["certificates", "earnings", "earnings_edges", "earnings_words"]
