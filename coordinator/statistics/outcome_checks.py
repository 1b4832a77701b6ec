"""The candidate-outcome checks: pass rates, employment, credential inflation, disparities.

These checks share one idea: a candidate's outcome (passing the assessment, having a
job some months after certification) should not depend on where or by whom they were
certified, nor on their group. Each subject's share is compared with a reference
pooled from disjoint data:

- a municipality with the rest of the region, a provider with all other providers of
  the region (`outcome_gaps`);
- credential inflation (`credential_inflation`): a pass rate above its reference while
  employment is below its own, each beyond its interval, and the spread between the two
  gaps beyond the tolerance: certificates easier to get than the outcomes justify;
- within a municipality, one group with the other (`disparity`), one test per
  dimension (see `DISPARITY_GROUPS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedaudit.coordinator.planning import checks as q
from fedaudit.coordinator.planning.plan import AuditPlan, EmploymentCheck, PassRatesCheck
from fedaudit.coordinator.statistics.estimates import RateParts, RowPredicate, combine_parts
from fedaudit.coordinator.statistics.gap_tests import (
    ABOVE,
    BELOW,
    TWO_SIDED,
    Condition,
    GapTest,
    Reference,
    Subject,
    Value,
)
from fedaudit.coordinator.statistics.metrics import (
    NO_PROVIDER,
    MetricCollector,
    NotAssessable,
    Outcome,
    equals,
    keys_of,
)
from fedaudit.coordinator.statistics.wording import group_words

DISPARITY_GROUPS: Mapping[str, tuple[str, ...]] = {
    "citizenship_group": ("foreign", "national"),
    "sex": ("female", "male"),
}
"""Per disparity dimension: the group tested, then the group it is compared with.

One test per dimension, metric and municipality: with two groups, "A vs rest" and
"B vs rest" are the same comparison, and counting it twice would both double the
findings and loosen nothing but the Bonferroni divisor.
"""

Outcomes = dict[tuple[str, str | None], Outcome]
"""(node, provider or None) -> the subject's outcome, as credential inflation pairs them."""

EMPLOYED = ("employed_in_field", "employed_other_field")
"""The employment categories counted as employed."""


def pass_rate_gaps(book: MetricCollector, check: PassRatesCheck) -> Outcomes:
    """Pass rates per municipality and provider, each tested two-sided against its reference."""
    return outcome_gaps(
        book,
        check="pass_rates",
        what="assessment results",
        key=q.KEY_PASS_RATES,
        kind="pass_rate_gap",
        tolerance=check.tolerance,
        direction=TWO_SIDED,
        metric="pass_rate",
        label="Assessment pass rate (passed / assessed)",
        numerator=("pass",),
        rest=("fail",),
    )


def employment_gaps(book: MetricCollector, check: EmploymentCheck) -> Outcomes:
    """Employment rates per municipality and provider; only a shortfall is flagged."""
    m = check.months_after
    return outcome_gaps(
        book,
        check="employment",
        what=f"employment outcomes {m} months after certification",
        key=q.KEY_EMPLOYMENT,
        kind="employment_gap",
        tolerance=check.tolerance,
        direction=BELOW,
        metric=f"employment_rate_{m}m",
        label=f"Employed {m} months after certification (of those with a known status)",
        numerator=EMPLOYED,
        rest=("not_employed",),
    )


def outcome_gaps(
    book: MetricCollector,
    *,
    check: str,
    what: str,
    key: str,
    kind: str,
    tolerance: float,
    direction: str,
    metric: str,
    label: str,
    numerator: Sequence[str],
    rest: Sequence[str],
) -> Outcomes:
    """Municipality vs rest of region, provider vs all other providers of the region."""
    muni: dict[str, RateParts] = {}
    prov: dict[tuple[str, str], RateParts] = {}
    for node, answer in book.node_answers(key).items():
        parts = book.parts(node, answer, numerator, rest)
        if parts is None or not book.assessable(check, node, parts, what):
            continue
        muni[node] = parts
        for p in keys_of(answer, "provider"):
            if p == NO_PROVIDER:
                continue
            pp = book.parts(node, answer, numerator, rest, equals("provider", p))
            if pp is not None:
                prov[(node, p)] = pp
    test = (kind, tolerance, direction)
    out: Outcomes = {}
    for node, parts in muni.items():
        res = book.rate_metric(
            metric=metric,
            label=label,
            subject=Subject(book.code[node]),
            parts=parts,
            reference=book.rest_of_region(node, muni),
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
            f"{book.region_label(pooled_nodes)})"
        )
        res = book.rate_metric(
            metric=metric,
            label=label,
            subject=Subject(book.code[node], provider_id=p),
            parts=parts,
            reference=(ref, desc, pooled_nodes) if count else None,
            test=test,
        )
        if res is not None:
            out[(node, p)] = res
    return out


