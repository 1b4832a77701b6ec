"""The closed, versioned query catalogue: public dimensions, templates, validation, counts.

Every template is a histogram over public keys: each (bounded) record falls in
exactly one cell = (group keys, category), and every cell of the cross product
of the (filtered) key lists and the categories is released, zeros included, so
the set of released cells never depends on the data. A person keeps at most
K = `max_records_per_person` records per query (enforced in SQL, see
`fedaudit.node.query.sql`), so adding or removing one person changes the count
vector by at most K in L1 and in L2: sensitivity_l1 = sensitivity_l2 = K.

Key lists are reference data (class R) read from the registry's reference
tables or fixed here; they are never derived from personal tables.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy
from sqlalchemy import func, select

from fedaudit.node.domain import Mechanism, QuerySpec
from fedaudit.node.errors import DataUnavailableError, InvalidParametersError, PolicyError
from fedaudit.node.privacy import cohorts
from fedaudit.node.query import sql
from fedaudit.node.store.models import DataVersion, Municipality, Provider, Qualification

CATALOGUE_VERSION = "2026.1"

MAX_GROUP_BY = 4
MAX_CELLS = 100_000

MIN_RHO = 1e-6
MAX_RHO = 1_000_000.0
MIN_EPSILON = 1e-6
MAX_EPSILON = 1_000.0
"""The privacy costs a request may name at all; the policy's caps decide what is affordable.

