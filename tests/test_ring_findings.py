"""The ring's findings locate what they report, under the audit's error control.

Exact counts go through the real DP releases (OpenDP noise) and the real decision
procedure (`coordinator.ring.significance`); only the ring itself is skipped, since
what is tested here is what happens to its counts.
"""

from __future__ import annotations

import random

import pytest
from dedup_support import release_as_tallied

from fedaudit.common.ring_counting import DedupCounts
from fedaudit.common.ring_releases import unordered_pairs
from fedaudit.coordinator.planning.plan import AuditPlan, Checks
from fedaudit.coordinator.ring.config import DedupConfig
from fedaudit.coordinator.ring.findings import report_parts
from fedaudit.coordinator.ring.significance import Branch, CountTest, decide
from fedaudit.node.domain import Mechanism

PLAN = AuditPlan(name="ring", requester="oversight-board", confidence=0.95, checks=Checks())
MUNIS = ("M01", "M02", "M03", "M04", "M05")
CONFIG = DedupConfig(rho=10.0, bound=1)
"""A generous cost: with the person-level sensitivities a pair count needs a large budget
(or a large count) to clear its noise; what is tested here is where a finding points."""


def _counts(pair: int, occupation: int = 0) -> DedupCounts:
    """M02 and M04 share `pair` persons (all in ISCO 7212); nothing else is duplicated."""
    return DedupCounts(
        municipalities=MUNIS,
        duplicated=pair,
        per_occupation={"7212": pair if occupation else 0, "5321": 0},
        occupations=("5321", "7212"),
        overlap={2: pair},
        pairwise={("M02", "M04"): pair},
    )


def _parts(counts: DedupCounts) -> tuple[dict, list[dict], list[dict]]:
    releases = release_as_tallied(PLAN, CONFIG, MUNIS, counts)
    return report_parts(CONFIG, MUNIS, counts.occupations, releases, {})


def test_a_pairwise_count_names_the_two_municipalities() -> None:
    """Issue 11: 160 persons in both M02 and M04 is a finding about M02 and M04, not only
    a region-wide one, and the next step says whom to contact."""
    _, findings, metrics = _parts(_counts(160, occupation=1))
    pairs = {
        (f["subject"]["municipality"], f["subject"]["other_municipality"]): f
        for f in findings
        if f["metric"] == "duplicated_persons_pair"
    }
    # The noise is real (OpenDP), so another pair may be flagged by chance, at most at the
    # ring's error rate (see the gatekeeping simulation below); the real pair is named.
    assert ("M02", "M04") in pairs
    found = pairs[("M02", "M04")]
    assert "in both M02 and M04" in found["summary"]
    assert found["next_step"].startswith("Ask M02 and M04")
    assert found["ci"][0] > 0
    occupations = [f["subject"]["isco_code"] for f in findings if f["subject"].get("isco_code")]
    assert "7212" in occupations
    region = [
        f for f in findings if f["metric"] == "duplicated_persons" and not f["subject"]["isco_code"]
    ]
    assert len(region) == 1
    tested_pairs = [m for m in metrics if m["metric"] == "duplicated_persons_pair"]
    assert len(tested_pairs) == len(unordered_pairs(MUNIS))
    assert all(m["tested"] for m in tested_pairs)


def test_breakdowns_are_not_tested_when_the_region_wide_count_is_no_finding() -> None:
    """No duplicates at all: no finding anywhere, and the breakdown metrics say why untested."""
    _, findings, metrics = _parts(_counts(0))
    assert findings == []
    pair_metrics = [m for m in metrics if m["metric"] == "duplicated_persons_pair"]
    assert pair_metrics
    assert not any(m["tested"] for m in pair_metrics)
    assert all(m["note"].startswith("not tested: the region-wide count") for m in pair_metrics)


def test_clean_counts_give_few_false_findings_over_many_releases() -> None:
    """All counts zero, 200 fresh releases: the share of runs with any finding stays near
    <= 5% (the ring's tests at a 95% plan), allowing for simulation error."""
    runs = 200
    flagged = 0
    for _ in range(runs):
        _, findings, _ = _parts(_counts(0))
        flagged += bool(findings)
    # At most Binomial(200, 0.05): mean 10; P(X > 21) < 0.2%.
    assert flagged <= 21, flagged


def test_gatekeeping_keeps_the_family_wise_error_when_only_some_cells_are_real() -> None:
    """One real pair among ten: over 3,000 simulated decisions the other nine pairs are
    flagged in at most alpha of them (Gaussian noise at a fixed scale, continuous draws)."""
    rng = random.Random(7)
    alpha, scale, false_runs, trials = 0.05, 10.0, 0, 3000
    for _ in range(trials):
        cells = [
            CountTest("pairwise", 0, 120 + rng.gauss(0, scale), scale, Mechanism.DISCRETE_GAUSSIAN)
        ]
        cells += [
            CountTest("pairwise", i, rng.gauss(0, scale), scale, Mechanism.DISCRETE_GAUSSIAN)
            for i in range(1, 10)
        ]
        overall = CountTest(
            "dup_overall", 0, 120 + rng.gauss(0, scale), scale, Mechanism.DISCRETE_GAUSSIAN
        )
        decisions = decide([Branch(overall, tuple(cells))], alpha)
        false_runs += any(decisions[("pairwise", i)].flagged for i in range(1, 10))
    # Holm at 5% with nine true nulls: expect about 4% or less; 6% is > 4 standard errors.
    assert false_runs / trials <= 0.06, false_runs / trials


@pytest.mark.parametrize("mechanism", [Mechanism.DISCRETE_GAUSSIAN, Mechanism.DISCRETE_LAPLACE])
def test_p_value_is_the_level_at_which_the_count_just_flags(mechanism) -> None:
    """flags_at(p * 1.01) and not flags_at(p / 1.01): the ordering Holm uses is right."""
    test = CountTest("x", 0, 40.0, 10.0, mechanism)
    p = test.p_value()
    assert 0 < p < 0.05
    assert test.flags_at(p * 1.01)
    assert not test.flags_at(p / 1.01)


@pytest.mark.parametrize(
    ("shopping", "revoked", "branches"), [(True, True, 3), (False, False, 1), (True, False, 2)]
)
def test_each_region_wide_count_is_tested_at_its_share_of_the_error_budget(
    shopping: bool, revoked: bool, branches: int
) -> None:
    """The ring's alpha is split evenly over its region-wide tests (duplicates, shopping,
    revoked), so together they keep the family-wise guarantee; a test at the full alpha
    each would overstate it by the number of branches."""
    config = DedupConfig(rho=10.0, bound=1, shopping=shopping, revoked=revoked)
    releases = release_as_tallied(PLAN, config, MUNIS, _counts(0))
    alpha = 1.0 - PLAN.confidence
    assert releases.confidence == pytest.approx(1.0 - alpha / branches)
    assert releases.alpha == pytest.approx(alpha)
