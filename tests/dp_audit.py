"""Statistics of the black-box privacy audit (research/dp-libraries.md §3.2), with stated error rates.

Every check here is a hypothesis test whose false-failure rate on a correct node is
bounded by the `alpha` it is given, so a test module can split its budget (1e-4 per
test function) by Bonferroni over the checks it makes:

- `event_epsilon_lower_bound`: model-free. For a fixed family of events E chosen
  *before* the samples are seen, and both orderings of the neighbours,
  ``eps_lb = log((CP_lower(P1[E]) - delta) / CP_upper(P0[E]))`` with one-sided
  Clopper-Pearson bounds (exact, conservative), Bonferroni over 2 bounds x events x
  orderings. A correct (eps, delta)-DP release gives ``eps_lb > eps`` with probability
  at most alpha, whatever its noise looks like.
- `shift_check` / `variance_check`: the declared contract of a release (mean moves by
  the declared sensitivity between neighbours; the noise has the declared variance),
  two-sided z-tests on means of i.i.d. draws. Their bounds use the normal approximation
  at n >= 10^4 draws per side; `scripts/calibrate_dp_audit.py` checked the actual
  exceedance rate by simulation (see the numbers in the test modules' docstrings).
- `rho_lower_bound`: for a release with Gaussian-shaped noise, its zCDP parameter is
  ``rho = shift^2 / (2 sigma^2)``; the bound combines a lower bound on the shift and an
  upper bound on the variance (Bonferroni over the two). It is the Gaussian's analogue of
  the event bound, which for (eps, delta) conversions of zCDP has almost no power.

`discrete_laplace` and `rounded_gaussian` draw synthetic releases of a *violating*
mechanism, so a test can state the power of these checks with numpy's seeded generator
(power is a property of the test, not of the node).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy.stats import beta

Event = Callable[[np.ndarray], np.ndarray]
"""A boolean mask over an array of releases: the auditor's distinguishing event."""


def z_two_sided(alpha: float) -> float:
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def z_one_sided(alpha: float) -> float:
    return NormalDist().inv_cdf(1.0 - alpha)


def cp_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion."""
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def cp_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound of a binomial proportion."""
    return 1.0 if k == n else float(beta.ppf(1.0 - alpha, k + 1, n - k))


@dataclass(frozen=True)
class EventBound:
    epsilon: float
    event: str
    ordering: str
    counts: tuple[int, int]


def event_epsilon_lower_bound(
    d: np.ndarray,
    d_prime: np.ndarray,
    events: Sequence[tuple[str, Event]],
    *,
    alpha: float,
    delta: float = 0.0,
) -> EventBound:
    """The largest (1 - alpha)-confidence lower bound on epsilon over `events` and both orderings.

    `events` must not depend on `d` or `d_prime` (choose them from the declared mechanism).
    """
    tries = 2 * len(events)
    a = alpha / (2 * tries)  # two CP bounds per (event, ordering)
    best = EventBound(0.0, "", "", (0, 0))
    for name, event in events:
        k = {"D": int(np.count_nonzero(event(d))), "D'": int(np.count_nonzero(event(d_prime)))}
        n = {"D": len(d), "D'": len(d_prime)}
        for num, den in (("D'", "D"), ("D", "D'")):
            low = cp_lower(k[num], n[num], a) - delta
            high = cp_upper(k[den], n[den], a)
            if low <= 0 or high <= 0:
                continue
            eps = math.log(low / high)
            if eps > best.epsilon:
                best = EventBound(eps, name, f"P_{num}/P_{den}", (k[num], k[den]))
    return best


@dataclass(frozen=True)
class ShiftCheck:
    shift: float
    expected: float
    se: float
    bound: float

    @property
    def ok(self) -> bool:
        return abs(self.shift - self.expected) <= self.bound


def shift_check(d: np.ndarray, d_prime: np.ndarray, expected: float, *, alpha: float) -> ShiftCheck:
    """Two-sided z-test of mean(D') - mean(D) == expected, at level alpha."""
    shift = float(np.mean(d_prime) - np.mean(d))
    se = math.sqrt(
        float(np.var(d, ddof=1)) / len(d) + float(np.var(d_prime, ddof=1)) / len(d_prime)
    )
    return ShiftCheck(shift, expected, se, z_two_sided(alpha) * se)


