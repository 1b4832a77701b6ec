"""Numbers as a board reads them: rounded to what their interval supports, never below zero
where a negative value is impossible, with units in words.

A DP estimate carries noise, so printing it with every binary digit ("45.5446%",
"6.949999999999999") claims a precision it does not have. Here a value and its interval
are shown with the decimals the interval's width supports (at least five rounding steps
across it: an 8-point-wide interval gives whole percents, a 3-point-wide one tenths).
A count of persons is never shown below zero: noise can push a small count's raw
estimate negative, which report.json keeps (it is the unbiased estimate), while the page
shows max(0, value) and says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

MINUS = "\u2212"
_NON_NEGATIVE = frozenset({"count", "currency"})
_MAX_DECIMALS = {"share": 1, "days": 1, "count": 0, "currency": 0}
_SUFFIX = {"share": "%", "days": " days"}
_GAP_SUFFIX = {"share": " points", "days": " days"}


def _trim(number: float, decimals: int, *, keep: bool = False) -> str:
    """Format with `decimals`; drop trailing zeros unless `keep` (or the value is whole)."""
    text = f"{number:,.{max(0, decimals)}f}"
    if keep and "." in text and not re.fullmatch(r"-?(0|100)\.0+", text):
        return text
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def minus(text: str) -> str:
    """Use the typographic minus sign: a hyphen reads as a dash in running text."""
    return text.replace("-", MINUS)


def _scale(value: float, unit: str) -> float:
    """Display units: shares in percent (or percentage points), everything else as is."""
    return value * 100 if unit == "share" else value


def clamp(value: float, unit: str) -> float:
    """What the page shows for a raw estimate: counts and amounts never below zero."""
    return max(0.0, value) if unit in _NON_NEGATIVE else value


def was_clamped(values: Sequence[float | None], unit: str) -> bool:
    """True when any raw value would be shown raised to zero."""
    return unit in _NON_NEGATIVE and any(v is not None and v < 0 for v in values)


def decimals_for(ci: Sequence[float] | None, unit: str) -> int:
    """Decimals an interval of this width supports: the coarsest rounding step that still
    puts at least five steps across it (a 17- or 8-point-wide interval: whole percents; a
    3-point-wide one: tenths).

    Counts of persons and amounts of money are always whole; shares and days get at
    most one decimal. Without an interval the unit's usual precision applies.
    """
    most = _MAX_DECIMALS.get(unit, 1)
    if not ci or len(ci) != 2:
        return most
    width = abs(_scale(ci[1], unit) - _scale(ci[0], unit))
    if width <= 0 or not math.isfinite(width):
        return most
    return max(0, min(most, math.ceil(-math.log10(width / 5) - 1e-9)))


def _default_decimals(value: float, unit: str) -> int:
    shown = abs(_scale(value, unit))
    if unit == "share":
        return 1
    if unit == "count":
        return 0
    return 0 if shown >= (10 if unit == "days" else 100) else 1


def number(value: float, unit: str, decimals: int | None = None) -> str:
    """A value without its unit word: 52 for a share of 0.52, 2,310 for money.

    With explicit `decimals` (those its interval supports) every figure keeps them,
    88.0 beside 92.6, except a whole 100 or 0 which reads better bare."""
    value = clamp(value, unit)
    if decimals is None:
        return minus(_trim(_scale(value, unit), _default_decimals(value, unit)))
    return minus(_trim(_scale(value, unit), decimals, keep=True))


def format_value(value: float | None, unit: str, ci: Sequence[float] | None = None) -> str:
    """Plain-language value: '52%', '63 days', '2,310', '41' (rounded to its interval)."""
    if value is None:
        return "n/a"
    decimals = decimals_for(ci, unit) if ci else None
    return f"{number(value, unit, decimals)}{_SUFFIX.get(unit, '')}"


def format_interval(ci: Sequence[float] | None, unit: str) -> str:
    """An interval as '47–57%' or '−5 to 3 days' (words where a dash would read as minus)."""
    if not ci:
        return "n/a"
    decimals = decimals_for(ci, unit)
    low, high = (number(v, unit, decimals) for v in ci)
    sep = " to " if MINUS in low + high else "\u2013"
    return f"{low}{sep}{high}{_SUFFIX.get(unit, '')}"


def format_estimate(value: float | None, ci: Sequence[float] | None, unit: str) -> str:
    """'46% (37–54%)': the value at its interval's precision, then the interval."""
    if value is None:
        return "n/a"
    if not ci:
        return format_value(value, unit)
    return f"{format_value(value, unit, ci)} ({format_interval(ci, unit)})"


def _signed(value: float, unit: str, decimals: int | None) -> str:
    sign = "+" if value > 0 and number(value, unit, decimals) != "0" else ""
    places = _default_decimals(value, unit) if decimals is None else decimals
    return sign + minus(_trim(_scale(value, unit), places))


def format_gap(value: float | None, unit: str, ci: Sequence[float] | None = None) -> str:
    """A signed difference: shares in percentage points, other units in their own."""
    if value is None:
        return "n/a"
    decimals = decimals_for(ci, unit) if ci else None
    return f"{_signed(value, unit, decimals)}{_GAP_SUFFIX.get(unit, '')}"


def format_gap_interval(ci: Sequence[float] | None, unit: str) -> str:
    """A difference's interval, '−34 to −22 points' (differences may be negative)."""
    if not ci:
        return "n/a"
    decimals = decimals_for(ci, unit)
    low, high = (_signed(v, unit, decimals) for v in ci)
    return f"{low} to {high}{_GAP_SUFFIX.get(unit, '')}"


def format_tolerance(value: float | None, unit: str) -> str:
    """The agreed tolerance, '10 points'; None means any non-zero count is a finding."""
    if value is None:
        return "any non-zero count"
    return format_gap(value, unit).lstrip("+")


def format_percent(value: float) -> str:
    """A probability as a percentage with as many decimals as it needs: 95%, 99.98%."""
    percent = value * 100
    for places in range(0, 4):
        if abs(round(percent, places) - percent) < 5e-4 or places == 3:
            return f"{_trim(percent, places)}%"
    return f"{_trim(percent, 3)}%"  # pragma: no cover - the loop always returns


def format_amount(value: float | None, significant: int = 3) -> str:
    """A budget amount with three significant digits: 1.39, 6.95, 10.2, 0.0042."""
    if value is None:
        return "unknown"
    if value == 0:
        return "0"
    places = max(0, significant - 1 - math.floor(math.log10(abs(value))))
    return minus(_trim(round(value, places), places))


_SUPERSCRIPT = str.maketrans(
    "-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079"
)


def format_probability(value: float | None) -> str:
    """A small probability such as δ: a power of ten as '10⁻⁷', otherwise '2.5 × 10⁻⁶'."""
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(value))
    mantissa = value / 10**exponent
    power = f"10{str(exponent).translate(_SUPERSCRIPT)}"
    if exponent >= -2:
        return format_amount(value)
    if math.isclose(mantissa, 1.0, rel_tol=1e-9):
        return power
    return f"{format_amount(mantissa, 2)} \u00d7 {power}"


__all__ = [
    "MINUS",
    "clamp",
    "decimals_for",
    "format_amount",
    "format_estimate",
    "format_gap",
    "format_gap_interval",
    "format_interval",
    "format_percent",
    "format_probability",
    "format_tolerance",
    "format_value",
    "minus",
    "number",
    "was_clamped",
]
