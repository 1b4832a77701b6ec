"""Date arithmetic and weighted draws shared by every part of the synthetic generator.

Why: the generator's output is reproducible only if every module draws from the one random
stream in the same way; keeping these few primitives in one place keeps them identical.
"""

from __future__ import annotations

import calendar
import datetime as dt
import random
from collections.abc import Sequence

__all__ = ["add_months", "days", "draw_date", "pick"]


def days(d: dt.date, n: int) -> dt.date:
    """`d` moved by `n` days."""
    return d + dt.timedelta(days=n)


def add_months(d: dt.date, months: int) -> dt.date:
    """`d` moved by whole months, clamped to the last day of a shorter month."""
    year, month0 = divmod(d.month - 1 + months, 12)
    year += d.year
    return dt.date(year, month0 + 1, min(d.day, calendar.monthrange(year, month0 + 1)[1]))


def draw_date(rng: random.Random, lo: dt.date, hi: dt.date) -> dt.date:
    """A uniform date in [lo, hi] (just `lo` if the range is empty)."""
    return days(lo, rng.randint(0, max(0, (hi - lo).days)))


def pick(rng: random.Random, pairs: Sequence[tuple[str, float]]) -> str:
    """One key of `pairs` (key, weight), drawn with one `rng.random()`."""
    u = rng.random() * sum(w for _, w in pairs)
    for key, weight in pairs:
        u -= weight
        if u < 0:
            return key
    return pairs[-1][0]
