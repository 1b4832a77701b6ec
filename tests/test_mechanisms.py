"""Noise planning and release: charges match OpenDP's maps, noise has the stated law."""

from __future__ import annotations

import math
import statistics

import pytest

from fedaudit.common import mechanisms
from fedaudit.node.domain import Mechanism
from fedaudit.node.errors import InvalidParametersError

GAUSS = Mechanism.DISCRETE_GAUSSIAN
LAPLACE = Mechanism.DISCRETE_LAPLACE

RHOS = (1e-6, 0.001, 0.01, 0.03, 0.05, 0.1, 0.125, 0.3, 0.5, 1.0, 2.5)
EPSILONS = (0.01, 0.1, 0.3, 0.5, 0.7, 1.0, 2.0, 5.0)
BOUNDS = (1, 2, 3, 5, 7, 20)


def _gaussian_pmf(scale: float) -> dict[int, float]:
    """The discrete Gaussian's probabilities by direct summation (test oracle)."""
    top = int(60 * scale) + 10
    weights = {k: math.exp(-(k * k) / (2 * scale * scale)) for k in range(-top, top + 1)}
    norm = math.fsum(weights.values())
    return {k: w / norm for k, w in weights.items()}


def _laplace_pmf(scale: float) -> dict[int, float]:
    """The discrete Laplace's probabilities, P(k) ∝ exp(-|k|/scale), truncated far out."""
    top = int(80 * scale) + 10
    weights = {k: math.exp(-abs(k) / scale) for k in range(-top, top + 1)}
    norm = math.fsum(weights.values())
    return {k: w / norm for k, w in weights.items()}


def _moment(pmf: dict[int, float], power: int) -> float:
    return math.fsum(p * k**power for k, p in pmf.items())


@pytest.mark.parametrize("k", BOUNDS)
def test_gaussian_charge_is_the_request_and_opendp_agrees(k: int) -> None:
    """Gaussian: charge within 1e-12 below the request; the measurement checks at d_in = K."""
    for rho in RHOS:
        noise, charge = mechanisms.plan_noise(
            GAUSS, rho=rho, epsilon=None, sensitivity=k, confidence=0.95
        )
        assert charge.rho <= rho
        assert rho - charge.rho <= 1e-12
        assert charge.epsilon is None
        assert charge.delta == 0.0
        assert noise.scale == pytest.approx(k / math.sqrt(2 * rho), rel=1e-12)
        meas = mechanisms.measurement(GAUSS, noise.scale)
        assert meas.check(k, charge.rho)
        assert meas.map(k) == charge.rho
        assert (noise.sensitivity_l1, noise.sensitivity_l2, noise.max_records_per_person) == (
            k,
            float(k),
            k,
        )


@pytest.mark.parametrize("k", BOUNDS)
def test_laplace_charge_is_the_request_and_opendp_agrees(k: int) -> None:
    """Laplace: epsilon within 1e-12 below the request, rho = eps^2 / 2, check holds."""
    for eps in EPSILONS:
        noise, charge = mechanisms.plan_noise(
            LAPLACE, rho=None, epsilon=eps, sensitivity=k, confidence=0.9
        )
        assert charge.epsilon is not None
        assert charge.epsilon <= eps
        assert eps - charge.epsilon <= 1e-12
        assert charge.rho == pytest.approx(eps * eps / 2, abs=1e-12)
        assert charge.rho <= eps * eps / 2 + 1e-15
        assert noise.scale == pytest.approx(k / eps, rel=1e-12)
        meas = mechanisms.measurement(LAPLACE, noise.scale)
        assert meas.check(k, charge.epsilon)
        assert noise.ci_level == 0.9


def test_scale_is_nudged_when_the_map_rounds_above_the_request() -> None:
    """At eps=0.7, K=3 the analytic scale maps to 0.7000000000000001; the plan stays within."""
    analytic = mechanisms.measurement(LAPLACE, 3 / 0.7)
    assert analytic.map(3) > 0.7  # the rounding the nudge exists for (research note s11)
    noise, charge = mechanisms.plan_noise(
        LAPLACE, rho=None, epsilon=0.7, sensitivity=3, confidence=0.95
    )
    assert noise.scale > 3 / 0.7
    assert charge.epsilon is not None
    assert charge.epsilon <= 0.7


