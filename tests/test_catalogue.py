"""The query catalogue: SQL contribution bounding, hand-checked counts, request validation."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
from collections.abc import Callable, Iterator, Mapping

import pytest
from factories import RegistryFactory, delete_person, record_import
from sqlalchemy import Connection, Engine, inspect, select

from fedaudit.node.domain import Mechanism, QuerySpec
from fedaudit.node.errors import DataUnavailableError, InvalidParametersError, PolicyError
from fedaudit.node.query import catalogue
from fedaudit.node.query.catalogue import (
    TEMPLATES,
    ParamInfo,
    Template,
    categories_within_limit,
    cell_count,
    dimension_keys,
    resolve_params,
    true_counts,
    validate,
)
from fedaudit.node.store.db import create_schema, make_engine
from fedaudit.node.store.models import PersonCohort

PERIODS = ("2023", "2024")
REF = dt.date(2024, 12, 31)

Rows = list[tuple[tuple[str, ...], str, int]]


def _count(
    conn: Connection,
    spec: QuerySpec,
    *,
    k: int,
    periods: tuple[str, ...] = PERIODS,
    reference_date: dt.date = REF,
) -> Rows:
    keys = dimension_keys(conn, periods)
    template, params = validate(spec, keys)
    return true_counts(
        conn,
        template,
        spec,
        keys,
        params,
        max_records_per_person=k,
        reference_date=reference_date,
    )


def _spec(template: str, *group_by: str, **kwargs: object) -> QuerySpec:
    return QuerySpec(template=template, group_by=tuple(group_by), rho=0.1, **kwargs)  # type: ignore[arg-type]


def _nonzero(rows: Rows) -> dict[tuple[tuple[str, ...], str], int]:
    return {(keys, cat): n for keys, cat, n in rows if n}


def _assert_complete(rows: Rows, spec: QuerySpec, key_lists: list[tuple[str, ...]]) -> None:
    """Every cell of the cross product is present, in product order, categories inside."""
    template = TEMPLATES[spec.template]
    expected = [
        (group, cat)
        for group in itertools.product(*key_lists)
        for cat in template.categories(spec.params)
    ]
    assert [(keys, cat) for keys, cat, _ in rows] == expected


# --- a hand-checkable registry ------------------------------------------------------------------


def _town() -> RegistryFactory:
    """Five people in a country-AT municipality; comments give the cell each row lands in."""
    reg = RegistryFactory(country="AT")
    qw = reg.qualification("7212", 3, qualification_id="QW")
    qe = reg.qualification("7411", 4, qualification_id="QE")
    pa, pb = reg.provider("PA"), reg.provider("PB")
    ana = reg.candidate(candidate_id="ana", sex="female", citizenship="AT")
    ben = reg.candidate(candidate_id="ben", sex="male", citizenship="DE")
    cem = reg.candidate(candidate_id="cem", sex="other", citizenship=None)
    dora = reg.candidate(candidate_id="dora", sex="female", citizenship="AT")
    eve = reg.candidate(candidate_id="eve", sex="male", citizenship="AT")

    reg.assessment(ana, qw, pa, "2024-01-10", result="fail")
    reg.assessment(ana, qw, pa, "2024-03-10", result="pass")
    reg.assessment(ben, qe, pb, "2023-05-01", result="pass")
    reg.assessment(cem, qw, pa, "2022-06-01", result="pass")  # outside the period window
    reg.assessment(cem, qw, pb, "2024-02-01", result="absent")
    reg.assessment(dora, qe, pb, "2024-01-01", result="fail")  # dora: first two at PB,
    reg.assessment(dora, qe, pb, "2024-02-01", result="fail")
    reg.assessment(dora, qe, pa, "2024-03-01", result="fail")  # then two at PA
    reg.assessment(dora, qe, pa, "2024-04-01", result="fail")
    reg.assessment(eve, qw, pb, "2023-12-31", result="pass")

    z_ana = reg.certificate(ana, qw, "2024-04-01", provider_id=pa)
    z_ben = reg.certificate(ben, qe, "2023-06-01", pathway="reciprocity")
    z_cem = reg.certificate(cem, qw, "2024-05-01", provider_id=pb, pathway="prior_learning")
    z_dora = reg.certificate(dora, qe, "2021-01-01", provider_id=pa)  # outside the window
    z_eve = reg.certificate(eve, qw, "2024-01-15", provider_id=pb)

    reg.outcome(ana, z_ana, months_after=6, status="employed", in_field=True, monthly_earnings=1800)
    reg.outcome(
        ana, z_ana, months_after=12, status="self_employed", in_field=False, monthly_earnings=5200
    )
    reg.outcome(ben, z_ben, months_after=6, status="unemployed", in_field=None)
    reg.outcome(ben, z_ben, months_after=12, status="employed", in_field=None)
    reg.outcome(cem, z_cem, months_after=6, status="unknown", in_field=None)
    reg.outcome(dora, z_dora, months_after=6, status="employed", monthly_earnings=2500)
    reg.outcome(eve, z_eve, months_after=6, status="in_education", in_field=None)
    reg.outcome(eve, z_eve, months_after=12, status="inactive", in_field=None)

    reg.recognition(ana, qw, "2024-01-01", decided_on="2024-01-31", decision="full")  # 30 days
    reg.recognition(ben, qe, "2024-02-01", decided_on="2024-03-03", decision="partial")  # 31
    reg.recognition(ben, qe, "2023-01-10", decided_on="2024-03-01", decision="full")  # 416
    reg.recognition(cem, qw, "2024-03-01", decided_on="2024-07-01", decision="rejected")  # 122
    reg.recognition(cem, qw, "2024-10-02")  # pending, 90 days old on REF
    reg.recognition(dora, qe, "2024-11-01")  # pending, 60 days old
    reg.recognition(eve, qw, "2024-06-01")  # pending, 213 days old
    reg.recognition(eve, qw, "2022-05-01", decided_on="2022-06-01")  # outside the window

    reg.appeal(ana, "2024-02-01", subject_type="assessment", outcome="upheld")
    reg.appeal(ben, "2023-07-01", subject_type="certificate", outcome="dismissed")
    reg.appeal(cem, "2024-03-01", subject_type="recognition", outcome="withdrawn")
    reg.appeal(dora, "2024-05-01", subject_type="assessment", outcome="pending")
    reg.appeal(dora, "2024-06-01", subject_type="assessment", outcome="dismissed")
    reg.appeal(dora, "2024-07-01", subject_type="assessment", outcome="dismissed")
    reg.appeal(eve, "2020-01-01", subject_type="assessment", outcome="upheld")  # outside
    return reg


@pytest.fixture(name="town")
def _town_engine(db_url: str) -> Iterator[Engine]:
    engine = _town().build(db_url)
    yield engine
    engine.dispose()


SEXES = ("female", "male", "other", "unknown")


def test_assessment_results_hand_checked(town: Engine) -> None:
    """Assessments: K=2 keeps a person's first two, the window drops 2022, zeros are released."""
    with town.connect() as conn:
        spec = _spec("assessment_results")
        rows = _count(conn, spec, k=2)
        assert rows == [((), "pass", 3), ((), "fail", 3), ((), "absent", 1)]

        spec = _spec("assessment_results", "period")
        rows = _count(conn, spec, k=2)
        _assert_complete(rows, spec, [PERIODS])
        assert _nonzero(rows) == {
            (("2023",), "pass"): 2,
            (("2024",), "pass"): 1,
            (("2024",), "fail"): 3,
            (("2024",), "absent"): 1,
        }

        spec = _spec("assessment_results", "citizenship_group")
        assert _nonzero(_count(conn, spec, k=2)) == {
            (("national",), "pass"): 2,
            (("national",), "fail"): 3,
            (("foreign",), "pass"): 1,
            (("unknown",), "absent"): 1,
        }

        # dora's first two rows are at PB, so PA sees none of hers unless PA is filtered.
        spec = _spec("assessment_results", "provider")
        rows = _count(conn, spec, k=2)
        _assert_complete(rows, spec, [("PA", "PB", "none")])
        assert _nonzero(rows) == {
            (("PA",), "pass"): 1,
            (("PA",), "fail"): 1,
            (("PB",), "pass"): 2,
            (("PB",), "fail"): 2,
            (("PB",), "absent"): 1,
        }


