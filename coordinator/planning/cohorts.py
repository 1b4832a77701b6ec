"""Which cohorts a scheduled check asks about, so a schedule spends budget where new data are.

A node charges a query to every cohort whose persons it can read (docs/scheduling.md,
"Cohort accounting"): a person's cohort is the month of their first record at that node,
fixed at import. A check that asks about all years every month charges every person every
month; a check that asks about one cohort charges only that cohort's persons. So a plan with
a `cohorts` section asks each check about the cohort whose data have just become complete:

- pass_rates, appeals, certificates: the newest cohort, `lag_months` before the run's month
  (with lag 1, a run in March asks about February: its month is over);
- employment and earnings at horizon h: the cohort h months before the newest, whose
  h-month outcomes have now been observed;
- recognition: the cohort old enough that every request it lodged has passed the check's
  `limit_days` (ceil(limit_days / 28) months before the newest), so "late" is final.

Checks that read every cohort (the blinding ring, revocation reconciliation) are not
cohort-restricted; the plan gives them a cadence instead (`every_months`).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MONTH_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
MAX_CATCH_UP_MONTHS = 24

COHORT_CHECKS: tuple[str, ...] = (
    "pass_rates",
    "employment",
    "recognition",
    "appeals",
    "certificates",
    "earnings",
)
"""Checks that send catalogue queries, which a cohort plan restricts to cohorts."""


@dataclass(frozen=True)
class CohortPlan:
    """A plan's `cohorts` section."""

    lag_months: int = 1
    """The newest cohort asked is this many months before the run's month."""
    first: str | None = None
    """No cohort before this month is ever asked (e.g. when the federation started)."""
    catch_up_months: int = 3
    """After missed slots, unanswered cohorts up to this many months back are asked (pooled)."""
    by_provider: bool = False
    """Group pass rates and employment by provider too. Off by default: a month's cohort of
    a municipality is tens of persons, so per-provider rows are a handful each, and every
    row adds its cells' noise to the municipality's rate."""


def month_of(moment: dt.datetime | dt.date) -> str:
    """The calendar month "YYYY-MM" of a date (UTC for datetimes)."""
    if isinstance(moment, dt.datetime):
        moment = moment.astimezone(dt.UTC)
    return f"{moment.year:04d}-{moment.month:02d}"


def parse_month(text: str) -> tuple[int, int]:
    """(year, month) of "YYYY-MM"; ValueError naming the text otherwise."""
    match = MONTH_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a month of the form YYYY-MM: {text!r}")
    return int(match[1]), int(match[2])


def add_months(month: str, delta: int) -> str:
    """`month` moved by `delta` months ("2027-01", -1 -> "2026-12")."""
    year, mon = parse_month(month)
    index = year * 12 + (mon - 1) + delta
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def months_between(first: str, last: str) -> int:
    """How many months `last` is after `first` (negative when before)."""
    y1, m1 = parse_month(first)
    y2, m2 = parse_month(last)
    return (y2 * 12 + m2) - (y1 * 12 + m1)


def month_range(first: str, last: str) -> tuple[str, ...]:
    """Every month from `first` to `last`, inclusive (empty when last < first)."""
    return tuple(add_months(first, i) for i in range(months_between(first, last) + 1))


def check_offset(check: str, settings: object) -> int:
    """How many months before the newest cohort `check` asks about (see the module docstring)."""
    if check in ("employment", "earnings"):
        return int(getattr(settings, "months_after", 12))
    if check == "recognition":
        return math.ceil(int(getattr(settings, "limit_days", 90)) / 28)
    return 0


def due_cohort(cohorts: CohortPlan, check: str, settings: object, run_month: str) -> str | None:
    """The cohort `check` asks about in a run in `run_month` (None: before `first`)."""
    newest = add_months(run_month, -cohorts.lag_months)
    cohort = add_months(newest, -check_offset(check, settings))
    if cohorts.first is not None and months_between(cohorts.first, cohort) < 0:
        return None
    return cohort


def cohorts_to_ask(
    cohorts: CohortPlan,
    checks: Mapping[str, object],
    run_month: str,
    answered: Mapping[str, Iterable[str]] | None = None,
    reask: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Per check, the cohorts this run asks: what is due and not answered yet, and re-asks.

    `checks` maps each configured query check to its settings. `answered` is, per check, the
    cohorts earlier runs have answered (from the archive). When slots were missed, the
    cohorts due at them and never answered are asked too, pooled into the one query, as far
    back as `catch_up_months` (after that the gap is left, and the log says so). `reask` is,
    per check, cohorts an operator asked to be asked again (a corrected re-import of that
    cohort's data): they are asked even if answered before. A check with nothing to ask is
    left out of the result.
    """
    out: dict[str, tuple[str, ...]] = {}
    for check, settings in checks.items():
        current = due_cohort(cohorts, check, settings, run_month)
        if current is None:
            continue
        done = set((answered or {}).get(check, ()))
        earliest = add_months(current, -cohorts.catch_up_months)
        if cohorts.first is not None and months_between(cohorts.first, earliest) < 0:
            earliest = cohorts.first
        if done:
            # Catch up only after the last answered cohort: older gaps were never due here.
            latest_done = max(done, key=parse_month)
            if months_between(latest_done, earliest) < 0:
                earliest = add_months(latest_done, 1)
        else:
            earliest = current  # a new archive starts with the cohort due now
        wanted = [m for m in month_range(earliest, current) if m not in done]
        wanted += [m for m in (reask or {}).get(check, ()) if m not in wanted]
        if wanted:
            out[check] = tuple(sorted(wanted, key=parse_month))
    return out
