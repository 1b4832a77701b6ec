"""Cohorts: the partition of a node's persons that the ledger accounts per part.

A person's cohort is the calendar month ("YYYY-MM") of their earliest record at this
node, fixed at their first import (`fedaudit.node.ingest.cohorts`). Because it is a
function of the person's own records only, queries that read disjoint sets of
cohorts read disjoint sets of persons, and their privacy losses compose in parallel:
what a person has lost is what their own cohort was charged (docs/cohorts.md).

The ledger stores what an entry is charged to as contiguous, disjoint ranges of
cohorts `[first, last]` (text comparison orders "YYYY-MM" chronologically). The
public key list of the `cohort` dimension starts at the policy's first cohort; its
first key stands for that month *and every earlier one* (persons whose records
predate cohort accounting are counted there), so its range starts at `EARLIEST`.
A query over all cohorts is charged `[EARLIEST, newest key]`: a person whose cohort
is later than the newest key did not exist when it ran. The blinding ring and the
revocation reconciliation are charged every cohort up to a month past the newest
import (`Ledger.existing_cohorts`); every entry written before cohort accounting is
charged `ALL` (every cohort, whenever it arrives).

This module is pure: ranges and sums, no database.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterable, Sequence

EARLIEST = "0000-00"
"""Below every month: the start of the range of the first public cohort key."""
LATEST = "9999-99"
"""Above every month."""

CohortRange = tuple[str, str]
"""[first, last], both inclusive."""

ALL: tuple[CohortRange, ...] = ((EARLIEST, LATEST),)
"""Every cohort, including those not yet imported."""

_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


def month_of(day: dt.date) -> str:
    """The cohort key of a date: its calendar month as "YYYY-MM"."""
    return f"{day.year:04d}-{day.month:02d}"


def is_month(text: object) -> bool:
    """True for a "YYYY-MM" month key."""
    return isinstance(text, str) and _MONTH.fullmatch(text) is not None


def months(first: str, last: str) -> tuple[str, ...]:
    """Every month from `first` to `last` inclusive (empty when last < first)."""
    year, month = int(first[:4]), int(first[5:])
    end = (int(last[:4]), int(last[5:]))
    found: list[str] = []
    while (year, month) <= end:
        found.append(f"{year:04d}-{month:02d}")
        month += 1
        if month == 13:
            year, month = year + 1, 1
    return tuple(found)


def add_months(month: str, count: int) -> str:
    """`month` ("YYYY-MM") moved by `count` months (negative: back)."""
    index = int(month[:4]) * 12 + int(month[5:]) - 1 + count
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def epoch(
    ranges: Sequence[CohortRange],
    imports: Sequence[tuple[int, str, frozenset[str]]],
    open_months: int,
) -> int:
    """The last import that made questions about `ranges` new; 0 if none did.

    `imports` are (sequence number, reference month, cohorts it reopened). An import
    makes a question new when the question reads a cohort that was still open at it
    (its month at most `open_months` before the import's reference month) or one the
    import reopened. Everything here is public (reference dates, the officer's reopen
    statements), so whether a question replays reveals nothing about the persons.
    """
    newest = max(last for _, last in ranges)
    found = 0
    for seq, reference_month, reopened in imports:
        if newest >= add_months(reference_month, -open_months) or any(
            a <= c <= b for c in reopened for a, b in ranges
        ):
            found = max(found, seq)
    return found


def ranges_for_keys(selected: Iterable[str], public: Sequence[str]) -> tuple[CohortRange, ...]:
    """The ledger ranges a query reading the `selected` public cohort keys is charged.

    Consecutive keys of `public` merge into one range; the first public key's range
    starts at `EARLIEST` (it also holds the persons of earlier months). Every
    selected key must be in `public`.
    """
    wanted = set(selected)
    unknown = wanted - set(public)
    if unknown:
        raise ValueError(f"not public cohort keys: {sorted(unknown)}")
    found: list[CohortRange] = []
    start: str | None = None
    previous = ""
    for index, key in enumerate(public):
        if key in wanted:
            if start is None:
                start = EARLIEST if index == 0 else key
            previous = key
        elif start is not None:
            found.append((start, previous))
            start = None
    if start is not None:
        found.append((start, previous))
    return tuple(found)


def cohorts_in(ranges: Sequence[CohortRange], cohorts: Iterable[str]) -> tuple[str, ...]:
    """The `cohorts` (stored cohort values) that fall in any of `ranges`, sorted."""
    return tuple(sorted(c for c in set(cohorts) if any(a <= c <= b for a, b in ranges)))


def check_ranges(ranges: Sequence[CohortRange]) -> tuple[CohortRange, ...]:
    """`ranges` sorted, each first <= last, pairwise disjoint; else ValueError."""
    ordered = tuple(sorted(ranges))
    if not ordered:
        raise ValueError("a charge needs at least one cohort range")
    for first, last in ordered:
        if not (first <= last and len(first) == len(last) == 7):
            raise ValueError(f"not a cohort range: {(first, last)!r}")
    for (_, last), (first, _) in itertools.pairwise(ordered):
        if first <= last:
            raise ValueError(f"cohort ranges overlap: {ordered!r}")
    return ordered


def peak(spent: Iterable[tuple[str, str, int]], ranges: Sequence[CohortRange]) -> tuple[int, str]:
    """The most any cohort in `ranges` has spent, and the first cohort where it is reached.

    `spent` holds (first, last, units) of charged ranges (several rows may share a
    range). What a cohort has spent is the sum over the rows whose range contains it;
    as a function of the cohort it only rises where a row's range starts, so the
    maximum over a range [a, b] is reached at a or at a row's start inside it. One
    sweep over the sorted starts and ends: O((rows + points) log rows).
    """
    rows = list(spent)
    starts = sorted((first, units) for first, _, units in rows)
    ends = sorted((last, units) for _, last, units in rows)
    points = sorted(
        {a for a, _ in ranges}
        | {first for first, _, _ in rows if any(a < first <= b for a, b in ranges)}
    )
    best, where = -1, ""
    total, i, j = 0, 0, 0
    for point in points:
        while i < len(starts) and starts[i][0] <= point:
            total += starts[i][1]
            i += 1
        while j < len(ends) and ends[j][0] < point:
            total -= ends[j][1]
            j += 1
        if total > best:
            best, where = total, point
    return max(best, 0), where
