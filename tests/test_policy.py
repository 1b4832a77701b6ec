"""The node policy file: the example parses, and every invalid field is named precisely."""

from __future__ import annotations

import copy
import datetime as dt
import math
from pathlib import Path
from typing import Any

import pytest

from fedaudit.node.errors import PolicyError
from fedaudit.node.privacy.policy import (
    DEFAULT_BOUNDS,
    MAX_POLICY_BYTES,
    example_policy,
    load_policy,
    parse_policy,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "policy.example.yaml"

VALID: dict[str, Any] = {
    "version": 1,
    "requesters": {
        "oversight-board": {"rho_per_period": 2.0, "templates": "all"},
        "stats": {"rho_per_period": 1, "templates": ["certificates_issued"]},
    },
    "budget": {"period": "quarter", "node_rho_total": 10.0, "max_rho_per_request": 0.5},
    "reliability": {"suppress_below": 10},
    "bounds": {"assessment_results": 3},
    "periods": {"first": 2019, "last": 2026},
    "templates": "all",
}


_DELETE = object()


def _with(path: str, value: object) -> dict[str, Any]:
    """VALID with the field at dotted `path` set to `value` (or removed for _DELETE)."""
    document = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return document


def test_example_file_parses() -> None:
    """deploy/policy.example.yaml is a valid policy with the documented values."""
    policy = load_policy(EXAMPLE)
    assert set(policy.requesters) == {"oversight-board", "regional-statistics"}
    assert policy.requesters["oversight-board"].rho_per_period == 2.0
    assert policy.requesters["oversight-board"].templates is None
    assert policy.budget_period == "quarter"
    assert policy.node_rho_total == 10.0
    assert policy.max_rho_per_request == 1.0
    assert policy.suppress_below == 10
    assert dict(policy.bounds) == dict(DEFAULT_BOUNDS)
    assert policy.periods == tuple(str(y) for y in range(2019, 2027))
    assert policy.templates is None
    assert policy.node_reserved_rho == 1.0
    assert policy.node_share("oversight-board") == 8.0
    assert policy.node_share("regional-statistics") == 1.0  # 10 - 1 reserved - 8 named


def test_node_shares_default_to_equal_parts_of_what_is_not_reserved() -> None:
    """Requesters without a named share split what neither a share nor the reserve takes."""
    policy = parse_policy(VALID)
    assert policy.node_share("oversight-board") == policy.node_share("stats") == 5.0
    policy = parse_policy(_with("budget.node_reserved_rho", 4))
    assert policy.node_share("stats") == 3.0
    document = _with("requesters.stats.node_share", 1.5)
    document["budget"]["node_reserved_rho"] = 0.5
    policy = parse_policy(document)
    assert (policy.node_share("stats"), policy.node_share("oversight-board")) == (1.5, 8.0)
    assert policy.node_share("stranger") == 0.0


def test_node_shares_cannot_promise_more_than_the_node_has() -> None:
    """Named shares plus the reserve above the total, or nothing left for the others: an error."""
    document = _with("requesters.stats.node_share", 9.5)
    document["budget"]["node_reserved_rho"] = 1.0
    with pytest.raises(PolicyError, match=r"requesters: the node_share values .* add up to 10.5"):
        parse_policy(document)
    with pytest.raises(
        PolicyError, match=r"nothing of budget.node_rho_total is left for oversight"
    ):
        parse_policy(_with("requesters.stats.node_share", 10.0))
    with pytest.raises(PolicyError, match=r"budget.node_reserved_rho: must be less than"):
        parse_policy(_with("budget.node_reserved_rho", 10.0))
    with pytest.raises(PolicyError, match=r"budget.node_reserved_rho: must be a number >= 0"):
        parse_policy(_with("budget.node_reserved_rho", -1))
    with pytest.raises(PolicyError, match=r"requesters.stats.node_share: must be a finite number"):
        parse_policy(_with("requesters.stats.node_share", 0))


def test_ring_padding_defaults_off_switch_and_bad_values() -> None:
    """The ring's DP dummy padding: on by default, `off` turns it off, bad values named."""
    policy = parse_policy(VALID)
    assert (policy.ring.padding_rho, policy.ring.padding_delta) == (0.25, 1e-7)
    off = copy.deepcopy(VALID)
    off["ring"] = {"padding_rho": "off"}
    assert parse_policy(off).ring.padding_rho is None
    assert policy.ring.pace_factor == 1.0
    unpaced = copy.deepcopy(VALID)
    unpaced["ring"] = {"pace_factor": 0}
    assert parse_policy(unpaced).ring.pace_factor == 0.0
    for field, value, message in (
        ("padding_rho", 0, r"ring\.padding_rho: must be a finite number > 0"),
        ("padding_rho", "no", r"ring\.padding_rho: must be a finite number > 0"),
        ("padding_delta", 0.5, r"ring\.padding_delta: must be a number > 0 and at most 0\.0001"),
        ("padding_delta", True, r"ring\.padding_delta: must be a number > 0"),
        ("pace_factor", -1, r"ring\.pace_factor: must be a number from 0 \(no floor\) to 100"),
        ("pace_factor", "fast", r"ring\.pace_factor: must be a number from 0"),
    ):
        bad = copy.deepcopy(VALID)
        bad["ring"] = {field: value}
        with pytest.raises(PolicyError, match=message):
            parse_policy(bad)


def test_minimum_charges_default_and_are_checked() -> None:
    """The least rho of a query: default, override, and bad values."""
    policy = parse_policy(VALID)
    assert policy.min_rho_per_query == 0.001
    assert parse_policy(_with("budget.min_rho_per_query", 0.01)).min_rho_per_query == 0.01
    with pytest.raises(PolicyError, match=r"budget\.min_rho_per_query: must not exceed"):
        parse_policy(_with("budget.min_rho_per_query", 0.6))
    with pytest.raises(PolicyError, match=r"budget\.min_rho_per_query: must be a finite"):
        parse_policy(_with("budget.min_rho_per_query", 0))


def test_allows_combines_node_and_requester_lists() -> None:
    """A template must pass the node list and the requester list; strangers get nothing."""
    policy = parse_policy(_with("templates", ["certificates_issued", "assessment_results"]))
    assert policy.allows("oversight-board", "assessment_results")
    assert not policy.allows("oversight-board", "appeal_outcomes")  # node list
    assert policy.allows("stats", "certificates_issued")
    assert not policy.allows("stats", "assessment_results")  # requester list
    assert not policy.allows("stranger", "certificates_issued")
    assert not policy.allows("oversight-board", "no_such_template")


def test_bounds_default_and_override() -> None:
    """Omitted bounds keep their defaults; a bound without a template is an error."""
    policy = parse_policy(_with("bounds", {"certificates_issued": 5}))
    assert policy.bound("certificates_issued") == 5
    assert policy.bound("assessment_results") == DEFAULT_BOUNDS["assessment_results"]
    with pytest.raises(PolicyError, match="no_such_template"):
        policy.bound("no_such_template")


@pytest.mark.parametrize(
    ("period", "now", "key"),
    [
        ("month", dt.datetime(2026, 11, 30, 23, 59, tzinfo=dt.UTC), "2026-11"),
        ("quarter", dt.datetime(2026, 11, 1, tzinfo=dt.UTC), "2026-Q4"),
        ("quarter", dt.datetime(2026, 1, 1), "2026-Q1"),
        ("quarter", dt.datetime(2026, 6, 30), "2026-Q2"),
        ("quarter", dt.datetime(2026, 7, 1), "2026-Q3"),
        ("year", dt.datetime(2026, 3, 4), "2026"),
        # 00:30 on 1 Jan in UTC+2 is still the old year in UTC.
        ("year", dt.datetime(2027, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2026"),
    ],
)
def test_period_of(period: str, now: dt.datetime, key: str) -> None:
    """Budget period keys by month, quarter and year, in UTC."""
    assert parse_policy(_with("budget.period", period)).period_of(now) == key


def test_optional_sections_default() -> None:
    """Omitting reliability, bounds, periods and templates gives the documented defaults."""
    document = {k: v for k, v in VALID.items() if k in ("version", "requesters", "budget")}
    policy = parse_policy(document)
    this_year = dt.datetime.now(dt.UTC).year
    assert policy.suppress_below == 10
    assert dict(policy.bounds) == dict(DEFAULT_BOUNDS)
    assert policy.periods == tuple(str(y) for y in range(this_year - 7, this_year + 1))
    assert policy.templates is None


def test_policy_is_immutable() -> None:
    """The parsed policy cannot be loosened at run time by accident."""
    policy = parse_policy(VALID)
    with pytest.raises(TypeError):
        policy.bounds["assessment_results"] = 50  # type: ignore[index]
    with pytest.raises(AttributeError):
        policy.node_rho_total = 99.0  # type: ignore[misc]


def test_example_policy_is_valid() -> None:
    """The demo policy names its requesters and has a node cap covering them."""
    policy = example_policy({"board": 1.0, "other": 0.5})
    assert policy.requesters["board"].rho_per_period == 1.0
    assert policy.node_rho_total == 1.5
    assert policy.allows("other", "appeal_outcomes")
    with pytest.raises(PolicyError, match="requesters"):
        example_policy({"bad name": 1.0})


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            _with("budget.max_rho_per_request", "abc"),
            "budget.max_rho_per_request: must be a finite number > 0, got 'abc'",
        ),
        (
            _with("budget.max_rho_per_request", math.nan),
            "budget.max_rho_per_request: must be a finite number > 0",
        ),
        (
            _with("budget.node_rho_total", math.inf),
            "budget.node_rho_total: must be a finite number > 0",
        ),
        (
            _with("budget.node_rho_total", True),
            "budget.node_rho_total: must be a finite number > 0, got True",
        ),
        (_with("budget.node_rho_total", -1), "budget.node_rho_total: must be a finite number > 0"),
        (_with("budget.node_rho_total", 0), "budget.node_rho_total: must be a finite number > 0"),
        (_with("budget.node_rho_total", 1e9), "budget.node_rho_total: must be at most"),
        (
            _with("budget.max_rho_per_request", 11.0),
            "budget.max_rho_per_request: must not exceed budget.node_rho_total",
        ),
        (_with("budget.period", "week"), "budget.period: must be one of month, quarter, year"),
        (_with("budget.period", _DELETE), "budget.period: is required"),
        (_with("budget.node_rho_total", _DELETE), "budget.node_rho_total: is required"),
        (_with("budget.max_rho_per_requets", 0.1), "budget.max_rho_per_requets: unknown key"),
        (_with("budget", _DELETE), "budget: is required"),
        (_with("budget", [1, 2]), "budget: must be a mapping"),
        (
            _with("requesters.oversight-board.rho_per_period", "2"),
            "requesters.oversight-board.rho_per_period: must be a finite number > 0",
        ),
        (
            _with("requesters.oversight-board.rho_per_period", _DELETE),
            "requesters.oversight-board.rho_per_period: is required",
        ),
        (
            _with("requesters.oversight-board.rho_per_periode", 1.0),
            "requesters.oversight-board.rho_per_periode: unknown key",
        ),
        (
            _with("requesters.oversight-board.templates", ["certificates_issued", "nope"]),
            "requesters.oversight-board.templates[1]: unknown template 'nope'",
        ),
        (
            _with("requesters.oversight-board.templates", "some"),
            "requesters.oversight-board.templates: must be 'all' or a list",
        ),
        (
            _with("requesters.oversight-board", None),
            "requesters.oversight-board: must be a mapping",
        ),
        (_with("requesters", {}), "requesters: must name at least one requester"),
        (_with("requesters", _DELETE), "requesters: is required"),
        (
            _with("requesters", {"has space": {"rho_per_period": 1.0}}),
            "requesters: invalid requester name 'has space'",
        ),
        (
            _with("requesters", {"a:b": {"rho_per_period": 1.0}}),
            "requesters: invalid requester name 'a:b'",
        ),
        (
            _with("reliability.suppress_below", -1),
            "reliability.suppress_below: must be an integer from 0",
        ),
        (
            _with("reliability.suppress_below", 2.5),
            "reliability.suppress_below: must be an integer from 0",
        ),
        (_with("reliability.suppress", 5), "reliability.suppress: unknown key"),
        (
            _with("bounds.assessment_results", 0),
            "bounds.assessment_results: must be an integer from 1 to 100, got 0",
        ),
        (
            _with("bounds.assessment_results", 101),
            "bounds.assessment_results: must be an integer from 1 to 100, got 101",
        ),
        (
            _with("bounds.assessment_results", 2.0),
            "bounds.assessment_results: must be an integer from 1 to 100",
        ),
        (
            _with("bounds.assessment_results", False),
            "bounds.assessment_results: must be an integer from 1 to 100",
        ),
        (_with("bounds.assesment_results", 2), "bounds.assesment_results: unknown key"),
        (_with("periods.last", 2018), "periods.last: must not be before periods.first"),
        (_with("periods.first", "2019"), "periods.first: must be an integer from 1900 to 2100"),
        (_with("periods.first", _DELETE), "periods.first: is required"),
        (_with("cohorts", {"first": "2023-3"}), "cohorts.first: must be a month as 'YYYY-MM'"),
        (_with("cohorts", {"first": "2023-13"}), "cohorts.first: must be a month as 'YYYY-MM'"),
        (_with("cohorts", {"first": 202301}), "cohorts.first: must be a month as 'YYYY-MM'"),
        (_with("cohorts", {"open_months": -1}), "cohorts.open_months: must be an integer from 0"),
        (_with("cohorts", {"open_months": 121}), "cohorts.open_months: must be an integer from 0"),
        (_with("cohorts", {"last": "2023-01"}), "cohorts.last: unknown key"),
        (_with("templates", ["nope"]), "templates[0]: unknown template 'nope'"),
        (_with("version", 2), "version: must be 1, got 2"),
        (_with("version", True), "version: must be 1, got True"),
        (_with("version", _DELETE), "version: is required"),
        (_with("extra", 1), "extra: unknown key"),
        ([1, 2], "must be a mapping, got [1, 2]"),
        (None, "the document is empty"),
    ],
)
def test_invalid_field_is_named(document: object, expected: str) -> None:
    """Each invalid field raises PolicyError with the source and the dotted field path."""
    with pytest.raises(PolicyError) as info:
        parse_policy(document, source="policy.yaml")
    assert str(info.value).startswith("policy.yaml: ")
    assert expected in str(info.value)


