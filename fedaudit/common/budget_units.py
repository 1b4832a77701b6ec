"""Privacy budget in exact integer units of 1e-12 rho, shared by the ledger and the record.

Floats cannot be summed exactly, so the node's ledger and the coordinator's answer
record both count budget in integers; they must round the same way, or a
comparison of the two would see differences that are only rounding.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

RHO_UNIT = 1e-12
_UNITS_PER_RHO = Decimal(10) ** 12


def rho_to_units(rho: float) -> int:
    """A charge in integer units of 1e-12 rho, rounded UP from the float's exact value.

    Rounding up means the ledger never under-counts; e.g. 0.030000000000000002 (what
    OpenDP's map returns for a requested 0.03) costs 30000000001 units.
    """
    return _to_units(rho, ROUND_CEILING)


def cap_to_units(rho: float) -> int:
    """A cap in integer units of 1e-12 rho, rounded DOWN so it is never exceeded."""
    return _to_units(rho, ROUND_FLOOR)


def _to_units(rho: float, rounding: str) -> int:
    if isinstance(rho, bool) or not math.isfinite(rho) or rho < 0:
        raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
    return int((Decimal(rho) * _UNITS_PER_RHO).to_integral_value(rounding=rounding))


def units_to_rho(units: int) -> float:
    """Units back to rho, for display and status values (not for comparisons)."""
    return units / 10**12


def units_to_text(units: int) -> str:
    """Units as an exact decimal string of rho ("0.25", "1.000000000001")."""
    text = format(Decimal(units) / _UNITS_PER_RHO, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