def test_bounding_applies_after_filters(town: Engine) -> None:
    """Filtering on PA keeps dora's two PA rows: the row numbers are taken after the filter."""
    with town.connect() as conn:
        spec = _spec("assessment_results", "isco_code", "sex", filters={"provider": ("PA",)})
        rows = _count(conn, spec, k=2)
        _assert_complete(rows, spec, [("7212", "7411"), SEXES])
        assert len(rows) == 2 * 4 * 3
        assert _nonzero(rows) == {
            (("7212", "female"), "pass"): 1,
            (("7212", "female"), "fail"): 1,
            (("7411", "female"), "fail"): 2,
        }


def test_window_applies_before_bounding(town: Engine) -> None:
    """With K=1, cem's out-of-window 2022 pass does not use up his one slot."""
    with town.connect() as conn:
        rows = _count(conn, _spec("assessment_results"), k=1)
        assert rows == [((), "pass", 2), ((), "fail", 2), ((), "absent", 1)]
        # Widening the window brings 2022 in and it becomes cem's first row.
        rows = _count(conn, _spec("assessment_results"), k=1, periods=("2022", "2023", "2024"))
        assert rows == [((), "pass", 3), ((), "fail", 2), ((), "absent", 0)]


def test_filters_on_grouped_dimension_restrict_cells(town: Engine) -> None:
    """A filter on a grouped dimension keeps only those keys, in public-list order."""
    with town.connect() as conn:
        spec = _spec(
            "assessment_results",
            "eqf_level",
            filters={"period": ("2024",), "eqf_level": ("4", "3", "3")},
        )
        rows = _count(conn, spec, k=2)
        _assert_complete(rows, spec, [("3", "4")])
        assert rows == [
            (("3",), "pass", 1),
            (("3",), "fail", 1),
            (("3",), "absent", 1),
            (("4",), "pass", 0),
            (("4",), "fail", 2),
            (("4",), "absent", 0),
        ]


