"""Match keys for private duplicate detection: one shared normaliser, exact keys, local merge.

Every node must derive byte-identical key strings for the same person, or recall
silently drops; hence one normaliser (NFKD, accents stripped, case folded, letters
only for names, dates as YYYYMMDD) and one Soundex, both pinned by golden tests.
A key string is domain-separated (protocol version, key name) and bound to the run
and the occupation (ISCO code), so a token can only ever collide with the same key
of the same occupation in the same run, and tokens of different runs never compare.

Key values are personal data (class P): they exist only inside the node and leave
it only hashed to the group and blinded (`fedaudit.common.ring_crypto`).

The local merge turns a registry into rows, one per person (candidate) and
occupation: its identity keys, and for the shopping check the months in which a
pass there, or a window of 12 months after a fail there, would match. Persons with
more occupations than the per-person bound keep their most recent ones.

The key names themselves are protocol values, shared with the coordinator, in
`fedaudit.common.ring_protocol`.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fedaudit.common.ring_protocol import (
    NAME_DOB,
    NATIONAL_ID,
    PREFIX3_DOB,
    PREFIX3_SORTED_DOB,
    SHOPPING_WINDOW_MONTHS,
    SOUNDEX_DOB,
    SOUNDEX_SORTED_DOB,
    SWAPPED_DOB,
)

KEY_VERSION = "dedup/v1"

SHOP_EVENT_KEY = PREFIX3_SORTED_DOB
"""The key the shopping event tokens are built on, one of the default identity keys:
implied by exact name equality (in either order) and robust to typos after the third
letter, so a fail and a pass of the same person in two municipalities compare whenever
their rows agree on this key."""


def normalise_name(value: str | None) -> str:
    """NFKD, combining marks dropped, case folded, letters only ("Zoë O'Neil" -> "zoeoneil")."""
    if not value:
        return ""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    folded = unicodedata.normalize("NFKD", stripped.casefold())
    return "".join(ch for ch in folded if ch.isalpha() and not unicodedata.combining(ch))


def normalise_dob(value: dt.date | str | None) -> str:
    """YYYYMMDD, or "" when absent or not 8 digits (such a key is undefined)."""
    if value is None:
        return ""
    if isinstance(value, dt.date):
        return f"{value.year:04d}{value.month:02d}{value.day:02d}"
    digits = "".join(ch for ch in str(value) if ch.isdigit())
    return digits if len(digits) == 8 else ""


def normalise_national_id(value: str | None) -> str:
    """Upper-case ASCII letters and digits only ("ab-123 45" -> "AB12345")."""
    if not value:
        return ""
    folded = unicodedata.normalize("NFKD", value).upper()
    return "".join(ch for ch in folded if ch.isascii() and ch.isalnum())


_SOUNDEX_CODES = {
    **dict.fromkeys("bfpv", "1"),
    **dict.fromkeys("cgjkqsxz", "2"),
    **dict.fromkeys("dt", "3"),
    "l": "4",
    **dict.fromkeys("mn", "5"),
    "r": "6",
}


def soundex(name: str) -> str:
    """American Soundex (4 characters) of an already normalised name; "" for no ASCII letter.

    The standard rules: keep the first letter, code the rest, drop vowels, letters
    with the same code separated only by h or w count once.
    """
    letters = [ch for ch in name.lower() if "a" <= ch <= "z"]
    if not letters:
        return ""
    first = letters[0]
    out = [first.upper()]
    previous = _SOUNDEX_CODES.get(first, "")
    for ch in letters[1:]:
        code = _SOUNDEX_CODES.get(ch, "")
        if code and code != previous:
            out.append(code)
            if len(out) == 4:
                break
        if ch not in "hw":
            previous = code
    return "".join(out).ljust(4, "0")


@dataclass(frozen=True)
class Identity:
    """A person's normalised identifying fields (never logged, never sent)."""

    given: str
    family: str
    dob: str
    national_id: str = ""

    @classmethod
    def of(
        cls,
        given: str | None,
        family: str | None,
        dob: dt.date | str | None,
        national_id: str | None = None,
    ) -> Identity:
        return cls(
            normalise_name(given),
            normalise_name(family),
            normalise_dob(dob),
            normalise_national_id(national_id),
        )


def key_value(identity: Identity, key: str) -> str | None:
    """The clear-text value of one key, or None when a component is missing."""
    g, f, d = identity.given, identity.family, identity.dob
    if key == NATIONAL_ID:
        return identity.national_id or None
    if not d:
        return None
    if key == NAME_DOB:
        return f"{g}|{f}|{d}" if g and f else None
    if key == PREFIX3_DOB:
        return f"{g[:3]}|{f[:3]}|{d}" if g and f else None
    if key == SOUNDEX_DOB:
        sg, sf = soundex(g), soundex(f)
        return f"{sg}|{sf}|{d}" if sg and sf else None
    if key == SWAPPED_DOB:
        if not (g and f):
            return None
        a, b = sorted((g, f))
        return f"{a}|{b}|{d}"
    if key == PREFIX3_SORTED_DOB:
        if not (g and f):
            return None
        a, b = sorted((g[:3], f[:3]))
        return f"{a}|{b}|{d}"
    if key == SOUNDEX_SORTED_DOB:
        sg, sf = soundex(g), soundex(f)
        if not (sg and sf):
            return None
        a, b = sorted((sg, sf))
        return f"{a}|{b}|{d}"
    raise ValueError(f"unknown match key {key!r}")