def test_cohort_settings_and_their_defaults() -> None:
    """The first cohort defaults to January of the first period; open_months to 13."""
    policy = parse_policy(VALID)
    assert (policy.cohort_start, policy.cohort_open_months) == (
        f"{policy.periods[0]}-01",
        13,
    )
    custom = parse_policy(_with("cohorts", {"first": "2024-07", "open_months": 0}))
    assert (custom.cohort_start, custom.cohort_open_months) == ("2024-07", 0)


def test_valid_document_parses() -> None:
    """The base document of the invalid cases is itself valid (so each case tests one field)."""
    policy = parse_policy(VALID)
    assert policy.requesters["stats"].rho_per_period == 1.0
    assert policy.requesters["stats"].templates == frozenset({"certificates_issued"})


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "policy.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    """A YAML syntax error names the file and the line."""
    path = _write(tmp_path, "version: 1\nrequesters:\n  a: [1, 2\nbudget: {}\n")
    with pytest.raises(PolicyError, match=r"policy\.yaml: line \d+, column \d+: invalid YAML"):
        load_policy(path)


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    """A repeated key must not silently replace the first value."""
    path = _write(
        tmp_path,
        "version: 1\n"
        "requesters:\n"
        "  board:\n"
        "    rho_per_period: 0.5\n"
        "    rho_per_period: 50\n"
        "budget: {period: year, node_rho_total: 1, max_rho_per_request: 0.1}\n",
    )
    with pytest.raises(PolicyError, match=r"line 5, .*duplicate key 'rho_per_period'"):
        load_policy(path)


def test_yaml_booleans_are_not_numbers(tmp_path: Path) -> None:
    """YAML `yes` is a boolean and must not pass as a budget of 1."""
    path = _write(
        tmp_path,
        "version: 1\n"
        "requesters: {board: {rho_per_period: yes}}\n"
        "budget: {period: year, node_rho_total: 1, max_rho_per_request: 0.1}\n",
    )
    with pytest.raises(PolicyError, match=r"requesters\.board\.rho_per_period: .*got True"):
        load_policy(path)


def test_yaml_nan_is_rejected(tmp_path: Path) -> None:
    """YAML `.nan` for a cap is refused."""
    path = _write(
        tmp_path,
        "version: 1\n"
        "requesters: {board: {rho_per_period: 1}}\n"
        "budget: {period: year, node_rho_total: .nan, max_rho_per_request: 0.1}\n",
    )
    with pytest.raises(PolicyError, match=r"budget\.node_rho_total: must be a finite number"):
        load_policy(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the document is empty"),
        ("- a\n- b\n", "must be a mapping"),
        ("just text\n", "must be a mapping, got 'just text'"),
        ("version: 1\n---\nversion: 1\n", "invalid YAML"),
    ],
)
def test_non_mapping_documents(tmp_path: Path, text: str, expected: str) -> None:
    """Empty, list, scalar and multi-document files are refused with a clear message."""
    with pytest.raises(PolicyError, match=expected):
        load_policy(_write(tmp_path, text))


def test_too_large_file_is_refused(tmp_path: Path) -> None:
    """A file over 1 MiB is refused before parsing."""
    path = _write(tmp_path, "# padding\n" * (MAX_POLICY_BYTES // 10 + 1))
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(path)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    """A missing file and a non-UTF-8 file give a PolicyError naming the file."""
    with pytest.raises(PolicyError, match=r"missing\.yaml: cannot read"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(PolicyError, match=r"policy\.yaml: not UTF-8"):
        load_policy(_write(tmp_path, b"version: 1\n\xff\xfe\n"))