def test_certificates_issued_hand_checked(town: Engine) -> None:
    """Certificates: a reciprocity certificate has provider 'none'; 2021 is outside the window."""
    with town.connect() as conn:
        spec = _spec("certificates_issued", "provider")
        rows = _count(conn, spec, k=2)
        _assert_complete(rows, spec, [("PA", "PB", "none")])
        assert _nonzero(rows) == {
            (("PA",), "training"): 1,
            (("PB",), "training"): 1,
            (("PB",), "prior_learning"): 1,
            (("none",), "reciprocity"): 1,
        }
        spec = _spec("certificates_issued", "period", "citizenship_group")
        rows = _count(conn, spec, k=2)
        assert len(rows) == 2 * 3 * 3
        assert _nonzero(rows) == {
            (("2023", "foreign"), "reciprocity"): 1,
            (("2024", "national"), "training"): 2,
            (("2024", "unknown"), "prior_learning"): 1,
        }


def test_employment_outcomes_hand_checked(town: Engine) -> None:
    """Outcomes: in_field NULL counts as other field; period is the certificate's year."""
    with town.connect() as conn:
        spec = _spec("employment_outcomes", "months_after")
        rows = _count(conn, spec, k=2)
        assert rows == [
            (("6",), "employed_in_field", 1),
            (("6",), "employed_other_field", 0),
            (("6",), "not_employed", 2),
            (("6",), "unknown", 1),
            (("12",), "employed_in_field", 0),
            (("12",), "employed_other_field", 2),
            (("12",), "not_employed", 1),
            (("12",), "unknown", 0),
        ]
        # Taking 2021 into the window brings dora's outcome in.
        rows = _count(conn, _spec("employment_outcomes"), k=2, periods=("2021", "2023", "2024"))
        assert _nonzero(rows)[((), "employed_in_field")] == 2


def test_earnings_distribution_hand_checked(town: Engine) -> None:
    """Earnings: only employed and self-employed rows; NULL earnings are not_reported."""
    with town.connect() as conn:
        spec = _spec("earnings_distribution", "sex")
        rows = _count(conn, spec, k=2)
        assert len(rows) == 4 * 10
        assert _nonzero(rows) == {
            (("female",), "1500_1999"): 1,
            (("female",), "ge_5000"): 1,
            (("male",), "not_reported"): 1,
        }


def test_earnings_bin_edges(db_url: str) -> None:
    """Bin edges are exclusive above: 499 -> lt_500, 500 -> 500_999, 5000 -> ge_5000."""
    reg = RegistryFactory()
    q = reg.qualification()
    amounts = [0, 499, 500, 999, 1000, 1499, 1500, 3999, 4000, 4999, 5000, 90000, None]
    for amount in amounts:
        c = reg.candidate()
        z = reg.certificate(c, q, "2024-02-02")
        reg.outcome(c, z, status="self_employed", monthly_earnings=amount)
    c = reg.candidate()
    z = reg.certificate(c, q, "2024-02-02")
    reg.outcome(c, z, status="unemployed", monthly_earnings=700)  # not employed: not counted
    engine = reg.build(db_url)
    with engine.connect() as conn:
        rows = _count(conn, _spec("earnings_distribution"), k=1)
    engine.dispose()
    assert {cat: n for _, cat, n in rows} == {
        "lt_500": 2,
        "500_999": 2,
        "1000_1499": 2,
        "1500_1999": 1,
        "2000_2499": 0,
        "2500_2999": 0,
        "3000_3999": 1,
        "4000_4999": 2,
        "ge_5000": 2,
        "not_reported": 1,
    }


def test_recognition_decision_time_default_limit(town: Engine) -> None:
    """Default limit 90: 30 days is d0_30, 31 is d31_60, a 90-day-old pending case is on time."""
    with town.connect() as conn:
        rows = _count(conn, _spec("recognition_decision_time"), k=2)
    assert rows == [
        ((), "d0_30", 1),
        ((), "d31_60", 1),
        ((), "d61_90", 0),
        ((), "d91_120", 0),
        ((), "d121_180", 1),
        ((), "d181_365", 0),
        ((), "d366_plus", 1),
        ((), "pending_within_limit", 2),
        ((), "pending_overdue", 1),
    ]


def test_recognition_decision_time_custom_limit(town: Engine) -> None:
    """limit_days=45 adds an edge at 45 and makes the 60- and 90-day-old pending cases overdue."""
    spec = _spec("recognition_decision_time", "period", params={"limit_days": 45})
    with town.connect() as conn:
        rows = _count(conn, spec, k=2)
    cats = (
        "d0_30",
        "d31_45",
        "d46_60",
        "d61_90",
        "d91_120",
        "d121_180",
        "d181_365",
        "d366_plus",
        "pending_within_limit",
        "pending_overdue",
    )
    assert TEMPLATES["recognition_decision_time"].categories({"limit_days": 45}) == cats
    _assert_complete(rows, spec, [PERIODS])
    assert _nonzero(rows) == {
        (("2023",), "d366_plus"): 1,
        (("2024",), "d0_30"): 1,
        (("2024",), "d31_45"): 1,
        (("2024",), "d121_180"): 1,
        (("2024",), "pending_overdue"): 3,
    }
    assert categories_within_limit({"limit_days": 45}) == ("d0_30", "d31_45")