def key_string(run_id: str, key: str, isco_code: str, value: str) -> bytes:
    """The domain-separated, run- and occupation-bound input of the hash to the group."""
    return f"{KEY_VERSION}|{run_id}|{key}|{isco_code}|{value}".encode()


def event_string(run_id: str, isco_code: str, value: str, month: int) -> bytes:
    """Input of a shopping event token: the event key's value and a month index."""
    return f"{KEY_VERSION}|{run_id}|shop|{SHOP_EVENT_KEY}|{isco_code}|{value}|{month}".encode()


def cert_string(run_id: str, isco_code: str, municipality: str, certificate_no: str) -> bytes:
    """Input of a certificate token: the issuing municipality and its certificate number."""
    number = normalise_national_id(certificate_no)
    return f"{KEY_VERSION}|{run_id}|cert|{isco_code}|{municipality}|{number}".encode()


def month_index(day: dt.date) -> int:
    """Months since year 0, so that a window of 12 months is a range of 13 integers."""
    return day.year * 12 + (day.month - 1)


# --- local merge ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonInput:
    """One candidate of the node's registry with the events the ring needs."""

    person_id: str
    identity: Identity
    # isco -> latest day certified here (non-reciprocity pathways only)
    certified: Mapping[str, dt.date] = field(default_factory=dict)
    # isco -> days of failed assessments here
    fails: Mapping[str, Sequence[dt.date]] = field(default_factory=dict)
    # isco -> days of passed assessments here
    passes: Mapping[str, Sequence[dt.date]] = field(default_factory=dict)
    # revoked certificates issued here: (isco, certificate_no)
    revoked: Sequence[tuple[str, str]] = ()
    # valid reciprocity certificates recognised here: (isco, origin municipality, origin no)
    recognised: Sequence[tuple[str, str, str]] = ()


@dataclass(frozen=True)
class PersonRow:
    """One person and occupation at this node, before hashing.

    `keys` has one entry per plan key (None: undefined, filled with a random element).
    `fail_months`: the months a pass elsewhere would be shopping (empty: no fail here).
    `pass_month`: the first pass here (None: none).
    """

    isco_code: str
    certified: bool
    key_names: tuple[str, ...]
    keys: tuple[str | None, ...]
    event_value: str | None
    fail_months: tuple[int, ...]
    pass_month: int | None


@dataclass(frozen=True)
class CertRow:
    """A certificate fact keyed by (issuing municipality, number): revoked here or recognised here."""

    isco_code: str
    revoked: bool  # True: revoked here (origin side); False: recognised here (reciprocity)
    municipality: str
    certificate_no: str


def person_rows(
    person: PersonInput, keys: Sequence[str], *, bound: int, shopping: bool = True
) -> list[PersonRow]:
    """The rows of one person: one per occupation, at most `bound`, most recent first.

    An occupation counts when the person was certified here or was assessed here
    (shopping needs fails and passes of persons who never got a certificate here).
    Only the most recent fail matters: a pass elsewhere within 12 months of any
    earlier fail that came before the last one is rare and is not counted.
    """
    iscos: dict[str, dt.date] = {}
    for isco, day in person.certified.items():
        iscos[isco] = max(day, iscos.get(isco, day))
    if shopping:
        for events in (person.fails, person.passes):
            for isco, days in events.items():
                if days:
                    last = max(days)
                    iscos[isco] = max(last, iscos.get(isco, last))
    chosen = sorted(iscos, key=lambda i: (iscos[i], i), reverse=True)[:bound]
    values = tuple(key_value(person.identity, k) for k in keys)
    event_value = key_value(person.identity, SHOP_EVENT_KEY)
    rows = []
    for isco in sorted(chosen):
        fail_months: tuple[int, ...] = ()
        pass_month = None
        if shopping:
            fails = person.fails.get(isco, ())
            if fails:
                start = month_index(max(fails))
                fail_months = tuple(range(start, start + SHOPPING_WINDOW_MONTHS + 1))
            passes = person.passes.get(isco, ())
            if passes:
                pass_month = month_index(min(passes))
        rows.append(
            PersonRow(
                isco_code=isco,
                certified=isco in person.certified,
                key_names=tuple(keys),
                keys=values,
                event_value=event_value,
                fail_months=fail_months,
                pass_month=pass_month,
            )
        )
    return rows


def cert_rows(person: PersonInput, municipality: str, *, bound: int) -> list[CertRow]:
    """Certificate rows of one person: at most `bound` revoked and `bound` recognised."""
    rows = [
        CertRow(isco, True, municipality, number) for isco, number in sorted(person.revoked)[:bound]
    ]
    rows += [
        CertRow(isco, False, origin, number)
        for isco, origin, number in sorted(person.recognised)[:bound]
    ]
    return rows


def merge_local(
    persons: Iterable[PersonInput],
    keys: Sequence[str],
    municipality: str,
    *,
    bound: int,
    shopping: bool = True,
    revoked: bool = True,
) -> tuple[list[PersonRow], list[CertRow]]:
    """All rows of a node: each person at most `bound` rows of each kind."""
    people: list[PersonRow] = []
    certs: list[CertRow] = []
    for person in persons:
        people.extend(person_rows(person, keys, bound=bound, shopping=shopping))
        if revoked:
            certs.extend(cert_rows(person, municipality, bound=bound))
    return people, certs