Below MIN_RHO the Gaussian noise is useless for any registry (a standard deviation of
700 K persons per cell) and planning it is not: OpenDP's noise-interval routine for the
discrete Gaussian sums over the scale, so rho = 1e-12 took a worker ~0.5 s and 1e-30
forever, in a *free* preflight. The Laplace routine is constant-time, so MIN_EPSILON is
only a sanity floor, low enough for a plan that splits a small epsilon over many
queries. Above the maxima (the policy's own MAX_RHO; epsilon 1000 is rho 5e5) the
scale search runs out of floating-point room (rho = 1e308 raised ArithmeticError, an
internal error).
"""

SEXES = ("female", "male", "other", "unknown")
CITIZENSHIP_GROUPS = ("national", "foreign", "unknown")
EQF_LEVELS = tuple(str(level) for level in range(1, 9))
MONTHS_AFTER = ("6", "12")
SUBJECT_TYPES = ("assessment", "certificate", "recognition")


@dataclass(frozen=True)
class Dimension:
    """A public dimension: its keys are reference data, so they may be released."""

    name: str
    description: str


DIMENSIONS: Mapping[str, Dimension] = {
    d.name: d
    for d in (
        Dimension("isco_code", "ISCO-08 unit group of the qualification (from qualifications)"),
        Dimension("eqf_level", "EQF level 1-8 of the qualification"),
        Dimension(
            "provider",
            f"training provider id (from providers); '{sql.NO_PROVIDER}' when there is none",
        ),
        Dimension("period", "calendar year, from the node policy's periods"),
        Dimension("sex", "sex of the candidate: " + ", ".join(SEXES)),
        Dimension(
            "citizenship_group",
            "national (citizenship = the municipality's country), foreign, unknown (not recorded)",
        ),
        Dimension("months_after", "months from certificate to employment observation: 6 or 12"),
        Dimension("subject_type", "what an appeal is about: " + ", ".join(SUBJECT_TYPES)),
        Dimension(
            "cohort",
            "month (YYYY-MM) of the person's earliest record at this node, fixed at their "
            "first import; the first key also holds every earlier month. A query is "
            "charged to the cohorts it reads (docs/cohorts.md)",
        ),
    )
}
"""Every public dimension, by name."""

WINDOW_DIMENSIONS = frozenset({"period"})
"""Dimensions whose key list is a window on the data: rows outside it are never counted.

Every other key list covers each value a valid registry can hold (ISCO codes and
providers by foreign key, the rest by the bundle contract's enums), so those
dimensions restrict rows only when a request filters on them. Leaving the
tautological restrictions out of the SQL matters: PostgreSQL multiplies their
selectivities, expects a handful of rows and picks a nested loop over every
candidate (3x slower on 200k rows).
"""

_YEAR = re.compile(r"[0-9]{4}")


def dimension_keys(
    conn: sqlalchemy.Connection, periods: Sequence[str], first_cohort: str | None = None
) -> dict[str, tuple[str, ...]]:
    """The public key list of every dimension.

    Read from reference tables only (qualifications, providers), or fixed; the
    periods come from the node policy and act as a window on the data. The cohorts
    run from `first_cohort` (default: January of the first period) to the month of
    the latest reference date of any import (no person's cohort is later, see
    `fedaudit.node.ingest.cohorts`), read from `data_versions`, not from persons.
    """
    bad = [p for p in periods if not isinstance(p, str) or not _YEAR.fullmatch(p)]
    if bad:
        raise PolicyError(f"periods must be four-digit years as text, got {bad[0]!r}")
    first = first_cohort or (f"{min(periods)}-01" if periods else "")
    if not cohorts.is_month(first):
        raise PolicyError(f"the first cohort must be a month as YYYY-MM, got {first!r}")
    newest = conn.execute(select(func.max(DataVersion.reference_date))).scalar_one_or_none()
    if isinstance(newest, str):  # SQLite returns MAX() of a date column as text
        newest = dt.date.fromisoformat(newest)
    last = cohorts.month_of(newest) if newest is not None else first
    cohort_keys = cohorts.months(first, last) or (first,)
    isco = sorted(set(conn.execute(select(Qualification.isco_code)).scalars()))
    providers = sorted(set(conn.execute(select(Provider.provider_id)).scalars()))
    if sql.NO_PROVIDER not in providers:
        providers.append(sql.NO_PROVIDER)
    return {
        "isco_code": tuple(isco),
        "eqf_level": EQF_LEVELS,
        "provider": tuple(providers),
        "period": tuple(sorted(set(periods))),
        "sex": SEXES,
        "citizenship_group": CITIZENSHIP_GROUPS,
        "months_after": MONTHS_AFTER,
        "subject_type": SUBJECT_TYPES,
        "cohort": cohort_keys,
    }


# --- templates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamInfo:
    """A numeric template parameter; `default` None means the request must give it."""

    name: str
    description: str
    minimum: int
    maximum: int
    default: int | None = None


@dataclass(frozen=True)
class RowContext:
    """What a template's row source needs besides the request's filters."""

    country: str
    params: Mapping[str, int]
    reference_date: dt.date


@dataclass(frozen=True)
class Template:
    """One histogram query of the catalogue."""

    name: str
    version: str
    description: str
    dimensions: tuple[str, ...]
    params: tuple[ParamInfo, ...]
    category_fn: Callable[[Mapping[str, int]], tuple[str, ...]] = field(repr=False)
    rows: Callable[[RowContext], sql.RowSource] = field(repr=False, compare=False)
    uses_reference_date: bool = False
    """Whether answers depend on the data's reference date (not only on the rows read):
    then the date is part of what "the same data" means for replay."""

    def categories(self, params: Mapping[str, int] | None = None) -> tuple[str, ...]:
        """The categories, in release order, for resolved `params`."""
        return self.category_fn(resolve_params(self, params or {}))


def _fixed(*categories: str) -> Callable[[Mapping[str, int]], tuple[str, ...]]:
    return lambda _params: categories


RECOGNITION_DAY_EDGES = (30, 60, 90, 120, 180, 365)
PENDING_WITHIN_LIMIT = "pending_within_limit"
PENDING_OVERDUE = "pending_overdue"
LIMIT_DAYS = ParamInfo(
    name="limit_days",
    description="statutory decision time in days; pending requests older than this are overdue",
    minimum=1,
    maximum=730,
    default=90,
)


def recognition_day_bins(limit_days: int) -> tuple[tuple[int | None, str], ...]:
    """Decision-time bins: (inclusive upper edge in days or None, label), in order.

    The edges are the standard ones plus the requested limit, so the share
    decided within the limit is a sum of whole bins.
    """
    edges = sorted({*RECOGNITION_DAY_EDGES, limit_days})
    bins: list[tuple[int | None, str]] = []
    lower = 0
    for upper in edges:
        bins.append((upper, f"d{lower}_{upper}"))
        lower = upper + 1
    bins.append((None, f"d{lower}_plus"))
    return tuple(bins)


def _limit(params: Mapping[str, int]) -> int:
    value = params.get(LIMIT_DAYS.name, LIMIT_DAYS.default)
    assert value is not None
    return value


def _recognition_time_categories(params: Mapping[str, int]) -> tuple[str, ...]:
    labels = [label for _, label in recognition_day_bins(_limit(params))]
    return (*labels, PENDING_WITHIN_LIMIT, PENDING_OVERDUE)


def categories_within_limit(params: Mapping[str, int]) -> tuple[str, ...]:
    """Decided bins of `recognition_decision_time` whose upper edge is <= limit_days.

    The coordinator divides their sum by all decided and pending requests to
    estimate the share decided on time.
    """
    limit = _limit(params)
    return tuple(
        label
        for upper, label in recognition_day_bins(limit)
        if upper is not None and upper <= limit
    )


EARNINGS_BINS: tuple[tuple[int | None, str], ...] = (
    (500, "lt_500"),
    (1000, "500_999"),
    (1500, "1000_1499"),
    (2000, "1500_1999"),
    (2500, "2000_2499"),
    (3000, "2500_2999"),
    (4000, "3000_3999"),
    (5000, "4000_4999"),
    (None, "ge_5000"),
)
"""Monthly earnings bins: (exclusive upper bound, label)."""
NOT_REPORTED = "not_reported"

_QUALIFICATION_PERSON = (
    "isco_code",
    "eqf_level",
    "provider",
    "period",
    "sex",
    "citizenship_group",
    "cohort",
)
_RECOGNITION = ("isco_code", "eqf_level", "period", "sex", "citizenship_group", "cohort")

_TEMPLATE_LIST = (
    Template(
        name="assessment_results",
        version="1",
        description="Assessments by result; period = year assessed. A person's first K "
        "assessments (by date, id) among those matching the filters count.",
        dimensions=_QUALIFICATION_PERSON,
        params=(),
        category_fn=_fixed("pass", "fail", "absent"),
        rows=lambda ctx: sql.assessment_rows(ctx.country),
    ),
    Template(
        name="certificates_issued",
        version="1",
        description="Certificates by pathway; period = year issued.",
        dimensions=_QUALIFICATION_PERSON,
        params=(),
        category_fn=_fixed("training", "prior_learning", "reciprocity"),
        rows=lambda ctx: sql.certificate_rows(ctx.country),
    ),
    Template(
        name="employment_outcomes",
        version="1",
        description="Employment outcomes of certificate holders; period = year the "
        "certificate was issued. Employed includes self-employed; in field unknown counts "
        "as other field.",
        dimensions=(*_QUALIFICATION_PERSON, "months_after"),
        params=(),
        category_fn=_fixed("employed_in_field", "employed_other_field", "not_employed", "unknown"),
        rows=lambda ctx: sql.employment_status_rows(ctx.country),
    ),
    Template(
        name="earnings_distribution",
        version="1",
        description="Monthly earnings of employed and self-employed certificate holders in "
        "fixed bins; period = year the certificate was issued.",
        dimensions=(*_QUALIFICATION_PERSON, "months_after"),
        params=(),
        category_fn=_fixed(*(label for _, label in EARNINGS_BINS), NOT_REPORTED),
        rows=lambda ctx: sql.earnings_rows(
            ctx.country, bins=EARNINGS_BINS, not_reported=NOT_REPORTED
        ),
    ),
    Template(
        name="recognition_decision_time",
        version="1",
        description="Recognition requests by days to decision (bins include limit_days as "
        "an edge), and pending ones within or over limit_days at the data's reference "
        "date; period = year received.",
        dimensions=_RECOGNITION,
        params=(LIMIT_DAYS,),
        category_fn=_recognition_time_categories,
        rows=lambda ctx: sql.recognition_time_rows(
            ctx.country,
            day_bins=recognition_day_bins(_limit(ctx.params)),
            limit_days=_limit(ctx.params),
            reference_date=ctx.reference_date,
            pending_within=PENDING_WITHIN_LIMIT,
            pending_overdue=PENDING_OVERDUE,
        ),
        uses_reference_date=True,
    ),
    Template(
        name="recognition_decisions",
        version="1",
        description="Recognition requests by decision; period = year received.",
        dimensions=_RECOGNITION,
        params=(),
        category_fn=_fixed("full", "partial", "rejected", "pending"),
        rows=lambda ctx: sql.recognition_decision_rows(ctx.country),
    ),
    Template(
        name="appeal_outcomes",
        version="1",
        description="Appeals by outcome; period = year lodged.",
        dimensions=("subject_type", "period", "sex", "citizenship_group", "cohort"),
        params=(),
        category_fn=_fixed("upheld", "dismissed", "withdrawn", "pending"),
        rows=lambda ctx: sql.appeal_rows(ctx.country),
    ),
)

TEMPLATES: Mapping[str, Template] = {t.name: t for t in _TEMPLATE_LIST}
"""The catalogue, by template name."""


# --- validation -----------------------------------------------------------------------------


_ECHO_CHARS = 64


def _echo(value: object) -> str:
    """repr() of a requester-supplied value, cut short.

    Refusals travel in gRPC trailers, which clients cap at 8-16 KiB: echoing a 20 kB
    template name in full turned a precise refusal into "Stream removed".
    """
    text = repr(value)
    if len(text) <= _ECHO_CHARS:
        return text
    return f"{text[:_ECHO_CHARS]}...({len(text)} chars)"


def _detail(value: object) -> str:
    """A requester-supplied value for ErrorInfo metadata, cut short like `_echo`."""
    text = str(value)
    return text if len(text) <= _ECHO_CHARS else text[:_ECHO_CHARS] + "..."


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def resolve_params(template: Template, params: Mapping[str, object]) -> dict[str, int]:
    """Check a request's params against the template and fill in defaults."""
    known = {p.name: p for p in template.params}
    for name in params:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise InvalidParametersError(
                f"unknown parameter {_echo(name)} for template {template.name!r} "
                f"(allowed: {allowed})",
                {"parameter": _detail(name)},
            )
    resolved: dict[str, int] = {}
    for info in template.params:
        value = params.get(info.name, info.default)
        if value is None:
            raise InvalidParametersError(
                f"missing parameter {info.name!r} for template {template.name!r}",
                {"parameter": info.name},
            )
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidParametersError(
                f"parameter {info.name!r} must be an integer, got {value!r}",
                {"parameter": info.name},
            )
        if not info.minimum <= value <= info.maximum:
            raise InvalidParametersError(
                f"parameter {info.name!r} must be between {info.minimum} and {info.maximum}, "
                f"got {value}",
                {"parameter": info.name},
            )
        resolved[info.name] = value
    return resolved


def _effective_keys(
    template: Template, spec: QuerySpec, keys: Mapping[str, tuple[str, ...]]
) -> dict[str, tuple[str, ...]]:
    """Per template dimension, the keys a row must have: the filter's, else the public list.

    Filter keys keep the public list's order (so cell order never depends on how
    a request spelled its filter) and duplicates collapse.
    """
    effective: dict[str, tuple[str, ...]] = {}
    for dim in template.dimensions:
        public = keys[dim]
        if dim in spec.filters:
            wanted = set(spec.filters[dim])
            effective[dim] = tuple(k for k in public if k in wanted)
        else:
            effective[dim] = public
    return effective


def _check_privacy(spec: QuerySpec) -> None:
    if not isinstance(spec.mechanism, Mechanism):
        raise InvalidParametersError(f"unknown mechanism {spec.mechanism!r}")
    for name in ("rho", "epsilon"):
        value = getattr(spec, name)
        if value is not None and (not _is_number(value) or not math.isfinite(value)):
            raise InvalidParametersError(f"{name} must be a finite number, got {value!r}")
    if spec.mechanism is Mechanism.DISCRETE_GAUSSIAN:
        if spec.rho is None or spec.rho <= 0:
            raise InvalidParametersError(
                f"the discrete Gaussian mechanism needs rho > 0, got {spec.rho!r}"
            )
        if spec.epsilon not in (None, 0):
            raise InvalidParametersError(
                "epsilon must be unset with the discrete Gaussian mechanism (it is charged in rho)"
            )
    else:
        if spec.epsilon is None or spec.epsilon <= 0:
            raise InvalidParametersError(
                f"the discrete Laplace mechanism needs epsilon > 0, got {spec.epsilon!r}"
            )
        if spec.rho not in (None, 0):
            raise InvalidParametersError(
                "rho must be unset with the discrete Laplace mechanism (it is charged from epsilon)"
            )
    low, high, value = (
        (MIN_RHO, MAX_RHO, spec.rho)
        if spec.mechanism is Mechanism.DISCRETE_GAUSSIAN
        else (MIN_EPSILON, MAX_EPSILON, spec.epsilon)
    )
    if value is not None and not low <= value <= high:
        name = "rho" if spec.mechanism is Mechanism.DISCRETE_GAUSSIAN else "epsilon"
        raise InvalidParametersError(
            f"{name} must be between {low:g} and {high:g}, got {value!r}", {"field": name}
        )
    conf = spec.confidence
    if not _is_number(conf) or not math.isfinite(conf) or not 0 < conf < 1:
        raise InvalidParametersError(f"confidence must be strictly between 0 and 1, got {conf!r}")


def _dimension_name(dim: object) -> str:
    return repr(dim) if dim in DIMENSIONS else f"unknown dimension {_echo(dim)}"


def validate(
    spec: QuerySpec, keys: Mapping[str, tuple[str, ...]]
) -> tuple[Template, dict[str, int]]:
    """Check a request against the catalogue and the public key lists.

    Returns the template and the resolved params (defaults filled in). Every
    refusal names what is wrong, so an auditor can fix the request; messages
    only repeat what the request itself contained or public reference data.
    """
    template = TEMPLATES.get(spec.template) if isinstance(spec.template, str) else None
    if template is None:
        raise InvalidParametersError(
            f"unknown template {_echo(spec.template)}; known templates: {', '.join(TEMPLATES)}",
            {"template": _detail(spec.template)},
        )
    allowed = ", ".join(template.dimensions)
    if len(spec.group_by) > MAX_GROUP_BY:
        raise InvalidParametersError(
            f"at most {MAX_GROUP_BY} group_by dimensions, got {len(spec.group_by)}"
        )
    seen: set[str] = set()
    for dim in spec.group_by:
        if dim not in template.dimensions:
            raise InvalidParametersError(
                f"cannot group {template.name!r} by {_dimension_name(dim)}; "
                f"allowed dimensions: {allowed}",
                {"dimension": _detail(dim)},
            )
        if dim in seen:
            raise InvalidParametersError(
                f"duplicate group_by dimension {dim!r}", {"dimension": dim}
            )
        seen.add(dim)
    for dim, wanted in spec.filters.items():
        if dim not in template.dimensions:
            raise InvalidParametersError(
                f"cannot filter {template.name!r} on {_dimension_name(dim)}; "
                f"allowed dimensions: {allowed}",
                {"dimension": _detail(dim)},
            )
        if isinstance(wanted, str) or not isinstance(wanted, Sequence):
            raise InvalidParametersError(
                f"filter on {dim!r} must be a list of keys, got {_echo(wanted)}", {"dimension": dim}
            )
        if not wanted:
            raise InvalidParametersError(f"filter on {dim!r} names no keys", {"dimension": dim})
        public = set(keys[dim])
        for key in wanted:
            if not isinstance(key, str) or key not in public:
                raise InvalidParametersError(
                    f"filter on {dim!r}: {_echo(key)} is not a public key of this dimension",
                    {"dimension": dim, "key": _detail(key)},
                )
    params = resolve_params(template, spec.params)
    _check_privacy(spec)
    cells = cell_count(template, spec, keys, params)
    if cells > MAX_CELLS:
        raise InvalidParametersError(
            f"the request has {cells} cells; at most {MAX_CELLS} are allowed "
            "(group by fewer dimensions or filter)",
            {"cells": str(cells)},
        )
    return template, params


def charged_cohorts(
    spec: QuerySpec, keys: Mapping[str, tuple[str, ...]]
) -> tuple[cohorts.CohortRange, ...]:
    """The cohort ranges a validated query reads, and is charged to.

    With a `cohort` filter exactly those cohorts; without one every cohort up to the
    newest key (the first key's range reaches back to the earliest months).
    """
    return cohorts.ranges_for_keys(spec.filters.get("cohort", keys["cohort"]), keys["cohort"])


def cell_count(
    template: Template,
    spec: QuerySpec,
    keys: Mapping[str, tuple[str, ...]],
    params: Mapping[str, int],
) -> int:
    """Number of released cells: product of the grouped key lists times the categories."""
    effective = _effective_keys(template, spec, keys)
    groups = math.prod(len(effective[dim]) for dim in spec.group_by)
    return groups * len(template.categories(params))


# --- counting -------------------------------------------------------------------------------


def _country(conn: sqlalchemy.Connection) -> str:
    countries = conn.execute(select(Municipality.country)).scalars().all()
    if len(countries) != 1:
        raise DataUnavailableError(
            "the node has no registry loaded (no municipality row)"
            if not countries
            else "the registry has more than one municipality row"
        )
    return countries[0]


def true_counts(
    conn: sqlalchemy.Connection,
    template: Template,
    spec: QuerySpec,
    keys: Mapping[str, tuple[str, ...]],
    params: Mapping[str, int],
    *,
    max_records_per_person: int,
    reference_date: dt.date,
) -> list[tuple[tuple[str, ...], str, int]]:
    """Exact bounded counts of every cell, zeros included, in a fixed order.

    `spec` and `params` must have passed `validate`. Order: group keys in
    `itertools.product` order of the (filtered) key lists, categories in
    template order within each group. These are the values noise is added to;
    they never leave the node unnoised.
    """
    if (
        not isinstance(max_records_per_person, int)
        or isinstance(max_records_per_person, bool)
        or max_records_per_person < 1
    ):
        raise PolicyError(
            f"max_records_per_person must be a positive integer, got {max_records_per_person!r}"
        )
    categories = template.categories(params)
    effective = _effective_keys(template, spec, keys)
    source = template.rows(
        RowContext(country=_country(conn), params=params, reference_date=reference_date)
    )
    if "cohort" in spec.group_by or "cohort" in spec.filters:
        source = sql.with_cohort(source, first_key=keys["cohort"][0])
    statement = sql.bounded_histogram(
        source,
        group_by=spec.group_by,
        restrict={
            dim: effective[dim]
            for dim in template.dimensions
            if dim in spec.filters or dim in WINDOW_DIMENSIONS
        },
        categories=categories,
        max_records_per_person=max_records_per_person,
    )
    found: dict[tuple[tuple[str, ...], str], int] = {}
    for row in conn.execute(statement):
        *group, category, n = tuple(row)
        found[(tuple(str(g) for g in group), str(category))] = int(n)
    return [
        (group, category, found.get((group, category), 0))
        for group in itertools.product(*(effective[dim] for dim in spec.group_by))
        for category in categories
    ]
