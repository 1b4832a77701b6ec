"""Combining noisy cells of node answers into estimates with variances and intervals.

Every released cell is `true count + noise`, the noise unbiased, independent across
cells, with the variance the answer states (`answer.noise.variance`). So:

- A **sum** of cells is unbiased for the true sum; its noise variance is the number of
  summed cells times the per-cell variance. Regional values are sums over node
  answers, and since nodes draw their noise independently, their variances add.
- A **suppressed** cell (a small group the node withheld) carries no information: its
  estimate 0 is not a count. It is counted as missing, never as zero. For a rate, a
  group row with any suppressed cell among the categories the rate needs is left out
  as a whole, so numerator and denominator always cover the same people.
- A **rate** r = A / (A + B) is formed from a numerator sum A and the rest of the
  denominator B (two disjoint, independent sums). Its variance has two parts:

  1. DP noise, propagated by the delta method. With N = A + B,
     dr/dA = B / N^2 and dr/dB = -A / N^2, so
     Var_noise(r) = (B^2 vA + A^2 vB) / N^4.
  2. Sampling variability, r (1 - r) / N. We audit the process that produced the
     outcomes, not the finite list of this year's candidates: a provider with 25
     candidates has an uncertain pass rate even without any noise.

  N is the noisy denominator floored at 1 and r is clipped to [0, 1] (noise can push
  a small count below zero). Both approximations are good when N is large against the
  noise; subjects with a small N are not tested at all (see `gaps`).
- **Intervals** are normal approximations, value +/- z sd, with z chosen by the caller
  (the audit's Bonferroni-adjusted z for tested metrics); shares are clipped to [0, 1].
- A **quantile** of a binned distribution (earnings) is read off the noisy CDF by
  linear interpolation within the bin, and its interval is the Woodruff interval:
  the quantiles at p -/+ z se(F(x_p)), where se combines sampling variability
  p (1 - p) / N and the DP noise in the cumulative count (delta method, as above).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from fedaudit.coordinator.errors import AnswerError
from fedaudit.node.domain import Answer

CellPredicate = Callable[[Mapping[str, str], str], bool]
"""Selects a cell from its group keys (dimension -> key) and its category."""
RowPredicate = Callable[[Mapping[str, str]], bool]
"""Selects a group row (all categories of one key combination) from its keys."""


def z_for(confidence: float) -> float:
    """The two-sided normal quantile for a central interval at `confidence`."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


@dataclass(frozen=True)
class Estimate:
    """A sum of released cells: unbiased value, its noise variance, cells used and missing."""

    value: float = 0.0
    noise_var: float = 0.0
    n_cells: int = 0
    missing_cells: int = 0

    @property
    def sd(self) -> float:
        return math.sqrt(self.noise_var)

    def interval(self, z: float) -> tuple[float, float]:
        """value +/- z sd: the noise-only interval of a count."""
        half = z * self.sd
        return (self.value - half, self.value + half)

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(
            value=self.value + other.value,
            noise_var=self.noise_var + other.noise_var,
            n_cells=self.n_cells + other.n_cells,
            missing_cells=self.missing_cells + other.missing_cells,
        )


def combine(estimates: Iterable[Estimate]) -> Estimate:
    """Sum of independent estimates (e.g. the same subject across nodes): variances add."""
    total = Estimate()
    for e in estimates:
        total = total + e
    return total


def cell_keys(answer: Answer, cell_keys_: Sequence[str]) -> dict[str, str]:
    """A cell's group keys as dimension -> key, using the answer's `group_by` order."""
    if len(cell_keys_) != len(answer.group_by):
        raise AnswerError(
            f"{answer.municipality_code}/{answer.template}: a cell has {len(cell_keys_)} "
            f"keys but the answer groups by {len(answer.group_by)} dimensions"
        )
    return dict(zip(answer.group_by, cell_keys_, strict=True))


def require_categories(answer: Answer, categories: Collection[str]) -> None:
    """Raise AnswerError unless the answer releases every one of `categories`."""
    missing = [c for c in categories if c not in answer.categories]
    if missing:
        raise AnswerError(
            f"{answer.municipality_code}/{answer.template}: the answer lacks categories "
            f"{', '.join(missing)}"
        )


def sum_cells(answer: Answer, predicate: CellPredicate) -> Estimate:
    """Sum of the released cells `predicate` selects; suppressed ones count as missing."""
    value = 0.0
    used = missing = 0
    for cell in answer.cells:
        if not predicate(cell_keys(answer, cell.keys), cell.category):
            continue
        if cell.suppressed:
            missing += 1
            continue
        value += cell.estimate
        used += 1
    return Estimate(
        value=value,
        noise_var=used * answer.noise.variance,
        n_cells=used,
        missing_cells=missing,
    )


def where(*, categories: Collection[str] | None = None, **keys: Collection[str]) -> CellPredicate:
    """A cell predicate: category among `categories` and each named dimension's key allowed."""

    def predicate(cell: Mapping[str, str], category: str) -> bool:
        if categories is not None and category not in categories:
            return False
        return all(cell.get(dim) in allowed for dim, allowed in keys.items())

    return predicate


@dataclass(frozen=True)
class Rate:
    """r = A / (A + B), with its noise and sampling variance (see the module docstring)."""

    value: float
    denominator: float
    noise_var: float
    sampling_var: float

    @property
    def var(self) -> float:
        return self.noise_var + self.sampling_var

    @property
    def sd(self) -> float:
        return math.sqrt(self.var)

    def interval(self, z: float) -> tuple[float, float]:
        """value +/- z sd, clipped to [0, 1]."""
        half = z * self.sd
        return (max(0.0, self.value - half), min(1.0, self.value + half))


