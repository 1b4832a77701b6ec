"""Noise for catalogue answers: plan the scale and charge, then add OpenDP noise.

Answers are integer count vectors over public keys with L1 and L2 sensitivity K
(see `fedaudit.node.query.catalogue`). The discrete Gaussian (zCDP, charged in rho)
uses OpenDP's vector mechanism under `l2_distance`, the discrete Laplace (pure
epsilon, charged as rho = eps^2/2) under `l1_distance`, both on i64 atoms so
large counts never overflow (`T=int` would be i32).

The scale is analytic (no binary search), and the charge is what OpenDP's own
privacy map says for d_in = K: the map may round a few ULPs above the request,
so the scale is nudged up until the map is within the request, and the ledger
charges the map's value, never our arithmetic.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

# Submodules, not `opendp.prelude`: the prelude also loads OpenDP's scikit-learn extras,
# which cost about 4 s at every process start (every `fedaudit` command, every node).
import opendp.accuracy as dp_accuracy
import opendp.combinators as dp_c
import opendp.domains as dp_domains
import opendp.measurements as dp_m
import opendp.metrics as dp_metrics
from opendp.mod import Domain, Measurement, Metric, enable_features

from fedaudit.node.domain import Charge, Mechanism, NoiseSpec
from fedaudit.node.errors import InvalidParametersError

enable_features("contrib")

_MAX_NUDGES = 128
"""Steps of the scale search; steps start at one ULP and double, so 128 cover any gap."""


def _vector_space(mechanism: Mechanism) -> tuple[Domain, Metric]:
    domain = dp_domains.vector_domain(dp_domains.atom_domain(T="i64"))
    if mechanism is Mechanism.DISCRETE_GAUSSIAN:
        return domain, dp_metrics.l2_distance(T="i64")
    return domain, dp_metrics.l1_distance(T="i64")


@functools.lru_cache(maxsize=256)
def measurement(mechanism: Mechanism, scale: float) -> Measurement:
    """OpenDP's vector mechanism for `mechanism` at `scale` (cached: building costs ~0.1 ms)."""
    domain, metric = _vector_space(mechanism)
    if mechanism is Mechanism.DISCRETE_GAUSSIAN:
        return dp_m.make_gaussian(domain, metric, scale=scale)
    return dp_m.make_laplace(domain, metric, scale=scale)


def _check_positive(name: str, value: float | None) -> float:
    if (
        value is None
        or isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidParametersError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def discrete_laplace_variance(scale: float) -> float:
    """Variance of OpenDP's discrete Laplace, P(k) proportional to exp(-|k|/scale).

    2 e^{-1/b} / (1 - e^{-1/b})^2 = 1 / (2 sinh^2(1/(2b))): the sinh form has no
    cancellation for large b (where it tends to 2 b^2).
    """
    return 1.0 / (2.0 * math.sinh(1.0 / (2.0 * scale)) ** 2)


def discrete_gaussian_variance(scale: float) -> float:
    """Variance of OpenDP's discrete Gaussian, P(k) proportional to exp(-k^2 / (2 s^2)).

    For small s the direct sum converges in a few terms. For large s it needs
    O(s) terms, so the Poisson-summed form is used instead, whose terms fall as
    exp(-2 pi^2 s^2 n^2):
    Var = sum_n (s^2 - 4 pi^2 s^4 n^2) e^{-2 pi^2 s^2 n^2} / sum_n e^{-2 pi^2 s^2 n^2},
    which is s^2 up to a relative error below 1e-30 once s >= 2.
    """
    s2 = scale * scale
    if scale < 1.0:
        # exp(-k^2 / 2s^2) < 1e-300 for |k| > 38 s: the tail is far below double precision.
        top = math.ceil(38.0 * scale) + 1
        weights = [math.exp(-(k * k) / (2.0 * s2)) for k in range(1, top + 1)]
        norm = 1.0 + 2.0 * math.fsum(weights)
        second = 2.0 * math.fsum(k * k * w for k, w in enumerate(weights, start=1))
        return second / norm
    a = 2.0 * math.pi**2 * s2
    terms = range(1, 4)  # e^{-a n^2} with a >= 19.7: n = 3 is already below 1e-77
    norm = 1.0 + 2.0 * math.fsum(math.exp(-a * n * n) for n in terms)
    second = s2 + 2.0 * math.fsum(
        (s2 - 4.0 * math.pi**2 * s2 * s2 * n * n) * math.exp(-a * n * n) for n in terms
    )
    return second / norm


def _scale_within(mechanism: Mechanism, scale: float, sensitivity: int, budget: float) -> float:
    """A scale at or just above `scale` whose privacy map at d_in = K is within `budget`.

    The map rounds up by a few ULPs at most, so the scale grows from one ULP in
    doubling steps: the charge stays within ~1e-15 relative of the request
    (a fixed 1e-9 relative step would leave ~1e-11 of every request unused).
    """
    step = math.ulp(scale)
    for _ in range(_MAX_NUDGES):
        if measurement(mechanism, scale).map(sensitivity) <= budget:
            return scale
        scale += step
        step *= 2.0
    raise ArithmeticError(  # pragma: no cover - would mean OpenDP's map changed
        f"no scale near {scale} meets the requested privacy loss {budget}"
    )


def plan_noise(
    mechanism: Mechanism,
    *,
    rho: float | None,
    epsilon: float | None,
    sensitivity: int,
    confidence: float,
) -> tuple[NoiseSpec, Charge]:
    """The noise for a request and what it costs, from public parameters only.

    Gaussian: scale K / sqrt(2 rho), charge rho = map(K). Laplace: scale K / eps,
    charge epsilon = map(K) and rho = the pure-DP-to-zCDP map (eps^2 / 2). The
    charge never exceeds the request. `ci_half_width` is the half-width of a
    `confidence` interval for one cell's noise.
    """
    if not isinstance(sensitivity, int) or isinstance(sensitivity, bool) or sensitivity < 1:
        raise InvalidParametersError(f"sensitivity must be a positive integer, got {sensitivity!r}")
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not 0.0 < confidence < 1.0
    ):
        raise InvalidParametersError(f"confidence must be in (0, 1), got {confidence!r}")
    alpha = 1.0 - confidence
    if mechanism is Mechanism.DISCRETE_GAUSSIAN:
        requested = _check_positive("rho", rho)
        scale = _scale_within(
            mechanism, sensitivity / math.sqrt(2.0 * requested), sensitivity, requested
        )
        meas = measurement(mechanism, scale)
        charge = Charge(rho=float(meas.map(sensitivity)))
        variance = discrete_gaussian_variance(scale)
        half_width = float(dp_accuracy.discrete_gaussian_scale_to_accuracy(scale, alpha))
    elif mechanism is Mechanism.DISCRETE_LAPLACE:
        requested = _check_positive("epsilon", epsilon)
        scale = _scale_within(mechanism, sensitivity / requested, sensitivity, requested)
        meas = measurement(mechanism, scale)
        charge = Charge(
            rho=float(dp_c.make_pureDP_to_zCDP(meas).map(sensitivity)),
            epsilon=float(meas.map(sensitivity)),
        )
        variance = discrete_laplace_variance(scale)
        half_width = float(dp_accuracy.discrete_laplacian_scale_to_accuracy(scale, alpha))
    else:
        raise InvalidParametersError(f"unknown mechanism {mechanism!r}")
    noise = NoiseSpec(
        mechanism=mechanism,
        scale=scale,
        variance=variance,
        sensitivity_l1=sensitivity,
        sensitivity_l2=float(sensitivity),
        max_records_per_person=sensitivity,
        ci_level=float(confidence),
        ci_half_width=half_width,
    )
    return noise, charge