def in_field(book: MetricCollector, months: int) -> None:
    """Share of the employed who work in their certificate's field (descriptive)."""
    for node, answer in book.node_answers(q.KEY_EMPLOYMENT).items():
        if book.was_not_assessable("employment", node):
            continue
        subjects: list[tuple[Subject, RowPredicate | None]] = [(Subject(book.code[node]), None)]
        subjects += [
            (Subject(book.code[node], provider_id=p), equals("provider", p))
            for p in keys_of(answer, "provider")
            if p != NO_PROVIDER
        ]
        for subject, rows in subjects:
            parts = book.parts(
                node, answer, ("employed_in_field",), ("employed_other_field",), rows
            )
            if parts is not None:
                book.rate_metric(
                    metric=f"in_field_rate_{months}m",
                    label=f"Working in the certificate's field, of those employed "
                    f"{months} months after certification",
                    subject=subject,
                    parts=parts,
                )


def _subject_order(key: tuple[str, str | None]) -> tuple[str, str]:
    return (key[0], key[1] or "")


def credential_inflation(
    book: MetricCollector,
    pass_out: Mapping[tuple[str, str | None], Outcome],
    emp_out: Mapping[tuple[str, str | None], Outcome],
    tolerance: float,
) -> None:
    """Pass rate above its reference AND employment below its own, for municipalities and providers.

    Credential inflation means passing more people than the outcomes justify. So the
    test flags only when three things hold, each by its own interval (an
    intersection-union test, one test in the audit's family): the pass rate lies above
    its reference, employment lies below its reference, and the spread
    (pass - pass_ref) - (emp - emp_ref) exceeds the tolerance. Low employment with an
    ordinary pass rate is an employment gap, not inflation. Pass and employment come
    from different queries (independent noise); every variance is the sum of its parts.
    """
    for node in sorted({n for n, p in pass_out if p is None}):
        if book.was_not_assessable("employment", node):
            book.not_assessable.append(
                NotAssessable(
                    "credential_inflation",
                    Subject(book.code[node]),
                    "needs employment outcomes, which are not assessable here (see employment)",
                )
            )
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
        pass_gap = Value(
            p.rate.value - p.reference.value, p.rate.var + p.reference.var, bounded=False
        )
        emp_gap = Value(
            e.rate.value - e.reference.value, e.rate.var + e.reference.var, bounded=False
        )
        book.add_test(
            None,
            GapTest(
                kind="credential_inflation",
                metric="pass_employment_spread",
                subject=Subject(book.code[node], provider_id=provider),
                estimate=spread,
                reference=Reference(p.reference_description, p.reference_nodes, ref_spread),
                tolerance=tolerance,
                direction=ABOVE,
                context={
                    "pass": p.rate.value,
                    "pass_ref": p.reference.value,
                    "emp": e.rate.value,
                    "emp_ref": e.reference.value,
                    "pass_gap_sd": pass_gap.var**0.5,
                    "emp_gap_sd": emp_gap.var**0.5,
                },
                also=(
                    Condition("pass_rate_above_reference", pass_gap, 0.0, ABOVE),
                    Condition("employment_below_reference", emp_gap, 0.0, BELOW),
                ),
            ),
        )


def _disparity_sources(
    plan: AuditPlan,
) -> list[tuple[str, str, str, Sequence[str], Sequence[str]]]:
    """(query key, metric, label, numerator, rest) of each outcome the plan measures."""
    c = plan.checks
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
                EMPLOYED,
                ("not_employed",),
            )
        )
    return sources


def disparity(book: MetricCollector, tolerance: float, by: Sequence[str]) -> None:
    """Within a municipality: each group vs the rest of that municipality, two-sided."""
    for key, metric, label, num, rest in _disparity_sources(book.plan):
        check = "pass_rates" if key == q.KEY_PASS_RATES else "employment"
        for node, answer in book.node_answers(key).items():
            if book.was_not_assessable(check, node):
                continue
            code = book.code[node]
            for dim in by:
                if dim not in answer.group_by:
                    book.skip(f"{node}/{key}: answer not grouped by {dim}; no disparity test")
                    continue
                focus, comparison = DISPARITY_GROUPS[dim]
                parts = book.parts(node, answer, num, rest, equals(dim, focus))
                ref = book.parts(node, answer, num, rest, equals(dim, comparison))
                if parts is None or ref is None:
                    continue
                book.rate_metric(
                    metric=metric,
                    label=label,
                    subject=Subject(code, group=f"{dim}={focus}"),
                    parts=parts,
                    reference=(ref, f"{group_words(dim, comparison)} in {code}", (node,)),
                    test=("outcome_disparity", tolerance, TWO_SIDED),
                )
                book.rate_metric(
                    metric=metric,
                    label=label,
                    subject=Subject(code, group=f"{dim}={comparison}"),
                    parts=ref,
                )


__all__ = [
    "DISPARITY_GROUPS",
    "EMPLOYED",
    "Outcomes",
    "credential_inflation",
    "disparity",
    "employment_gaps",
    "in_field",
    "outcome_gaps",
    "pass_rate_gaps",
]