def rate(numerator: Estimate, rest: Estimate) -> Rate:
    """The rate A / (A + B) from a numerator sum A and the rest of the denominator B."""
    a, b = numerator.value, rest.value
    n = max(a + b, 1.0)
    r = min(1.0, max(0.0, a / n))
    noise_var = (b * b * numerator.noise_var + a * a * rest.noise_var) / n**4
    return Rate(value=r, denominator=n, noise_var=noise_var, sampling_var=r * (1.0 - r) / n)


@dataclass(frozen=True)
class RateParts:
    """Numerator and rest-of-denominator sums of a rate, over the rows fully released."""

    numerator: Estimate = Estimate()
    rest: Estimate = Estimate()
    rows: int = 0
    withheld_rows: int = 0

    def __add__(self, other: RateParts) -> RateParts:
        return RateParts(
            numerator=self.numerator + other.numerator,
            rest=self.rest + other.rest,
            rows=self.rows + other.rows,
            withheld_rows=self.withheld_rows + other.withheld_rows,
        )

    @property
    def denominator(self) -> float:
        """The noisy denominator A + B (not floored)."""
        return self.numerator.value + self.rest.value

    def rate(self) -> Rate:
        return rate(self.numerator, self.rest)


def combine_parts(parts: Iterable[RateParts]) -> RateParts:
    """Pool rate parts of disjoint populations (other nodes, other groups): sums add."""
    total = RateParts()
    for p in parts:
        total = total + p
    return total


def rate_parts(
    answer: Answer,
    numerator: Collection[str],
    rest: Collection[str],
    rows: RowPredicate | None = None,
) -> RateParts:
    """Sums for a rate over the group rows `rows` selects (all rows when None).

    A row with any suppressed cell among `numerator` or `rest` is withheld as a whole,
    so a withheld count never turns into a zero on one side of the rate only.
    """
    require_categories(answer, [*numerator, *rest])
    wanted = set(numerator) | set(rest)
    by_row: dict[tuple[str, ...], list[tuple[str, int, bool]]] = {}
    for cell in answer.cells:
        if cell.category in wanted:
            by_row.setdefault(tuple(cell.keys), []).append(
                (cell.category, cell.estimate, cell.suppressed)
            )
    var = answer.noise.variance
    num = res = 0.0
    n_num = n_res = used = withheld = missing = 0
    for keys, cells in by_row.items():
        if rows is not None and not rows(cell_keys(answer, keys)):
            continue
        if any(suppressed for _, _, suppressed in cells):
            withheld += 1
            missing += sum(1 for _, _, suppressed in cells if suppressed)
            continue
        used += 1
        for category, estimate, _ in cells:
            if category in numerator:
                num += estimate
                n_num += 1
            else:
                res += estimate
                n_res += 1
    return RateParts(
        numerator=Estimate(num, n_num * var, n_num, missing),
        rest=Estimate(res, n_res * var, n_res, 0),
        rows=used,
        withheld_rows=withheld,
    )


@dataclass(frozen=True)
class Bin:
    """One bin of a binned distribution: [low, high) and its noisy count (high may be inf)."""

    low: float
    high: float
    count: Estimate


@dataclass(frozen=True)
class Quantile:
    """A quantile read off a noisy binned CDF, with its Woodruff interval."""

    value: float
    low: float
    high: float
    total: float
    open_ended: bool
    """True when the quantile or an interval end fell in an unbounded bin (clamped to its edge)."""


def binned_quantile(bins: Sequence[Bin], p: float, z: float) -> Quantile | None:
    """The p-quantile of a binned distribution with noisy counts, and its interval.

    Noisy bin counts below zero are taken as zero for the CDF (so it is monotone);
    within a bin values are assumed uniform. The interval inverts the CDF's interval at
    the quantile: [Q(p - z se), Q(p + z se)], with se^2 = p (1 - p) / N (sampling) plus
    the delta-method noise variance of F = C / (C + R), C the cumulative count up to the
    quantile (including the covered fraction f of its bin: f^2 of that bin's variance)
    and R the rest. Returns None when nothing was released.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    counts = [max(b.count.value, 0.0) for b in bins]
    total = sum(counts)
    if total <= 0:
        return None

    def locate(q: float) -> tuple[int, float]:
        target = min(max(q, 0.0), 1.0) * total
        cum = 0.0
        for i, c in enumerate(counts):
            if c > 0 and cum + c >= target:
                return i, (target - cum) / c
            cum += c
        last = max(i for i, c in enumerate(counts) if c > 0)
        return last, 1.0

    def value_at(q: float) -> tuple[float, bool]:
        i, frac = locate(q)
        b = bins[i]
        if math.isinf(b.high):
            return b.low, True
        return b.low + frac * (b.high - b.low), False

    i, frac = locate(p)
    below = combine(b.count for b in bins[:i])
    above = combine(b.count for b in bins[i + 1 :])
    v_bin = bins[i].count.noise_var
    c = sum(counts[:i]) + frac * counts[i]
    r = total - c
    v_c = below.noise_var + frac * frac * v_bin
    v_r = above.noise_var + (1 - frac) ** 2 * v_bin
    noise_var = (r * r * v_c + c * c * v_r) / total**4
    se = math.sqrt(p * (1 - p) / total + noise_var)
    value, open_v = value_at(p)
    low, open_l = value_at(p - z * se)
    high, open_h = value_at(p + z * se)
    return Quantile(
        value=value, low=low, high=high, total=total, open_ended=open_v or open_l or open_h
    )