def test_gaussian_variance_matches_direct_summation() -> None:
    """NoiseSpec.variance is the discrete Gaussian's exact variance, small and large scales."""
    for scale in (0.2, 0.35, 0.5, 0.8, 0.99, 1.0, 1.3, 2.0, 3.0, 7.5, 40.0):
        expected = _moment(_gaussian_pmf(scale), 2)
        got = mechanisms.discrete_gaussian_variance(scale)
        assert got == pytest.approx(expected, rel=1e-10), scale
    # Small scales are far from the continuous s^2: the sum matters there.
    assert mechanisms.discrete_gaussian_variance(0.35) < 0.35**2 * 0.5
    assert mechanisms.discrete_gaussian_variance(1e6) == pytest.approx(1e12, rel=1e-12)


def test_laplace_variance_matches_closed_form_and_summation() -> None:
    """NoiseSpec.variance is 2e^{-1/b}/(1-e^{-1/b})^2 for the discrete Laplace."""
    for scale in (0.3, 1.0, 3.0, 10.0):
        t = math.exp(-1 / scale)
        closed = 2 * t / (1 - t) ** 2
        assert mechanisms.discrete_laplace_variance(scale) == pytest.approx(closed, rel=1e-12)
        assert closed == pytest.approx(_moment(_laplace_pmf(scale), 2), rel=1e-9)
    assert mechanisms.discrete_laplace_variance(1e6) == pytest.approx(2e12, rel=1e-9)


def test_plan_reports_the_variance_of_its_own_scale() -> None:
    """The NoiseSpec's variance belongs to the scale it states."""
    noise, _ = mechanisms.plan_noise(GAUSS, rho=2.0, epsilon=None, sensitivity=1, confidence=0.95)
    assert noise.variance == mechanisms.discrete_gaussian_variance(noise.scale)
    assert noise.variance < noise.scale**2  # scale 0.5: the discreteness is visible
    noise, _ = mechanisms.plan_noise(LAPLACE, rho=None, epsilon=0.5, sensitivity=2, confidence=0.95)
    assert noise.variance == mechanisms.discrete_laplace_variance(noise.scale)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mechanism", "rho", "epsilon", "pmf"),
    [
        (GAUSS, 1 / 18, None, _gaussian_pmf),  # K=1: scale 3
        (LAPLACE, None, 1 / 3, _laplace_pmf),  # K=1: scale 3
    ],
    ids=["gaussian", "laplace"],
)
def test_released_noise_has_the_stated_law(
    mechanism: Mechanism, rho: float | None, epsilon: float | None, pmf: object
) -> None:
    """20,000 noised zeros: mean ~0, variance = NoiseSpec.variance, CI covers >= confidence.

    Tolerances are 6 standard errors of each statistic, computed from the exact
    distribution, so a correct implementation fails with probability < 1e-6.
    """
    n = 20_000
    noise, _ = mechanisms.plan_noise(
        mechanism, rho=rho, epsilon=epsilon, sensitivity=1, confidence=0.95
    )
    assert noise.scale == pytest.approx(3.0, rel=1e-9)
    law = pmf(noise.scale)  # type: ignore[operator]
    var = _moment(law, 2)
    mu4 = _moment(law, 4)
    assert noise.variance == pytest.approx(var, rel=1e-9)

    draws = mechanisms.add_noise(noise, [0] * n)
    assert len(draws) == n
    assert all(isinstance(d, int) for d in draws)

    mean = statistics.fmean(draws)
    assert abs(mean) <= 6 * math.sqrt(var / n)
    sample_var = statistics.fmean(d * d for d in draws)  # known mean 0
    assert abs(sample_var - var) <= 6 * math.sqrt((mu4 - var * var) / n)

    half = noise.ci_half_width
    p_inside = math.fsum(p for k, p in law.items() if abs(k) <= half)
    assert p_inside >= noise.ci_level  # the interval is valid for the exact law
    inside = sum(1 for d in draws if abs(d) <= half) / n
    assert abs(inside - p_inside) <= 6 * math.sqrt(p_inside * (1 - p_inside) / n)
    assert inside >= noise.ci_level - 0.01


