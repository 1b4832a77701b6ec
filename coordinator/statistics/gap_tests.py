"""The gap test: a subject's estimate against a reference pooled from disjoint data.

Every finding of an audit comes from one comparison of the same shape: d = estimate -
reference, where the reference is the rest of the region, all other providers of the
region, or the rest of the subject's own municipality. Reference and subject cover
different people and the nodes draw their noise independently, so the variance of d is
var_subject + var_reference. This module holds that comparison and the values it is
made of, so that every check builds its tests the same way and `findings` can judge
them all by one rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

TWO_SIDED, ABOVE, BELOW = "two_sided", "above", "below"
"""The direction in which a gap is flagged: either way, only above, only below."""


@dataclass(frozen=True)
class Subject:
    """What a metric or finding is about."""

    municipality: str
    provider_id: str | None = None
    group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "municipality": self.municipality,
            "provider_id": self.provider_id,
            "isco_code": None,
            "group": self.group,
        }


@dataclass(frozen=True)
class Value:
    """An estimate with its total variance; `bounded` shares have intervals within [0, 1]."""

    value: float
    var: float
    bounded: bool = True

    def interval(self, z: float) -> tuple[float, float]:
        half = z * math.sqrt(max(self.var, 0.0))
        low, high = self.value - half, self.value + half
        if self.bounded:
            return (max(0.0, low), min(1.0, high))
        return (low, high)


@dataclass(frozen=True)
class Reference:
    """What a subject is compared with, and which nodes' data it pooled."""

    description: str
    nodes: tuple[str, ...]
    value: Value


@dataclass(frozen=True)
class Condition:
    """A further gap that must also lie beyond `bound` for the test to flag (see `GapTest.also`).

    `gap` is that comparison's difference (estimate minus its reference) with its
    variance; `direction` is ABOVE (the gap must exceed `bound`) or BELOW (it must fall
    short of -`bound`).
    """

    name: str
    gap: Value
    bound: float
    direction: str

    def distance(self) -> float:
        """How many standard deviations the gap lies beyond its bound (negative: inside)."""
        sd = math.sqrt(max(self.gap.var, 1e-300))
        if self.direction == ABOVE:
            return (self.gap.value - self.bound) / sd
        return (-self.bound - self.gap.value) / sd


@dataclass(frozen=True)
class GapTest:
    """One test of the audit's family: d = estimate - reference against a tolerance.

    `also` makes it an intersection-union test: the test flags only when d lies beyond
    its tolerance *and* each condition's gap lies beyond its own bound, every one by its
    own interval. Its p-value is the largest of the parts' p-values, which keeps the
    test at its level without any further correction (Berger 1982).
    """

    kind: str
    metric: str
    subject: Subject
    estimate: Value
    reference: Reference
    tolerance: float
    direction: str
    context: Mapping[str, float] = field(default_factory=dict)
    also: tuple[Condition, ...] = ()

    @property
    def gap(self) -> float:
        return self.estimate.value - self.reference.value.value

    @property
    def gap_var(self) -> float:
        return self.estimate.var + self.reference.value.var

    def gap_interval(self, z: float) -> tuple[float, float]:
        half = z * math.sqrt(self.gap_var)
        return (self.gap - half, self.gap + half)

    def distance(self) -> float:
        """Standard deviations by which the weakest part lies beyond its bound."""
        sd = math.sqrt(max(self.gap_var, 1e-300))
        tol = self.tolerance
        above = (self.gap - tol) / sd
        below = (-tol - self.gap) / sd
        main = {ABOVE: above, BELOW: below}.get(self.direction, max(above, below))
        return min([main, *(c.distance() for c in self.also)])

    def p_value(self) -> float:
        """The level at which this test would just flag: its interval at confidence 1 - p
        touches the bound. Two-sided, as the intervals the report shows."""
        return min(1.0, 2.0 * NormalDist().cdf(-self.distance()))

    def severity(self, z: float) -> str | None:
        """None unless every part's interval at z lies beyond its bound in the flagged way;
        then critical when d's interval lies beyond twice the tolerance."""
        if self.distance() <= z:
            return None
        low, high = self.gap_interval(z)
        tol = self.tolerance
        if self.direction in (ABOVE, TWO_SIDED) and low > tol:
            return "critical" if low > 2 * tol else "warning"
        if self.direction in (BELOW, TWO_SIDED) and high < -tol:
            return "critical" if high < -2 * tol else "warning"
        return None  # pragma: no cover - distance() > z implies one of the above


__all__ = ["ABOVE", "BELOW", "TWO_SIDED", "Condition", "GapTest", "Reference", "Subject", "Value"]
