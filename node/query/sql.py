"""SQL for the query catalogue: row sources per template and the bounded histogram.

Everything here is built with SQLAlchemy Core from the model columns. The only
values that reach a statement from outside are bound parameters (filter keys,
the municipality's country, the contribution bound, the recognition limit and
reference date); SQL text is fixed by this module, so a request can never
inject SQL.

Each template is described by a `RowSource`: the rows it counts, the person each
row belongs to, the order in which a person's rows are kept, one text expression
per public dimension and one category expression. `bounded_histogram` turns a
row source into the single statement that filters, bounds each person to K rows
(`row_number()` partitioned by the person, computed after the filters) and
counts per cell.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Date,
    FromClause,
    Integer,
    Select,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from fedaudit.node.store.models import (
    Appeal,
    Assessment,
    Candidate,
    Certificate,
    EmploymentOutcome,
    PersonCohort,
    Qualification,
    RecognitionRequest,
)

NO_PROVIDER = "none"
"""Provider key of certificates without a provider (reciprocity)."""

EMPLOYED = ("employed", "self_employed")
NOT_EMPLOYED = ("unemployed", "inactive", "in_education")


# --- portable date expressions ----------------------------------------------------------------


class YearText(FunctionElement[str]):
    """The year of a date column as four-digit text (`'2024'`), on every dialect."""

    type = String()
    name = "year_text"
    inherit_cache = True


@compiles(YearText)
def _year_text_default(element: YearText, compiler: SQLCompiler, **kw: Any) -> str:
    (arg,) = list(element.clauses)
    return f"CAST(EXTRACT(YEAR FROM {compiler.process(arg, **kw)}) AS VARCHAR(4))"


@compiles(YearText, "postgresql")
def _year_text_pg(element: YearText, compiler: SQLCompiler, **kw: Any) -> str:
    # EXTRACT works on the date itself; to_char() would cast every row to timestamptz.
    (arg,) = list(element.clauses)
    return f"CAST(CAST(EXTRACT(YEAR FROM {compiler.process(arg, **kw)}) AS INTEGER) AS TEXT)"


@compiles(YearText, "sqlite")
def _year_text_sqlite(element: YearText, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLAlchemy stores SQLite dates as ISO text, so the year is its first 4 characters.
    (arg,) = list(element.clauses)
    return f"substr({compiler.process(arg, **kw)}, 1, 4)"


class DaysBetween(FunctionElement[int]):
    """Whole days from the second date to the first (`later - earlier`), on every dialect."""

    type = Integer()
    name = "days_between"
    inherit_cache = True


@compiles(DaysBetween)
def _days_between_default(element: DaysBetween, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = list(element.clauses)
    return f"({compiler.process(later, **kw)} - {compiler.process(earlier, **kw)})"


@compiles(DaysBetween, "sqlite")
def _days_between_sqlite(element: DaysBetween, compiler: SQLCompiler, **kw: Any) -> str:
    # julianday() of two ISO dates differs by an exact whole number (x.5 - y.5).
    later, earlier = list(element.clauses)
    return (
        f"CAST(julianday({compiler.process(later, **kw)}) "
        f"- julianday({compiler.process(earlier, **kw)}) AS INTEGER)"
    )


def year_text(column: ColumnElement[dt.date]) -> ColumnElement[str]:
    """Year of `column` as text; the `period` dimension of every template."""
    return YearText(column)


def days_between(
    later: ColumnElement[dt.date], earlier: ColumnElement[dt.date]
) -> ColumnElement[int]:
    """`later - earlier` in days."""
    return DaysBetween(later, earlier)


# --- row sources ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSource:
    """The rows one template counts, before filtering and bounding.

    `person` partitions the rows for contribution bounding; `order_by` decides
    which K rows of a person are kept and uses only that person's own columns,
    so the kept rows never depend on anybody else's data.
    """

    from_: FromClause
    person: ColumnElement[str]
    order_by: tuple[ColumnElement[Any], ...]
    dimensions: Mapping[str, ColumnElement[str]]
    category: ColumnElement[str]
    where: tuple[ColumnElement[bool], ...] = ()


def _citizenship_group(country: str) -> ColumnElement[str]:
    citizenship = Candidate.__table__.c.citizenship
    return case(
        (citizenship.is_(None), literal("unknown", String)),
        (citizenship == literal(country, String), literal("national", String)),
        else_=literal("foreign", String),
    )


def _qualification_dims() -> dict[str, ColumnElement[str]]:
    q = Qualification.__table__.c
    return {"isco_code": q.isco_code, "eqf_level": cast(q.eqf_level, String)}


def _person_dims(country: str) -> dict[str, ColumnElement[str]]:
    return {"sex": Candidate.__table__.c.sex, "citizenship_group": _citizenship_group(country)}


def assessment_rows(country: str) -> RowSource:
    """One row per assessment, categorised by its result."""
    a, q, c = Assessment.__table__, Qualification.__table__, Candidate.__table__
    return RowSource(
        from_=a.join(q, a.c.qualification_id == q.c.qualification_id).join(
            c, a.c.candidate_id == c.c.candidate_id
        ),
        person=a.c.candidate_id,
        order_by=(a.c.assessed_on, a.c.assessment_id),
        dimensions={
            **_qualification_dims(),
            "provider": a.c.provider_id,
            "period": year_text(a.c.assessed_on),
            **_person_dims(country),
        },
        category=a.c.result,
    )


def certificate_rows(country: str) -> RowSource:
    """One row per certificate, categorised by its pathway."""
    r, q, c = Certificate.__table__, Qualification.__table__, Candidate.__table__
    return RowSource(
        from_=r.join(q, r.c.qualification_id == q.c.qualification_id).join(
            c, r.c.candidate_id == c.c.candidate_id
        ),
        person=r.c.candidate_id,
        order_by=(r.c.issued_on, r.c.certificate_id),
        dimensions={
            **_qualification_dims(),
            "provider": func.coalesce(r.c.provider_id, literal(NO_PROVIDER, String)),
            "period": year_text(r.c.issued_on),
            **_person_dims(country),
        },
        category=r.c.pathway,
    )


def _employment_base(country: str, category: ColumnElement[str]) -> RowSource:
    e, r = EmploymentOutcome.__table__, Certificate.__table__
    q, c = Qualification.__table__, Candidate.__table__
    return RowSource(
        from_=e.join(r, e.c.certificate_id == r.c.certificate_id)
        .join(q, r.c.qualification_id == q.c.qualification_id)
        .join(c, e.c.candidate_id == c.c.candidate_id),
        person=e.c.candidate_id,
        order_by=(r.c.issued_on, e.c.months_after, e.c.outcome_id),
        dimensions={
            **_qualification_dims(),
            "provider": func.coalesce(r.c.provider_id, literal(NO_PROVIDER, String)),
            "period": year_text(r.c.issued_on),
            **_person_dims(country),
            "months_after": cast(e.c.months_after, String),
        },
        category=category,
    )


def employment_status_rows(country: str) -> RowSource:
    """One row per employment outcome, categorised by status and field."""
    e = EmploymentOutcome.__table__.c
    employed = e.status.in_(EMPLOYED)
    category = case(
        (and_(employed, e.in_field.is_(True)), literal("employed_in_field", String)),
        (employed, literal("employed_other_field", String)),
        (e.status.in_(NOT_EMPLOYED), literal("not_employed", String)),
        (e.status == literal("unknown", String), literal("unknown", String)),
        else_=None,
    )
    return _employment_base(country, category)


def earnings_rows(
    country: str, *, bins: Sequence[tuple[int | None, str]], not_reported: str
) -> RowSource:
    """One row per outcome of an employed person, categorised by earnings bin.

    `bins` are `(exclusive upper bound, label)` in increasing order; the last
    bound is None (open-ended).
    """
    e = EmploymentOutcome.__table__.c
    whens: list[tuple[ColumnElement[bool], ColumnElement[str]]] = [
        (e.monthly_earnings.is_(None), literal(not_reported, String))
    ]
    open_label = None
    for upper, label in bins:
        if upper is None:
            open_label = label
        else:
            whens.append((e.monthly_earnings < literal(upper, Integer), literal(label, String)))
    if open_label is None:
        raise ValueError("earnings bins need an open-ended last bin")
    base = _employment_base(country, case(*whens, else_=literal(open_label, String)))
    return RowSource(
        from_=base.from_,
        person=base.person,
        order_by=base.order_by,
        dimensions=base.dimensions,
        category=base.category,
        where=(e.status.in_(EMPLOYED),),
    )


def _recognition_base(country: str, category: ColumnElement[str]) -> RowSource:
    r, q, c = RecognitionRequest.__table__, Qualification.__table__, Candidate.__table__
    return RowSource(
        from_=r.join(q, r.c.qualification_id == q.c.qualification_id).join(
            c, r.c.candidate_id == c.c.candidate_id
        ),
        person=r.c.candidate_id,
        order_by=(r.c.received_on, r.c.request_id),
        dimensions={
            **_qualification_dims(),
            "period": year_text(r.c.received_on),
            **_person_dims(country),
        },
        category=category,
    )


def recognition_time_rows(
    country: str,
    *,
    day_bins: Sequence[tuple[int | None, str]],
    limit_days: int,
    reference_date: dt.date,
    pending_within: str,
    pending_overdue: str,
) -> RowSource:
    """One row per recognition request, categorised by decision time or pending age.

    `day_bins` are `(inclusive upper bound in days, label)` in increasing order,
    the last bound None. A pending request is overdue when
    `reference_date - received_on > limit_days`, i.e. received before
    `reference_date - limit_days` (no date arithmetic in SQL needed).
    """
    r = RecognitionRequest.__table__.c
    cutoff = reference_date - dt.timedelta(days=limit_days)
    pending = r.decided_on.is_(None)
    days = days_between(r.decided_on, r.received_on)
    whens: list[tuple[ColumnElement[bool], ColumnElement[str]]] = [
        (and_(pending, r.received_on < literal(cutoff, Date)), literal(pending_overdue, String)),
        (pending, literal(pending_within, String)),
    ]
    open_label = None
    for upper, label in day_bins:
        if upper is None:
            open_label = label
        else:
            whens.append((days <= literal(upper, Integer), literal(label, String)))
    if open_label is None:
        raise ValueError("day bins need an open-ended last bin")
    return _recognition_base(country, case(*whens, else_=literal(open_label, String)))


def recognition_decision_rows(country: str) -> RowSource:
    """One row per recognition request, categorised by its decision."""
    return _recognition_base(country, RecognitionRequest.__table__.c.decision)


def appeal_rows(country: str) -> RowSource:
    """One row per appeal, categorised by its outcome."""
    a, c = Appeal.__table__, Candidate.__table__
    return RowSource(
        from_=a.join(c, a.c.candidate_id == c.c.candidate_id),
        person=a.c.candidate_id,
        order_by=(a.c.lodged_on, a.c.appeal_id),
        dimensions={
            "subject_type": a.c.subject_type,
            "period": year_text(a.c.lodged_on),
            **_person_dims(country),
        },
        category=a.c.outcome,
    )


def with_cohort(source: RowSource, *, first_key: str) -> RowSource:
    """`source` with the `cohort` dimension: the person's fixed cohort (person_cohorts).

    Cohorts before `first_key` count as `first_key` (the public key list starts there).
    Joined only when a query groups or filters by cohort: every person has a cohort
    row from their first import on, so the inner join drops nobody.
    """
    p = PersonCohort.__table__
    first = literal(first_key, String)
    return RowSource(
        from_=source.from_.join(p, p.c.candidate_id == source.person),
        person=source.person,
        order_by=source.order_by,
        dimensions={
            **source.dimensions,
            "cohort": case((p.c.cohort < first, first), else_=p.c.cohort),
        },
        category=source.category,
        where=source.where,
    )


# --- the bounded histogram --------------------------------------------------------------------


def bounded_histogram(
    source: RowSource,
    *,
    group_by: Sequence[str],
    restrict: Mapping[str, Sequence[str]],
    categories: Sequence[str],
    max_records_per_person: int,
) -> Select[Any]:
    """One statement: filter, keep each person's first K rows, count per (group keys, category).

    `restrict` maps dimensions to the keys a row must have (filters and public
    key lists, e.g. the period window). Rows failing any restriction, or whose
    category is not one of `categories`, are dropped *before* the row numbers
    are assigned, so they never use up a person's K slots. Result columns:
    one per group dimension (in `group_by` order), the category, the count.
    """
    if max_records_per_person < 1:
        raise ValueError("max_records_per_person must be at least 1")
    unknown = [d for d in (*group_by, *restrict) if d not in source.dimensions]
    if unknown:
        raise ValueError(f"dimensions not offered by this row source: {unknown}")
    conditions = [
        *source.where,
        source.category.in_(list(categories)),
        *(source.dimensions[dim].in_(list(keys)) for dim, keys in restrict.items()),
    ]
    rn = func.row_number().over(partition_by=source.person, order_by=list(source.order_by))
    inner = (
        select(
            *(source.dimensions[dim].label(f"g{i}") for i, dim in enumerate(group_by)),
            source.category.label("category"),
            rn.label("rn"),
        )
        .select_from(source.from_)
        .where(*conditions)
        .subquery("bounded")
    )
    group_cols = [inner.c[f"g{i}"] for i in range(len(group_by))]
    return (
        select(*group_cols, inner.c.category, func.count().label("n"))
        .where(inner.c.rn <= literal(max_records_per_person, Integer))
        .group_by(*group_cols, inner.c.category)
    )