def test_recognition_bins_for_limits_beyond_the_standard_edges() -> None:
    """A limit above 365 adds d366_<limit>; a standard edge is not duplicated; default is 90."""
    template = TEMPLATES["recognition_decision_time"]
    assert template.categories({"limit_days": 400})[-4:] == (
        "d366_400",
        "d401_plus",
        "pending_within_limit",
        "pending_overdue",
    )
    assert categories_within_limit({"limit_days": 400})[-1] == "d366_400"
    assert len(categories_within_limit({"limit_days": 400})) == 7
    assert template.categories({"limit_days": 60}) == template.categories({})
    assert categories_within_limit({}) == ("d0_30", "d31_60", "d61_90")
    assert template.categories({"limit_days": 1})[:2] == ("d0_1", "d2_30")


def test_recognition_decisions_hand_checked(town: Engine) -> None:
    """Decisions by period, and filtered to one occupation."""
    with town.connect() as conn:
        rows = _count(conn, _spec("recognition_decisions", "period"), k=2)
        assert _nonzero(rows) == {
            (("2023",), "full"): 1,
            (("2024",), "full"): 1,
            (("2024",), "partial"): 1,
            (("2024",), "rejected"): 1,
            (("2024",), "pending"): 3,
        }
        spec = _spec("recognition_decisions", filters={"isco_code": ("7411",)})
        assert _count(conn, spec, k=2) == [
            ((), "full", 1),
            ((), "partial", 1),
            ((), "rejected", 0),
            ((), "pending", 1),
        ]


def test_appeal_outcomes_hand_checked(town: Engine) -> None:
    """Appeals: dora's third appeal is over K=2; eve's 2020 appeal is outside the window."""
    with town.connect() as conn:
        spec = _spec("appeal_outcomes", "subject_type")
        rows = _count(conn, spec, k=2)
        _assert_complete(rows, spec, [("assessment", "certificate", "recognition")])
        assert _nonzero(rows) == {
            (("assessment",), "upheld"): 1,
            (("assessment",), "dismissed"): 1,
            (("assessment",), "pending"): 1,
            (("certificate",), "dismissed"): 1,
            (("recognition",), "withdrawn"): 1,
        }
        spec = _spec("appeal_outcomes", "sex", filters={"subject_type": ("assessment",)})
        assert _nonzero(_count(conn, spec, k=2)) == {
            (("female",), "upheld"): 1,
            (("female",), "dismissed"): 1,
            (("female",), "pending"): 1,
        }


def test_ties_on_date_are_broken_by_record_id(db_url: str) -> None:
    """Same-day rows are kept in id order, so the kept row is deterministic."""
    reg = RegistryFactory()
    q, p = reg.qualification(), reg.provider()
    c = reg.candidate()
    reg.assessment(c, q, p, "2024-05-05", result="absent", assessment_id="A-3")
    reg.assessment(c, q, p, "2024-05-05", result="fail", assessment_id="A-1")
    reg.assessment(c, q, p, "2024-05-05", result="pass", assessment_id="A-2")
    engine = reg.build(db_url)
    with engine.connect() as conn:
        assert _count(conn, _spec("assessment_results"), k=1) == [
            ((), "pass", 0),
            ((), "fail", 1),
            ((), "absent", 0),
        ]
        assert _count(conn, _spec("assessment_results"), k=2)[:2] == [
            ((), "pass", 1),
            ((), "fail", 1),
        ]
    engine.dispose()


def test_filter_keys_are_bound_not_spliced(db_url: str) -> None:
    """A provider id full of SQL is just a key: counted correctly, nothing executed."""
    reg = RegistryFactory()
    q = reg.qualification()
    odd = reg.provider("P'); DROP TABLE candidates; --")
    plain = reg.provider("P1")
    for provider in (odd, odd, plain):
        reg.assessment(reg.candidate(), q, provider, "2024-01-01")
    engine = reg.build(db_url)
    with engine.connect() as conn:
        spec = _spec("assessment_results", "provider", filters={"provider": (odd,)})
        assert _count(conn, spec, k=1) == [
            ((odd,), "pass", 2),
            ((odd,), "fail", 0),
            ((odd,), "absent", 0),
        ]
    assert "candidates" in inspect(engine).get_table_names()
    engine.dispose()


def test_dimension_keys_come_from_reference_tables(town: Engine) -> None:
    """Key lists: sorted distinct ISCO codes, providers plus 'none', sorted periods."""
    with town.connect() as conn:
        keys = dimension_keys(conn, ["2024", "2023", "2024"])
    assert keys == {
        "isco_code": ("7212", "7411"),
        "eqf_level": ("1", "2", "3", "4", "5", "6", "7", "8"),
        "provider": ("PA", "PB", "none"),
        "period": ("2023", "2024"),
        "sex": SEXES,
        "citizenship_group": ("national", "foreign", "unknown"),
        "months_after": ("6", "12"),
        "subject_type": ("assessment", "certificate", "recognition"),
        # From the first period's January to the newest import's month (no import yet).
        "cohort": ("2023-01",),
    }
    assert set(keys) == set(catalogue.DIMENSIONS)


def test_dimension_keys_reject_malformed_periods(sqlite_url: str) -> None:
    """Periods are four-digit years; anything else is a policy error."""
    engine = make_engine(sqlite_url)
    create_schema(engine)
    with engine.connect() as conn, pytest.raises(PolicyError, match="'24'"):
        dimension_keys(conn, ["2024", "24"])
    engine.dispose()