def test_add_noise_handles_large_counts_and_empty_vectors() -> None:
    """Counts beyond 32 bits pass through i64 noise; an empty answer stays empty."""
    noise, _ = mechanisms.plan_noise(GAUSS, rho=0.5, epsilon=None, sensitivity=1, confidence=0.95)
    big = 5_000_000_000
    (released,) = mechanisms.add_noise(noise, [big])
    assert abs(released - big) <= 50  # scale 1: 50 is 50 standard deviations
    assert mechanisms.add_noise(noise, []) == []


def test_add_noise_draws_independently_per_cell() -> None:
    """Two releases of the same vector differ (fresh noise each time, not a cached draw)."""
    noise, _ = mechanisms.plan_noise(LAPLACE, rho=None, epsilon=0.1, sensitivity=1, confidence=0.95)
    first = mechanisms.add_noise(noise, [100] * 200)
    second = mechanisms.add_noise(noise, [100] * 200)
    assert first != second  # scale 10 over 200 cells: equal with probability ~ 0.07^200
    assert len(set(first)) > 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mechanism": GAUSS, "rho": None, "epsilon": None}, "rho must be"),
        ({"mechanism": GAUSS, "rho": 0.0, "epsilon": None}, "rho must be"),
        ({"mechanism": GAUSS, "rho": -1.0, "epsilon": None}, "rho must be"),
        ({"mechanism": GAUSS, "rho": math.nan, "epsilon": None}, "rho must be"),
        ({"mechanism": GAUSS, "rho": math.inf, "epsilon": None}, "rho must be"),
        ({"mechanism": LAPLACE, "rho": 0.1, "epsilon": None}, "epsilon must be"),
        ({"mechanism": LAPLACE, "rho": None, "epsilon": math.nan}, "epsilon must be"),
    ],
)
def test_plan_rejects_bad_privacy_parameters(kwargs: dict[str, object], message: str) -> None:
    """A missing, non-positive or non-finite loss is refused before anything is built."""
    with pytest.raises(InvalidParametersError, match=message):
        mechanisms.plan_noise(sensitivity=1, confidence=0.95, **kwargs)  # type: ignore[arg-type]


def test_plan_rejects_bad_bound_and_confidence() -> None:
    """The contribution bound must be a positive integer and confidence in (0, 1)."""
    with pytest.raises(InvalidParametersError, match="sensitivity"):
        mechanisms.plan_noise(GAUSS, rho=0.1, epsilon=None, sensitivity=0, confidence=0.95)
    for confidence in (0.0, 1.0, math.nan):
        with pytest.raises(InvalidParametersError, match="confidence"):
            mechanisms.plan_noise(
                GAUSS, rho=0.1, epsilon=None, sensitivity=1, confidence=confidence
            )


def test_epsilon_equivalent_is_opendps_conversion() -> None:
    """rho=0.125 at delta=1e-7 is eps 2.649 (OpenDP, research note s2); bounded by the classic formula."""
    assert mechanisms.epsilon_equivalent(0.125, 1e-7) == pytest.approx(2.6489617896719335, rel=1e-9)
    for rho in (0.001, 0.02, 0.5, 3.0):
        eps = mechanisms.epsilon_equivalent(rho)
        classic = rho + 2 * math.sqrt(rho * math.log(1 / 1e-7))
        assert rho < eps <= classic
    assert mechanisms.epsilon_equivalent(0.1, 1e-5) < mechanisms.epsilon_equivalent(0.1, 1e-9)
    with pytest.raises(InvalidParametersError):
        mechanisms.epsilon_equivalent(0.0)
