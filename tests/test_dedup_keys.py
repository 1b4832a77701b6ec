"""Golden tests for the shared normaliser, Soundex, every match key and the local merge."""

from __future__ import annotations

import datetime as dt

import pytest

from fedaudit.common.ring_protocol import (
    NAME_DOB,
    NAME_KEYS,
    NATIONAL_ID,
    PREFIX3_DOB,
    PREFIX3_SORTED_DOB,
    SOUNDEX_DOB,
    SOUNDEX_SORTED_DOB,
    SWAPPED_DOB,
)
from fedaudit.node.ring.keys import (
    Identity,
    PersonInput,
    cert_string,
    event_string,
    key_string,
    key_value,
    merge_local,
    normalise_dob,
    normalise_name,
    normalise_national_id,
    soundex,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Zoë", "zoe"),
        ("  O'Neil-Smith ", "oneilsmith"),
        ("MÜLLER", "muller"),
        ("Straße", "strasse"),
        ("Ångström", "angstrom"),
        ("Jean Paul 2nd", "jeanpaulnd"),
        ("ǅurić", "dzuric"),
        ("", ""),
        (None, ""),
    ],
)
def test_normalise_name_golden(raw, expected):
    """Names are NFKD-decomposed, stripped of accents, case folded and reduced to letters."""
    assert normalise_name(raw) == expected


def test_normalise_dob_and_id():
    """Dates become YYYYMMDD (invalid lengths are undefined); ids keep upper-case alphanumerics."""
    assert normalise_dob(dt.date(1998, 3, 4)) == "19980304"
    assert normalise_dob("1998-03-04") == "19980304"
    assert normalise_dob("199803") == ""
    assert normalise_dob(None) == ""
    assert normalise_national_id("at-1998 0001") == "AT19980001"
    assert normalise_national_id(None) == ""


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("robert", "R163"),
        ("rupert", "R163"),
        ("rubin", "R150"),
        ("ashcraft", "A261"),
        ("ashcroft", "A261"),
        ("tymczak", "T522"),
        ("pfister", "P236"),
        ("honeyman", "H555"),
        ("lee", "L000"),
        ("", ""),
    ],
)
def test_soundex_golden(name, code):
    """American Soundex, including the h/w rule (Ashcraft A261) and first-letter coding (Pfister)."""
    assert soundex(name) == code


def test_each_key_golden():
    """Every key's clear value for one identity, and undefined keys when a field is missing."""
    ident = Identity.of("Zoë", "Müller", dt.date(1990, 1, 2), "x-12")
    assert key_value(ident, NAME_DOB) == "zoe|muller|19900102"
    assert key_value(ident, PREFIX3_DOB) == "zoe|mul|19900102"
    assert key_value(ident, SOUNDEX_DOB) == "Z000|M460|19900102"
    assert key_value(ident, SWAPPED_DOB) == "muller|zoe|19900102"
    assert key_value(ident, NATIONAL_ID) == "X12"
    swapped = Identity.of("Müller", "Zoe", "1990-01-02")
    assert key_value(swapped, SWAPPED_DOB) == key_value(ident, SWAPPED_DOB)
    assert key_value(swapped, NAME_DOB) != key_value(ident, NAME_DOB)
    no_dob = Identity.of("Zoë", "Müller", None)
    assert all(
        key_value(no_dob, k) is None for k in (NAME_DOB, PREFIX3_DOB, SOUNDEX_DOB, SWAPPED_DOB)
    )
    assert key_value(Identity.of("A", "B", "19900102"), NATIONAL_ID) is None


def test_sorted_keys_golden_and_order_independent():
    """The default keys sort the two name parts, so swapped given/family names still match."""
    assert NAME_KEYS == (PREFIX3_SORTED_DOB, SOUNDEX_SORTED_DOB)
    ident = Identity.of("Zoë", "Müller", dt.date(1990, 1, 2))
    assert key_value(ident, PREFIX3_SORTED_DOB) == "mul|zoe|19900102"
    assert key_value(ident, SOUNDEX_SORTED_DOB) == "M460|Z000|19900102"
    swapped = Identity.of("Müller", "Zoe", "1990-01-02")
    for key in NAME_KEYS:
        assert key_value(swapped, key) == key_value(ident, key)
    variant = Identity.of("Zoe", "Mueller", "1990-01-02")  # sounds alike
    assert key_value(variant, SOUNDEX_SORTED_DOB) == key_value(ident, SOUNDEX_SORTED_DOB)
    longer = Identity.of("Zoey", "Müllerová", "1990-01-02")  # same first three letters
    assert key_value(longer, PREFIX3_SORTED_DOB) == key_value(ident, PREFIX3_SORTED_DOB)
    for missing in (Identity.of("Zoë", None, "19900102"), Identity.of("Zoë", "Müller", None)):
        assert all(key_value(missing, k) is None for k in NAME_KEYS)


def test_key_strings_are_domain_separated_and_bound():
    """Key strings differ by run, key name and occupation, and event/cert strings by domain."""
    base = key_string("r1", NAME_DOB, "7212", "a|b|19900102")
    assert base == b"dedup/v1|r1|name_dob|7212|a|b|19900102"
    assert base != key_string("r2", NAME_DOB, "7212", "a|b|19900102")
    assert base != key_string("r1", SWAPPED_DOB, "7212", "a|b|19900102")
    assert base != key_string("r1", NAME_DOB, "7411", "a|b|19900102")
    assert event_string("r1", "7212", "a|b|19900102", 24000) != base
    assert cert_string("r1", "7212", "M01", "m01-0001") == b"dedup/v1|r1|cert|7212|M01|M010001"


def test_local_merge_one_row_per_person_and_occupation_with_bound():
    """A person gets one row per occupation, at most `bound` (most recent kept), fixed key width."""
    person = PersonInput(
        person_id="C1",
        identity=Identity.of("Ann", "Lee", "19900102"),
        certified={
            "7212": dt.date(2020, 1, 1),
            "7411": dt.date(2022, 1, 1),
            "5120": dt.date(2021, 1, 1),
        },
        fails={"7212": [dt.date(2019, 3, 1), dt.date(2019, 6, 1)]},
        passes={"7212": [dt.date(2019, 12, 1)]},
        revoked=[("7212", "N1")],
        recognised=[("7411", "M02", "X9")],
    )
    keys = (NAME_DOB, PREFIX3_DOB, NATIONAL_ID)
    people, certs = merge_local([person], keys, "M01", bound=2)
    assert [p.isco_code for p in people] == ["5120", "7411"]  # 7212 is the oldest
    assert all(len(p.keys) == 3 and p.keys[2] is None for p in people)
    people, _ = merge_local([person], keys, "M01", bound=3)
    welder = next(p for p in people if p.isco_code == "7212")
    assert welder.fail_months == tuple(
        range(2019 * 12 + 5, 2019 * 12 + 5 + 13)
    )  # after the last fail
    assert welder.pass_month == 2019 * 12 + 11
    assert [(c.revoked, c.municipality) for c in certs] == [(True, "M01"), (False, "M02")]