def test_counting_without_a_registry_is_data_unavailable(sqlite_url: str) -> None:
    """An empty node database has no municipality row and answers nothing."""
    engine = make_engine(sqlite_url)
    create_schema(engine)
    with engine.connect() as conn, pytest.raises(DataUnavailableError):
        _count(conn, _spec("appeal_outcomes"), k=1)
    engine.dispose()


def test_every_template_is_a_histogram_over_public_dimensions() -> None:
    """Templates use only known dimensions, have unique categories and version '1'."""
    assert catalogue.CATALOGUE_VERSION == "2026.1"
    assert list(TEMPLATES) == [
        "assessment_results",
        "certificates_issued",
        "employment_outcomes",
        "earnings_distribution",
        "recognition_decision_time",
        "recognition_decisions",
        "appeal_outcomes",
    ]
    for template in TEMPLATES.values():
        assert template.version == "1"
        assert set(template.dimensions) <= set(catalogue.DIMENSIONS)
        cats = template.categories({})
        assert len(cats) == len(set(cats)) >= 3


# --- sensitivity: the SQL bounding against the declared K -----------------------------------

SENS_K = 3
Maker = Callable[[RegistryFactory, "Reference", str, int, dt.date], None]


@dataclasses.dataclass(frozen=True)
class Reference:
    quals: tuple[str, str]
    providers: tuple[str, str]


def _assessment(reg: RegistryFactory, ref: Reference, c: str, v: int, day: dt.date) -> None:
    result = ("pass", "fail", "absent")[v % 3]
    reg.assessment(c, ref.quals[v % 2], ref.providers[v % 2], day, result=result)


def _certificate(reg: RegistryFactory, ref: Reference, c: str, v: int, day: dt.date) -> None:
    pathway = ("training", "prior_learning", "reciprocity")[v % 3]
    provider = None if pathway == "reciprocity" else ref.providers[v % 2]
    reg.certificate(c, ref.quals[v % 2], day, provider_id=provider, pathway=pathway)


def _employment(reg: RegistryFactory, ref: Reference, c: str, v: int, day: dt.date) -> None:
    z = reg.certificate(c, ref.quals[v % 2], day, provider_id=ref.providers[v % 2])
    status = ("employed", "self_employed", "unemployed", "unknown", "inactive")[v % 5]
    reg.outcome(
        c, z, months_after=(6, 12)[v % 2], status=status, in_field=(True, False, None)[v % 3]
    )


def _earnings(reg: RegistryFactory, ref: Reference, c: str, v: int, day: dt.date) -> None:
    z = reg.certificate(c, ref.quals[v % 2], day, provider_id=ref.providers[v % 2])
    reg.outcome(
        c,
        z,
        months_after=(6, 12)[v % 2],
        status=("employed", "self_employed")[v % 2],
        monthly_earnings=(None, 300, 1200, 2600, 7000)[v % 5],
    )


def _decision_time(reg: RegistryFactory, ref: Reference, c: str, v: int, day: dt.date) -> None:
    delay = (10, 45, 200, None)[v % 4]
    decided = None if delay is None else day + dt.timedelta(days=delay)
    reg.recognition(c, ref.quals[v % 2], day, decided_on=decided)


def _decision(reg: RegistryFactory, ref: Reference, c: str, v: int, day: dt.date) -> None:
    decision = ("full", "partial", "rejected", "pending")[v % 4]
    decided = None if decision == "pending" else day + dt.timedelta(days=20)
    reg.recognition(c, ref.quals[v % 2], day, decided_on=decided, decision=decision)


def _appeal(reg: RegistryFactory, ref: Reference, c: str, v: int, day: dt.date) -> None:
    reg.appeal(
        c,
        day,
        subject_type=("assessment", "certificate", "recognition")[v % 3],
        outcome=("upheld", "dismissed", "withdrawn", "pending")[v % 4],
    )


MAKERS: Mapping[str, Maker] = {
    "assessment_results": _assessment,
    "certificates_issued": _certificate,
    "employment_outcomes": _employment,
    "earnings_distribution": _earnings,
    "recognition_decision_time": _decision_time,
    "recognition_decisions": _decision,
    "appeal_outcomes": _appeal,
}


@dataclasses.dataclass(frozen=True)
class Person:
    """A person of the sensitivity registry and how their rows were laid out."""

    candidate_id: str
    in_window: int  # rows inside the period window
    one_cell: bool  # all in-window rows share one cell under every grouping


def _day(year: int, i: int) -> dt.date:
    return dt.date(year, 1, 1) + dt.timedelta(days=3 * i)


def _people(reg: RegistryFactory, make: Maker, ref: Reference, prefix: str) -> list[Person]:
    """Persons with many rows in one cell, in several cells, exactly K, one, and out of window."""
    people: list[Person] = []

    def person(sex: str, citizenship: str | None) -> str:
        return reg.candidate(
            sex=sex, citizenship=citizenship, candidate_id=f"{prefix}{len(people)}"
        )

    c = person("female", "AT")
    for i in range(SENS_K + 4):  # 7 rows, one cell
        make(reg, ref, c, 0, _day(2024, i))
    people.append(Person(c, SENS_K + 4, True))

    c = person("male", "DE")
    for i in range(SENS_K + 5):  # 8 rows over many cells and both periods
        make(reg, ref, c, i, _day(2023 + i % 2, i))
    people.append(Person(c, SENS_K + 5, False))

    c = person("other", None)
    for i in range(SENS_K):  # exactly K in one cell
        make(reg, ref, c, 1, _day(2023, i))
    people.append(Person(c, SENS_K, True))

    c = person("unknown", "AT")
    make(reg, ref, c, 2, _day(2024, 40))
    people.append(Person(c, 1, True))

    c = person("female", "FR")
    for i in range(4):  # four early rows outside the window, then two inside
        make(reg, ref, c, i, _day(2019, i))
    for i in range(2):
        make(reg, ref, c, 3, _day(2024, 50 + i))
    people.append(Person(c, 2, True))

    c = person("male", "AT")
    for i in range(SENS_K + 1):  # K+1 rows alternating between two cells
        make(reg, ref, c, i % 2, _day(2024, 60 + i))
    people.append(Person(c, SENS_K + 1, False))
    return people