@dataclass(frozen=True)
class VarianceCheck:
    variance: float
    declared: float
    se: float
    bound: float

    @property
    def ok(self) -> bool:
        return abs(self.variance - self.declared) <= self.bound


def variance_check(noise: np.ndarray, declared: float, *, alpha: float) -> VarianceCheck:
    """Two-sided z-test of Var(noise) == declared; se from the sample's fourth moment."""
    centred = noise - np.mean(noise)
    var = float(np.var(noise, ddof=1))
    m4 = float(np.mean(centred**4))
    se = math.sqrt(max(m4 - var * var, 0.0) / len(noise))
    return VarianceCheck(var, declared, se, z_two_sided(alpha) * se)


@dataclass(frozen=True)
class RhoBound:
    rho_lb: float
    rho_hat: float


def rho_lower_bound(d: np.ndarray, d_prime: np.ndarray, *, alpha: float) -> RhoBound:
    """(1 - alpha) lower bound on shift^2 / (2 Var): the zCDP rho of a Gaussian-shaped release."""
    z = z_one_sided(alpha / 2)
    shift = abs(float(np.mean(d_prime) - np.mean(d)))
    se_shift = math.sqrt(
        float(np.var(d, ddof=1)) / len(d) + float(np.var(d_prime, ddof=1)) / len(d_prime)
    )
    noise = np.concatenate([d - np.mean(d), d_prime - np.mean(d_prime)])
    var = float(np.var(noise, ddof=2))
    se_var = math.sqrt(max(float(np.mean(noise**4)) - var * var, 0.0) / len(noise))
    shift_lb = max(0.0, shift - z * se_shift)
    return RhoBound(shift_lb**2 / (2 * (var + z * se_var)), shift * shift / (2 * var))


# --- synthetic releases for power statements ----------------------------------------------


def discrete_laplace(rng: np.random.Generator, scale: float, size: int) -> np.ndarray:
    """P(k) proportional to exp(-|k| / scale): the difference of two geometric variables."""
    p = 1.0 - math.exp(-1.0 / scale)
    return rng.geometric(p, size) - rng.geometric(p, size)


def rounded_gaussian(rng: np.random.Generator, scale: float, size: int) -> np.ndarray:
    """A close stand-in for the discrete Gaussian, used only to estimate a check's power."""
    return np.rint(rng.normal(0.0, scale, size)).astype(np.int64)


# --- the sampler-based auditor (DP-Sniper style), as tests/test_dedup_blackbox.py uses it ----

AUDIT_ALPHA = 1e-4
N_SELECT = 20_000
N_EVAL = 100_000


def eps_lower_bound(
    sample: Callable[[str, int], list[int]],
    *,
    delta: float = 0.0,
    n_select: int = N_SELECT,
    n_eval: int = N_EVAL,
) -> tuple[float, float]:
    """(1 - AUDIT_ALPHA)-confidence lower bound on epsilon, and its threshold.

    `sample(which, n)` draws n releases on database "D" or "D'". A threshold event is
    chosen on a selection sample (both directions), then the bound is taken on fresh
    samples with Clopper-Pearson bounds, Bonferroni over the two bounds.
    """
    from collections import Counter

    s0, s1 = sample("D", n_select), sample("D'", n_select)
    best: tuple[float, int, int] = (-1.0, 0, 1)
    for sign in (1, -1):
        c0, c1 = Counter(sign * x for x in s0), Counter(sign * x for x in s1)
        above0 = above1 = 0
        for t in sorted(set(c0) | set(c1), reverse=True):
            above0 += c0[t]
            above1 += c1[t]
            if above0 and above1 >= 0.05 * n_select and above1 / above0 > best[0]:
                best = (above1 / above0, t, sign)
    _, t, sign = best
    e0, e1 = sample("D", n_eval), sample("D'", n_eval)
    k1 = sum(1 for x in e1 if sign * x >= t)
    k0 = sum(1 for x in e0 if sign * x >= t)
    a = AUDIT_ALPHA / 2
    ratio = (cp_lower(k1, n_eval, a) - delta) / cp_upper(k0, n_eval, a)
    return (math.log(ratio) if ratio > 1 else 0.0), sign * t
