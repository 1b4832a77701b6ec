"""Combining noisy cells: sums, rates with delta-method variance, quantiles."""

from __future__ import annotations

import random
import statistics

import pytest

from fedaudit.coordinator.errors import AnswerError
from fedaudit.coordinator.statistics.estimates import (
    Bin,
    Estimate,
    binned_quantile,
    combine,
    combine_parts,
    rate,
    rate_parts,
    sum_cells,
    where,
    z_for,
)
from fedaudit.node.domain import Answer, Cell, Charge, Mechanism, NoiseSpec


def _answer(cells: list[Cell], *, variance: float = 4.0, group_by=("provider",)) -> Answer:
    categories = tuple(dict.fromkeys(c.category for c in cells))
    return Answer(
        request_id="r",
        template="assessment_results",
        template_version="1",
        catalogue_version="t",
        data_version="v",
        municipality_code="M01",
        group_by=tuple(group_by),
        categories=categories,
        cells=tuple(cells),
        noise=NoiseSpec(
            mechanism=Mechanism.DISCRETE_GAUSSIAN,
            scale=variance**0.5,
            variance=variance,
            sensitivity_l1=1,
            sensitivity_l2=1.0,
            max_records_per_person=1,
            ci_level=0.95,
            ci_half_width=1.96 * variance**0.5,
        ),
        charge=Charge(rho=0.1),
        suppression_threshold=0,
    )


def test_sum_cells_adds_estimates_and_variances_and_skips_suppressed():
    """A sum counts released cells only; each adds the per-cell variance."""
    ans = _answer(
        [
            Cell(("P1",), "pass", 10),
            Cell(("P1",), "fail", 3),
            Cell(("P2",), "pass", 0, suppressed=True),
            Cell(("P2",), "fail", 7),
        ],
        variance=2.5,
    )
    e = sum_cells(ans, where(categories={"pass"}))
    assert e == Estimate(value=10, noise_var=2.5, n_cells=1, missing_cells=1)
    both = sum_cells(ans, where(provider={"P2"}))
    assert (both.value, both.noise_var, both.n_cells, both.missing_cells) == (7, 2.5, 1, 1)


def test_combining_nodes_adds_values_and_noise_variances():
    """Regional sums over nodes: values add and independent noise variances add."""
    node_a = sum_cells(_answer([Cell(("P1",), "pass", 50)], variance=4.0), where())
    node_b = sum_cells(_answer([Cell(("P9",), "pass", 70)], variance=9.0), where())
    total = combine([node_a, node_b])
    assert total.value == 120
    assert total.noise_var == pytest.approx(13.0)
    assert total.n_cells == 2
    assert total.interval(2.0) == pytest.approx((120 - 2 * 13**0.5, 120 + 2 * 13**0.5))


def test_rate_parts_withhold_rows_with_any_suppressed_cell():
    """A row with a suppressed cell leaves numerator and denominator together."""
    ans = _answer(
        [
            Cell(("P1",), "pass", 80),
            Cell(("P1",), "fail", 20),
            Cell(("P2",), "pass", 0, suppressed=True),
            Cell(("P2",), "fail", 5),
        ]
    )
    parts = rate_parts(ans, ["pass"], ["fail"])
    assert (parts.rows, parts.withheld_rows) == (1, 1)
    assert parts.numerator.value == 80
    assert parts.rest.value == 20
    assert parts.rate().value == pytest.approx(0.8)
    pooled = combine_parts([parts, parts])
    assert pooled.denominator == 200
    assert pooled.numerator.noise_var == pytest.approx(2 * 4.0)


def test_rate_parts_rejects_an_answer_without_the_category():
    """An answer lacking a needed category is an AnswerError, not a silent zero."""
    ans = _answer([Cell(("P1",), "pass", 8)])
    with pytest.raises(AnswerError, match="lacks categories fail"):
        rate_parts(ans, ["pass"], ["fail"])