def _sensitivity_registry(template: str) -> tuple[RegistryFactory, Reference, list[Person]]:
    reg = RegistryFactory(country="AT")
    ref = Reference(
        quals=(reg.qualification("7212", 3), reg.qualification("7411", 4)),
        providers=(reg.provider(), reg.provider()),
    )
    return reg, ref, _people(reg, MAKERS[template], ref, "p")


def _specs(template: Template) -> list[QuerySpec]:
    """No grouping, period x sex, and the first four dimensions of the template."""
    return [
        _spec(template.name),
        _spec(template.name, "period", "sex"),
        _spec(template.name, *template.dimensions[:4]),
    ]


def _vector(rows: Rows) -> list[int]:
    return [n for _, _, n in rows]


def _without(engine: Engine, candidate_id: str, spec: QuerySpec) -> list[int]:
    """Counts on the neighbouring database without one person (deleted, then rolled back)."""
    with engine.connect() as conn:
        delete_person(conn, candidate_id)
        rows = _count(conn, spec, k=SENS_K)
        conn.rollback()
    return _vector(rows)


@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_removing_a_person_changes_counts_by_at_most_k(db_url: str, template_name: str) -> None:
    """The key privacy test: L1 and L2 distance to every neighbour <= K, and tight at K."""
    template = TEMPLATES[template_name]
    reg, _, people = _sensitivity_registry(template_name)
    engine = reg.build(db_url)
    for spec in _specs(template):
        with engine.connect() as conn:
            full = _vector(_count(conn, spec, k=SENS_K))
        for person in people:
            diff = [
                a - b
                for a, b in zip(full, _without(engine, person.candidate_id, spec), strict=True)
            ]
            l1 = sum(abs(d) for d in diff)
            l2 = math.sqrt(sum(d * d for d in diff))
            assert all(d >= 0 for d in diff)
            kept = min(SENS_K, person.in_window)
            assert l1 == kept, (spec.group_by, person)
            assert l2 <= SENS_K + 1e-12
            if person.one_cell:
                assert l2 == pytest.approx(kept, abs=1e-12)
            if person.in_window >= SENS_K and person.one_cell:
                assert l1 == SENS_K
                assert l2 == pytest.approx(SENS_K, abs=1e-12)
    # A filtered query obeys the bound too.
    spec = _spec(template_name, "sex", filters={"period": ("2024",)})
    with engine.connect() as conn:
        full = _vector(_count(conn, spec, k=SENS_K))
    for person in people:
        diff = [
            a - b for a, b in zip(full, _without(engine, person.candidate_id, spec), strict=True)
        ]
        assert sum(abs(d) for d in diff) <= SENS_K
    engine.dispose()


@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_cohort_grouped_and_filtered_counts_keep_sensitivity_k(
    db_url: str, template_name: str
) -> None:
    """A person is in exactly one cohort: grouped by cohort, their whole contribution (at most
    K, tight) lies in their cohort's cells; restricted to other cohorts, it is zero."""
    reg, _, people = _sensitivity_registry(template_name)
    engine = reg.build(db_url)
    record_import(engine, reg, REF)
    with engine.connect() as conn:
        cohort_of = dict(conn.execute(select(PersonCohort.candidate_id, PersonCohort.cohort)).all())
        keys = dimension_keys(conn, PERIODS)["cohort"]
    assert keys[0] == "2023-01"
    assert keys[-1] == "2024-12"
    # The person with 2019 records is counted in the first key (it holds earlier months).
    assert sorted(cohort_of.values())[0] < keys[0]
    assert len(set(cohort_of.values())) >= 4
    for spec in (_spec(template_name, "cohort"), _spec(template_name, "cohort", "sex")):
        with engine.connect() as conn:
            rows = _count(conn, spec, k=SENS_K)
            ungrouped = _count(conn, _spec(template_name), k=SENS_K)
        # Grouping by cohort partitions the persons: the cohort cells add up to the total.
        for category in {c for _, c, _ in ungrouped}:
            total = sum(n for _, c, n in ungrouped if c == category)
            assert sum(n for _, c, n in rows if c == category) == total
        full = _vector(rows)
        for person in people:
            diff = [
                a - b
                for a, b in zip(full, _without(engine, person.candidate_id, spec), strict=True)
            ]
            assert sum(abs(d) for d in diff) == min(SENS_K, person.in_window)
            own = max(cohort_of[person.candidate_id], keys[0])
            assert all(
                d == 0 for (group, _, _), d in zip(rows, diff, strict=True) if group[0] != own
            ), (person, spec.group_by)
    for person in people:
        own = max(cohort_of[person.candidate_id], keys[0])
        for wanted, expect in (((own,), True), (tuple(k for k in keys if k != own), False)):
            spec = _spec(template_name, "sex", filters={"cohort": wanted})
            with engine.connect() as conn:
                full = _vector(_count(conn, spec, k=SENS_K))
            diff = [
                a - b
                for a, b in zip(full, _without(engine, person.candidate_id, spec), strict=True)
            ]
            moved = sum(abs(d) for d in diff)
            assert moved == (min(SENS_K, person.in_window) if expect else 0), (person, wanted)
    engine.dispose()