def add_noise(noise: NoiseSpec, values: Sequence[int]) -> list[int]:
    """Release `values` with the planned noise, one independent draw per cell."""
    if not values:
        return []
    released = measurement(noise.mechanism, noise.scale)([int(v) for v in values])
    return [int(v) for v in released]


def epsilon_equivalent(rho: float, delta: float = 1e-7) -> float:
    """The epsilon of (epsilon, delta)-DP implied by rho-zCDP, for reports.

    Uses OpenDP's conversion on a Gaussian measurement whose map at d_in = 1 is
    at least `rho` (its scale is nudged down if the map rounds below), so the
    stated epsilon is never smaller than the true one.
    """
    rho = _check_positive("rho", rho)
    if not 0.0 < delta < 1.0:
        raise InvalidParametersError(f"delta must be in (0, 1), got {delta!r}")
    space = dp_domains.atom_domain(T=float, nan=False), dp_metrics.absolute_distance(T=float)
    scale = 1.0 / math.sqrt(2.0 * rho)
    step = math.ulp(scale)
    for _ in range(_MAX_NUDGES):
        gaussian = dp_m.make_gaussian(*space, scale=scale)
        if gaussian.map(1.0) >= rho:
            break
        scale -= step
        step *= 2.0
    converted = dp_c.make_fix_delta(dp_c.make_zCDP_to_approxDP(gaussian), delta)
    return float(converted.map(1.0)[0])


def noise_accuracy(mechanism: Mechanism, scale: float, alpha: float) -> float:
    """Half-width a with P(|noise| > a) <= alpha for one cell at `scale` (OpenDP's bound).

    The same bound `plan_noise` states as `ci_half_width`, at any level: the coordinator
    uses it to test released counts at the level of each step of its error control.
    """
    import opendp.accuracy as dp_accuracy

    if mechanism is Mechanism.DISCRETE_GAUSSIAN:
        return float(dp_accuracy.discrete_gaussian_scale_to_accuracy(scale, alpha))
    return float(dp_accuracy.discrete_laplacian_scale_to_accuracy(scale, alpha))


def with_confidence(noise: NoiseSpec, confidence: float) -> NoiseSpec:
    """The same noise with its per-cell interval stated at `confidence` instead.

    The interval is a statement about noise already drawn (post-processing), so a
    stored answer can be replayed to a request asking another confidence level.
    """
    if noise.ci_level == confidence:
        return noise
    half_width = noise_accuracy(noise.mechanism, noise.scale, 1.0 - confidence)
    return dataclasses.replace(noise, ci_level=float(confidence), ci_half_width=half_width)