def test_delta_method_noise_variance_matches_monte_carlo():
    """The delta-method variance of A/(A+B) under Gaussian noise matches simulation (5%)."""
    rng = random.Random(20240501)
    a_true, b_true, v_a, v_b = 300.0, 100.0, 400.0, 225.0
    draws = []
    for _ in range(20000):
        a = a_true + rng.gauss(0, v_a**0.5)
        b = b_true + rng.gauss(0, v_b**0.5)
        draws.append(a / (a + b))
    simulated = statistics.pvariance(draws)
    predicted = rate(Estimate(a_true, v_a, 1), Estimate(b_true, v_b, 1)).noise_var
    assert predicted == pytest.approx((b_true**2 * v_a + a_true**2 * v_b) / 400.0**4)
    assert simulated == pytest.approx(predicted, rel=0.05)


def test_rate_variance_covers_sampling_and_noise():
    """Binomial outcomes plus noise: the predicted total variance matches simulation (10%)."""
    rng = random.Random(7)
    n, p, noise_sd = 250, 0.8, 8.0
    rates, predicted = [], []
    for _ in range(4000):
        passes = sum(1 for _ in range(n) if rng.random() < p)
        a = passes + rng.gauss(0, noise_sd)
        b = n - passes + rng.gauss(0, noise_sd)
        r = rate(Estimate(a, noise_sd**2, 1), Estimate(b, noise_sd**2, 1))
        rates.append(r.value)
        predicted.append(r.var)
    assert statistics.fmean(predicted) == pytest.approx(statistics.pvariance(rates), rel=0.10)
    # sampling alone would understate it: the noise part is material here
    assert statistics.fmean(predicted) > 1.15 * p * (1 - p) / n


def test_rate_floors_the_denominator_and_clips_the_share():
    """Noise can make a tiny count negative: N floors at 1 and r stays in [0, 1]."""
    r = rate(Estimate(-3, 4.0, 1), Estimate(1, 4.0, 1))
    assert r.denominator == 1.0
    assert r.value == 0.0
    r = rate(Estimate(5, 4.0, 1), Estimate(-2, 4.0, 1))
    assert r.value == 1.0
    assert r.interval(3.0)[1] <= 1.0


def test_z_for_matches_the_normal_quantile():
    """z_for(0.95) is the familiar 1.96."""
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError, match="confidence"):
        z_for(1.0)


EDGES = [(0, 500), (500, 1000), (1000, 1500), (1500, 2000), (2000, 3000), (3000, float("inf"))]
PROBS = [0.05, 0.15, 0.20, 0.25, 0.25, 0.10]


def _true_median() -> float:
    cum = 0.0
    for (low, high), p in zip(EDGES, PROBS, strict=True):
        if cum + p >= 0.5:
            return low + (0.5 - cum) / p * (high - low)
        cum += p
    raise AssertionError


def test_binned_median_interval_covers_the_true_median():
    """The Woodruff interval of a noisy binned median covers the truth about 95% of the time."""
    rng = random.Random(11)
    truth = _true_median()
    z = z_for(0.95)
    covered = 0
    estimates = []
    reps = 400
    for _ in range(reps):
        counts = [0] * len(EDGES)
        for _ in range(800):
            u, cum = rng.random(), 0.0
            for i, p in enumerate(PROBS):
                cum += p
                if u < cum:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
        bins = [
            Bin(low, high, Estimate(c + round(rng.gauss(0, 5)), 25.0, 1))
            for (low, high), c in zip(EDGES, counts, strict=True)
        ]
        q = binned_quantile(bins, 0.5, z)
        assert q is not None
        assert q.low <= q.value <= q.high
        estimates.append(q.value)
        covered += q.low <= truth <= q.high
    assert 0.91 <= covered / reps <= 0.985
    assert statistics.fmean(estimates) == pytest.approx(truth, rel=0.01)


def test_binned_quantile_in_the_open_top_bin_is_flagged():
    """A median in the unbounded top bin is clamped to its edge and says so."""
    bins = [Bin(0, 500, Estimate(5, 1.0, 1)), Bin(500, float("inf"), Estimate(95, 1.0, 1))]
    q = binned_quantile(bins, 0.5, 1.96)
    assert q is not None
    assert q.value == 500
    assert q.open_ended
    assert binned_quantile([Bin(0, 1, Estimate(-4, 1.0, 1))], 0.5, 1.96) is None