@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_kept_rows_do_not_depend_on_other_people(tmp_path: object, template_name: str) -> None:
    """A person's contribution is identical whether or not a crowd of others is present."""
    template = TEMPLATES[template_name]
    spec = _spec(template_name, *template.dimensions[:4])
    contributions: list[dict[str, list[int]]] = []
    for crowd in (False, True):
        reg, ref, people = _sensitivity_registry(template_name)
        if crowd:
            # Others with many rows, earlier dates and every cell, interleaved with ours.
            for j in range(12):
                c = reg.candidate(sex=SEXES[j % 4], citizenship=("AT", "DE", None)[j % 3])
                for i in range(9):
                    MAKERS[template_name](reg, ref, c, i + j, _day(2023 + (i + j) % 2, i))
        engine = reg.build(f"sqlite:///{tmp_path}/crowd_{crowd}.db")
        with engine.connect() as conn:
            full = _vector(_count(conn, spec, k=SENS_K))
        contributions.append(
            {
                p.candidate_id: [
                    a - b for a, b in zip(full, _without(engine, p.candidate_id, spec), strict=True)
                ]
                for p in people
            }
        )
        engine.dispose()
    assert contributions[0] == contributions[1]
    assert any(any(v) for v in contributions[0].values())


# --- validation -----------------------------------------------------------------------------

KEYS: dict[str, tuple[str, ...]] = {
    "isco_code": ("7212", "7411"),
    "eqf_level": tuple(str(i) for i in range(1, 9)),
    "provider": ("PA", "PB", "none"),
    "period": ("2023", "2024"),
    "sex": SEXES,
    "citizenship_group": ("national", "foreign", "unknown"),
    "months_after": ("6", "12"),
    "subject_type": ("assessment", "certificate", "recognition"),
    "cohort": ("2023-01", "2023-02", "2023-03"),
}


def _invalid(spec: QuerySpec, keys: Mapping[str, tuple[str, ...]] = KEYS) -> str:
    with pytest.raises(InvalidParametersError) as info:
        validate(spec, keys)
    return str(info.value)


def test_validate_returns_template_and_default_params() -> None:
    """A valid request resolves to its template with defaults filled in."""
    template, params = validate(_spec("recognition_decision_time", "period"), KEYS)
    assert template is TEMPLATES["recognition_decision_time"]
    assert params == {"limit_days": 90}
    assert validate(_spec("appeal_outcomes"), KEYS)[1] == {}
    spec = QuerySpec(
        template="certificates_issued", mechanism=Mechanism.DISCRETE_LAPLACE, epsilon=1.0
    )
    assert validate(spec, KEYS)[0].name == "certificates_issued"


def test_validate_names_the_unknown_template_and_the_known_ones() -> None:
    """An unknown template lists every known template."""
    message = _invalid(_spec("pass_rates"))
    assert message.startswith("unknown template 'pass_rates'; known templates: assessment_results,")
    assert all(name in message for name in TEMPLATES)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            _spec("appeal_outcomes", "isco_code"),
            "cannot group 'appeal_outcomes' by 'isco_code'; allowed dimensions: "
            "subject_type, period, sex, citizenship_group, cohort",
        ),
        (_spec("assessment_results", "sex", "period", "sex"), "duplicate group_by dimension 'sex'"),
        (
            _spec("assessment_results", "town"),
            "cannot group 'assessment_results' by unknown dimension 'town'; allowed "
            "dimensions: isco_code, eqf_level, provider, period, sex, citizenship_group, cohort",
        ),
        (
            _spec("assessment_results", "isco_code", "eqf_level", "provider", "period", "sex"),
            "at most 4 group_by dimensions, got 5",
        ),
        (
            _spec("assessment_results", filters={"colour": ("red",)}),
            "cannot filter 'assessment_results' on unknown dimension 'colour'; allowed "
            "dimensions: isco_code, eqf_level, provider, period, sex, citizenship_group, cohort",
        ),
        (
            _spec("assessment_results", filters={"months_after": ("6",)}),
            "cannot filter 'assessment_results' on 'months_after'; allowed "
            "dimensions: isco_code, eqf_level, provider, period, sex, citizenship_group, cohort",
        ),
        (
            _spec("assessment_results", filters={"provider": ("PA", "PX", "PY")}),
            "filter on 'provider': 'PX' is not a public key of this dimension",
        ),
        (
            _spec("assessment_results", filters={"period": "2024"}),
            "filter on 'period' must be a list of keys, got '2024'",
        ),
        (_spec("assessment_results", filters={"period": ()}), "filter on 'period' names no keys"),
        (
            _spec("assessment_results", params={"limit_days": 30}),
            "unknown parameter 'limit_days' for template 'assessment_results' (allowed: none)",
        ),
        (
            _spec("recognition_decision_time", params={"limit_days": 0}),
            "parameter 'limit_days' must be between 1 and 730, got 0",
        ),
        (
            _spec("recognition_decision_time", params={"limit_days": 731}),
            "parameter 'limit_days' must be between 1 and 730, got 731",
        ),
        (
            _spec("recognition_decision_time", params={"limit_days": 30.5}),
            "parameter 'limit_days' must be an integer, got 30.5",
        ),
        (
            _spec("recognition_decision_time", params={"limit_days": True}),
            "parameter 'limit_days' must be an integer, got True",
        ),
        (
            _spec("recognition_decision_time", params={"limit": 30}),
            "unknown parameter 'limit' for template 'recognition_decision_time' "
            "(allowed: limit_days)",
        ),
    ],
)
def test_validate_refuses_bad_shapes_precisely(spec: QuerySpec, expected: str) -> None:
    """Each malformed grouping, filter or parameter is refused with a message naming it."""
    assert _invalid(spec) == expected


