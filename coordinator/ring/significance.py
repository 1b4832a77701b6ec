"""Which of the ring's released counts are findings, under the audit's error control.

The ring releases region-wide counts (duplicated persons, assessment shopping,
revoked-but-recognised) and breakdowns that locate them (per pair of municipalities,
per occupation, per municipality, per recognising/revoking pair). A count is a finding
when the noise alone cannot explain it: its value exceeds the noise's half-width at the
test's level (OpenDP's accuracy bound, `mechanisms.noise_accuracy`), i.e. its interval
lies above zero.

Testing every breakdown cell flat would divide the error budget over dozens of cells
and cost the region-wide counts their power. So the tests form a hierarchy, one branch
per region-wide count, each branch given an equal share a = alpha / branches
(Bonferroni across branches):

1. the region-wide count is tested at level a;
2. only if it is a finding are its breakdown cells tested, with Holm's step-down
   procedure at the same level a (gatekeeping: a breakdown count can only be real if
   the region-wide one is).

Within a branch the chance of any false finding is at most a (if the region-wide count
is truly zero, so is every cell, and an error needs the first test to fail; otherwise
Holm keeps the cells at a), so over the ring's tests it is at most alpha. Each tested
count's interval is reported at the level its step was decided at; cells not reached
(their region-wide count was no finding) are reported at the branch's first Holm level
and say that they were not tested.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedaudit.common.mechanisms import noise_accuracy
from fedaudit.node.domain import Mechanism


@dataclass(frozen=True)
class CountTest:
    """One released count tested against zero: its release, cell, value and noise scale."""

    release: str
    index: int
    value: float
    scale: float
    mechanism: Mechanism

    @property
    def key(self) -> tuple[str, int]:
        return (self.release, self.index)

    def half_width(self, level: float) -> float:
        """The noise's half-width at `level` (an interval at confidence 1 - level)."""
        return noise_accuracy(self.mechanism, self.scale, level)

    def flags_at(self, level: float) -> bool:
        """True when the interval at confidence 1 - `level` lies above zero."""
        return self.value > self.half_width(level)

    def p_value(self) -> float:
        """The smallest level at which the count flags (by bisection on a log scale)."""
        if not self.flags_at(0.999999):
            return 1.0
        low, high = -15.0, math.log10(0.999999)  # flags at 10**high, maybe not at 10**low
        if self.flags_at(10**low):
            return 10**low
        for _ in range(24):  # 15 decades / 2**24: far finer than the levels Holm compares
            mid = (low + high) / 2
            if self.flags_at(10**mid):
                high = mid
            else:
                low = mid
        return 10**high


@dataclass(frozen=True)
class Decision:
    """How one count was decided: the level its interval is shown at, flagged, tested."""

    level: float
    flagged: bool
    tested: bool


@dataclass(frozen=True)
class Branch:
    """A region-wide count and the breakdown cells that locate it."""

    overall: CountTest
    cells: tuple[CountTest, ...]


def decide(branches: Sequence[Branch], alpha: float) -> dict[tuple[str, int], Decision]:
    """Every count's decision under the hierarchy of the module docstring."""
    decisions: dict[tuple[str, int], Decision] = {}
    if not branches:
        return decisions
    share = alpha / len(branches)
    for branch in branches:
        flagged = branch.overall.flags_at(share)
        decisions[branch.overall.key] = Decision(share, flagged, True)
        cells = list(branch.cells)
        if not cells:
            continue
        if not flagged:
            for cell in cells:
                decisions[cell.key] = Decision(share / len(cells), False, False)
            continue
        decisions.update(holm_counts(cells, share))
    return decisions


def holm_counts(cells: Sequence[CountTest], alpha: float) -> dict[tuple[str, int], Decision]:
    """Holm's step-down procedure over count tests at level `alpha`."""
    m = len(cells)
    # Smallest p-value first. All cells of a run share one mechanism, whose half-width
    # at any level grows in proportion to the scale (up to the integer rounding of the
    # discrete mechanisms), so value / scale orders them as their p-values do, without
    # a bisection per cell; each step's decision still uses the exact half-width.
    order = sorted(cells, key=lambda c: -c.value / c.scale)
    out: dict[tuple[str, int], Decision] = {}
    for step, cell in enumerate(order):
        level = alpha / (m - step)
        if cell.flags_at(level):
            out[cell.key] = Decision(level, True, True)
            continue
        for rest in order[step:]:
            out[rest.key] = Decision(level, False, True)
        break
    return out


__all__ = ["Branch", "CountTest", "Decision", "decide", "holm_counts"]