G, L = Mechanism.DISCRETE_GAUSSIAN, Mechanism.DISCRETE_LAPLACE


@pytest.mark.parametrize(
    ("mechanism", "rho", "epsilon", "confidence", "expected"),
    [
        (G, None, None, 0.95, "the discrete Gaussian mechanism needs rho > 0, got None"),
        (G, 0.0, None, 0.95, "the discrete Gaussian mechanism needs rho > 0, got 0.0"),
        (G, -0.1, None, 0.95, "the discrete Gaussian mechanism needs rho > 0, got -0.1"),
        (G, math.nan, None, 0.95, "rho must be a finite number, got nan"),
        (G, math.inf, None, 0.95, "rho must be a finite number, got inf"),
        (G, "0.1", None, 0.95, "rho must be a finite number, got '0.1'"),
        (G, 0.1, 0.5, 0.95, "epsilon must be unset with the discrete Gaussian mechanism"),
        (L, None, None, 0.95, "the discrete Laplace mechanism needs epsilon > 0, got None"),
        (L, None, -1.0, 0.95, "the discrete Laplace mechanism needs epsilon > 0, got -1.0"),
        (L, None, math.inf, 0.95, "epsilon must be a finite number, got inf"),
        (L, 0.1, 1.0, 0.95, "rho must be unset with the discrete Laplace mechanism"),
        (G, 0.1, None, 0.0, "confidence must be strictly between 0 and 1, got 0.0"),
        (G, 0.1, None, 1.0, "confidence must be strictly between 0 and 1, got 1.0"),
        (G, 0.1, None, math.nan, "confidence must be strictly between 0 and 1, got nan"),
        (G, 0.1, None, 95, "confidence must be strictly between 0 and 1, got 95"),
    ],
)
def test_validate_refuses_bad_privacy_parameters(
    mechanism: Mechanism, rho: object, epsilon: object, confidence: object, expected: str
) -> None:
    """Loss and confidence must fit the mechanism; NaN and infinity are refused."""
    spec = QuerySpec(
        template="assessment_results",
        mechanism=mechanism,
        rho=rho,  # type: ignore[arg-type]
        epsilon=epsilon,  # type: ignore[arg-type]
        confidence=confidence,  # type: ignore[arg-type]
    )
    assert _invalid(spec).startswith(expected)


def test_validate_caps_the_number_of_cells() -> None:
    """100,000 cells pass; one group more is refused with the count."""
    keys = dict(KEYS, isco_code=tuple(f"{i:05d}" for i in range(33_333)))
    spec = _spec("assessment_results", "isco_code")
    template, params = validate(spec, keys)
    assert cell_count(template, spec, keys, params) == 99_999
    keys = dict(KEYS, isco_code=tuple(f"{i:05d}" for i in range(33_334)))
    assert _invalid(spec, keys) == (
        "the request has 100002 cells; at most 100000 are allowed "
        "(group by fewer dimensions or filter)"
    )
    # Filtering the grouped dimension brings it back under the cap.
    spec = _spec("assessment_results", "isco_code", filters={"isco_code": ("00001", "00002")})
    assert cell_count(template, spec, keys, validate(spec, keys)[1]) == 6


def test_cell_count_multiplies_filtered_key_lists_and_categories() -> None:
    """Cells = product of the grouped (filtered) key lists x categories."""
    template = TEMPLATES["employment_outcomes"]
    spec = _spec("employment_outcomes", "sex", "months_after", filters={"sex": ("male", "female")})
    assert cell_count(template, spec, KEYS, {}) == 2 * 2 * 4
    spec = _spec("recognition_decision_time", "period", params={"limit_days": 400})
    assert cell_count(TEMPLATES[spec.template], spec, KEYS, {"limit_days": 400}) == 2 * 10


def test_required_parameters_without_default_are_demanded() -> None:
    """A parameter without a default must be given (no template has one yet; the rule holds)."""
    template = dataclasses.replace(
        TEMPLATES["recognition_decision_time"],
        params=(ParamInfo("limit_days", "days", 1, 730, None),),
    )
    with pytest.raises(InvalidParametersError, match="missing parameter 'limit_days'"):
        resolve_params(template, {})
    assert resolve_params(template, {"limit_days": 7}) == {"limit_days": 7}
