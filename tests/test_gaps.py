"""Gap detection on simulated federations: clean ones stay quiet, planted gaps are found."""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from fedaudit.common import mechanisms
from fedaudit.coordinator.planning.plan import AuditPlan, parse_plan
from fedaudit.coordinator.statistics.evaluation import Evaluation
from fedaudit.coordinator.statistics.gaps import evaluate
from fedaudit.node.domain import Answer, Cell, Charge, Mechanism, NoiseSpec

NOISE_SD = 3.0
NOISE_VAR = NOISE_SD**2 + 1 / 12  # rounded Gaussian noise, as integer counts carry
CITIZENSHIP = (("national", 0.83), ("foreign", 0.15), ("unknown", 0.02))
REC_ON_TIME = ("d0_30", "d31_60", "d61_90", "pending_within_limit")
REC_LATE = ("d91_120", "d121_180", "d181_365", "d366_plus", "pending_overdue")
REC_CATEGORIES = ("d0_30", "d31_60", "d61_90", "d91_120", "d121_180", "d181_365", "d366_plus")
EARNINGS = (
    "lt_500",
    "500_999",
    "1000_1499",
    "1500_1999",
    "2000_2499",
    "2500_2999",
    "3000_3999",
    "4000_4999",
    "ge_5000",
)
EARNINGS_P = (0.03, 0.07, 0.15, 0.25, 0.22, 0.13, 0.10, 0.03, 0.02)

PLAN: dict[str, Any] = {
    "name": "test-audit",
    "requester": "oversight-board",
    "confidence": 0.95,
    "min_denominator": 30,
    "checks": {
        "pass_rates": {"rho": 0.05, "tolerance": 0.08},
        "employment": {"rho": 0.05, "tolerance": 0.10, "months_after": 12},
        "credential_inflation": {"tolerance": 0.15},
        "recognition": {"rho": 0.05, "tolerance": 0.10, "limit_days": 90},
        "appeals": {"rho": 0.02, "tolerance": 0.10},
        "outcome_disparity": {"tolerance": 0.10, "by": ["citizenship_group"]},
        "certificates": {"rho": 0.02},
        "earnings": {"rho": 0.02, "months_after": 12},
    },
}


def _plan(**overrides: Any) -> AuditPlan:
    data = json.loads(json.dumps(PLAN))
    for check, settings in overrides.items():
        data["checks"][check].update(settings)
    return parse_plan(data, source="test.yaml")


@dataclass
class Municipality:
    """True rates of one simulated municipality (the process the audit should recover)."""

    code: str
    n_per_provider: int = 600
    pass_rate: float = 0.85
    employment: float = 0.80
    foreign_pass: float | None = None
    late_share: float = 0.10
    upheld: float = 0.15
    providers: dict[str, tuple[float, float]] = field(default_factory=dict)
    """provider id -> (pass rate, employment rate) overriding the municipality's."""


def _noise(rng: random.Random) -> int:
    return round(rng.gauss(0, NOISE_SD))


OPENDP_NOISE, OPENDP_CHARGE = mechanisms.plan_noise(
    Mechanism.DISCRETE_GAUSSIAN,
    rho=1 / (2 * NOISE_SD**2),
    epsilon=None,
    sensitivity=1,
    confidence=0.95,
)
"""The nodes' own noise (OpenDP's discrete Gaussian, scale 3) for the clean-federation runs."""


def _answer(
    code: str,
    template: str,
    *,
    group_by: tuple[str, ...],
    categories: tuple[str, ...],
    counts: dict[tuple[tuple[str, ...], str], int],
    groups: list[tuple[str, ...]],
    rng: random.Random,
    opendp: bool = False,
) -> Answer:
    """One node's answer. Seeded rounded-Gaussian noise by default (reproducible planted
    cases); with `opendp`, the noise NodeService itself adds (OpenDP, not seedable)."""
    true = [counts.get((keys, cat), 0) for keys in groups for cat in categories]
    noisy = mechanisms.add_noise(OPENDP_NOISE, true) if opendp else [t + _noise(rng) for t in true]
    cells = tuple(
        Cell(keys, cat, value)
        for (keys, cat), value in zip(
            [(k, c) for k in groups for c in categories], noisy, strict=True
        )
    )
    return Answer(
        request_id=f"{code}-{template}",
        template=template,
        template_version="1",
        catalogue_version="test",
        data_version="v1",
        municipality_code=code,
        group_by=group_by,
        categories=categories,
        cells=cells,
        noise=OPENDP_NOISE
        if opendp
        else NoiseSpec(
            mechanism=Mechanism.DISCRETE_GAUSSIAN,
            scale=NOISE_SD,
            variance=NOISE_VAR,
            sensitivity_l1=1,
            sensitivity_l2=1.0,
            max_records_per_person=1,
            ci_level=0.95,
            ci_half_width=1.96 * NOISE_SD,
        ),
        charge=OPENDP_CHARGE if opendp else Charge(rho=0.05),
        suppression_threshold=0,
    )


def _draw(rng: random.Random, probs: list[tuple[str, float]]) -> str:
    u, cum = rng.random(), 0.0
    for label, p in probs:
        cum += p
        if u < cum:
            return label
    return probs[-1][0]


def _node(m: Municipality, rng: random.Random, opendp: bool = False) -> dict[str, Answer]:
    """All answers one node would give, from true outcomes drawn at the given rates."""
    providers = [f"P-{m.code}-{i}" for i in range(1, 6)]
    groups = [(p, g) for p in [*providers, "none"] for g, _ in CITIZENSHIP]
    results: dict[tuple[tuple[str, ...], str], int] = {}
    employment: dict[tuple[tuple[str, ...], str], int] = {}
    certificates: dict[tuple[tuple[str, ...], str], int] = {}
    earnings: dict[tuple[tuple[str, ...], str], int] = {}
    for p in providers:
        pass_rate, emp_rate = m.providers.get(p, (m.pass_rate, m.employment))
        for g, share in CITIZENSHIP:
            rate = m.foreign_pass if g == "foreign" and m.foreign_pass is not None else pass_rate
            n = round(m.n_per_provider * share)
            for _ in range(n):
                u = rng.random()
                result = "absent" if u < 0.03 else "pass" if rng.random() < rate else "fail"
                results[((p, g), result)] = results.get(((p, g), result), 0) + 1
            for _ in range(round(0.8 * n)):
                if rng.random() < 0.05:
                    status = "unknown"
                elif rng.random() < emp_rate:
                    status = "employed_in_field" if rng.random() < 0.7 else "employed_other_field"
                    band = _draw(rng, list(zip(EARNINGS, EARNINGS_P, strict=True)))
                    if rng.random() < 0.1:
                        band = "not_reported"
                    earnings[((), band)] = earnings.get(((), band), 0) + 1
                else:
                    status = "not_employed"
                employment[((p, g), status)] = employment.get(((p, g), status), 0) + 1
        certificates[((p,), "training")] = round(0.7 * m.n_per_provider)
        certificates[((p,), "prior_learning")] = round(0.1 * m.n_per_provider)
    certificates[(("none",), "reciprocity")] = 120
    recognition: dict[tuple[tuple[str, ...], str], int] = {}
    decisions: dict[tuple[tuple[str, ...], str], int] = {}
    for g, share in CITIZENSHIP:
        for _ in range(round(400 * share)):
            late = rng.random() < m.late_share
            pool = REC_LATE if late else REC_ON_TIME
            cat = pool[rng.randrange(len(pool))]
            recognition[((g,), cat)] = recognition.get(((g,), cat), 0) + 1
            decision = (
                "pending"
                if cat.startswith("pending")
                else _draw(rng, [("full", 0.7), ("partial", 0.2), ("rejected", 0.1)])
            )
            decisions[((), decision)] = decisions.get(((), decision), 0) + 1
    appeals: dict[tuple[tuple[str, ...], str], int] = {}
    for st in ("assessment", "certificate", "recognition"):
        for _ in range(80):
            u = rng.random()
            outcome = (
                "withdrawn"
                if u < 0.1
                else "pending"
                if u < 0.2
                else "upheld"
                if rng.random() < m.upheld
                else "dismissed"
            )
            appeals[((st,), outcome)] = appeals.get(((st,), outcome), 0) + 1
    c = m.code
    emp_cats = ("employed_in_field", "employed_other_field", "not_employed", "unknown")
    by_cit = [(g,) for g, _ in CITIZENSHIP]
    return {
        "pass_rates": _answer(
            c,
            "assessment_results",
            group_by=("provider", "citizenship_group"),
            categories=("pass", "fail", "absent"),
            counts=results,
            groups=groups,
            rng=rng,
            opendp=opendp,
        ),
        "employment": _answer(
            c,
            "employment_outcomes",
            group_by=("provider", "citizenship_group"),
            categories=emp_cats,
            counts=employment,
            groups=groups,
            rng=rng,
            opendp=opendp,
        ),
        "recognition_time": _answer(
            c,
            "recognition_decision_time",
            group_by=("citizenship_group",),
            categories=(*REC_CATEGORIES, "pending_within_limit", "pending_overdue"),
            counts=recognition,
            groups=by_cit,
            rng=rng,
            opendp=opendp,
        ),
        "recognition_decisions": _answer(
            c,
            "recognition_decisions",
            group_by=(),
            categories=("full", "partial", "rejected", "pending"),
            counts=decisions,
            groups=[()],
            rng=rng,
            opendp=opendp,
        ),
        "appeals": _answer(
            c,
            "appeal_outcomes",
            group_by=("subject_type",),
            categories=("upheld", "dismissed", "withdrawn", "pending"),
            counts=appeals,
            groups=[("assessment",), ("certificate",), ("recognition",)],
            rng=rng,
            opendp=opendp,
        ),
        "certificates": _answer(
            c,
            "certificates_issued",
            group_by=("provider",),
            categories=("training", "prior_learning", "reciprocity"),
            counts=certificates,
            groups=[(p,) for p in [*providers, "none"]],
            rng=rng,
            opendp=opendp,
        ),
        "earnings": _answer(
            c,
            "earnings_distribution",
            group_by=(),
            categories=(*EARNINGS, "not_reported"),
            counts=earnings,
            groups=[()],
            rng=rng,
            opendp=opendp,
        ),
    }


def _federation(
    seed: int, *munis: Municipality, opendp: bool = False
) -> dict[str, dict[str, Answer]]:
    rng = random.Random(seed)
    return {m.code: _node(m, rng, opendp) for m in munis}


def _clean(n_per_provider: int = 600) -> list[Municipality]:
    return [Municipality(f"M0{i}", n_per_provider=n_per_provider) for i in range(1, 6)]


def _flagged(ev: Evaluation, kind: str) -> set[tuple[str, str | None, str | None]]:
    return {
        (f.subject.municipality, f.subject.provider_id, f.subject.group)
        for f in ev.findings
        if f.kind == kind
    }


CLEAN_AUDITS = 20
TESTS_PER_CLEAN_AUDIT = (5 + 25) * 3 + 5 + 5 + 5 * 2  # pass, emp, inflation; rec; appeals; disp
FLAGGED_AT_MOST = 6
"""Audits with a finding among CLEAN_AUDITS clean ones that a correct audit may show.

Each audit's error control keeps P(any finding | clean) <= 5%, so the count is at most
Binomial(20, 0.05) in distribution: P(X >= 7) = 3.4e-5 <= 1e-4 (scipy.stats.binom).
Simulated once (scripts/calibrate_dp_audit.py --clean 400): no clean audit with OpenDP
noise flagged at the plan's tolerances (0 of 400), 14 of 400 (3.5%) at tolerance 0.001."""
TINY_TOLERANCE_CHECKS = (
    "pass_rates",
    "employment",
    "credential_inflation",
    "recognition",
    "appeals",
    "outcome_disparity",
)


def _fresh_seed() -> int:
    """A seed for the sampling; printed, and named in every failure message."""
    seed = random.SystemRandom().randrange(2**31)
    print(f"clean federation seeds {seed}..{seed + CLEAN_AUDITS - 1} (noise: OpenDP, unseeded)")
    return seed


@pytest.fixture(scope="module", name="clean_federations")
def _clean_federations() -> dict[int, dict[str, dict[str, Answer]]]:
    """CLEAN_AUDITS clean federations with fresh sampling seeds and the nodes' OpenDP noise."""
    seed = _fresh_seed()
    return {s: _federation(s, *_clean(), opendp=True) for s in range(seed, seed + CLEAN_AUDITS)}


@pytest.fixture(scope="module", name="clean_audits")
def _clean_audits(clean_federations) -> dict[int, Evaluation]:
    plan = _plan()
    return {s: evaluate(plan, fed) for s, fed in clean_federations.items()}


@pytest.mark.slow
def test_clean_federation_findings_stay_within_the_stated_error_rate(clean_audits):
    """At most FLAGGED_AT_MOST of 20 clean audits flag (false-failure rate 3.4e-5, see above)."""
    flagged = {
        seed: [f.summary for f in ev.findings] for seed, ev in clean_audits.items() if ev.findings
    }
    for ev in clean_audits.values():
        assert ev.error_control.tests == TESTS_PER_CLEAN_AUDIT
    print(f"{len(flagged)} of {CLEAN_AUDITS} clean audits flagged")
    assert len(flagged) <= FLAGGED_AT_MOST, flagged


SHARE_MEAN, SHARE_SD = 0.0494, 0.0266
MEAN_Z_MEAN, MEAN_Z_SD = 0.0131, 0.0283
SIMULATED = 400
"""Per clean audit (110 tests, OpenDP noise): mean and sd of the share of |z| > 1.96 and of
the mean z, from 400 simulated audits (scripts/calibrate_dp_audit.py --clean 400; the mean
z is slightly positive, 0.0131 +- 0.0014, a small bias of the gap estimates)."""
Z_BOUND = 4.0
"""Two-sided normal bound on the mean of 20 audits, 6.3e-5 per statistic; the sds get 10%
and the simulated means 3 of their standard errors as allowance for being estimates."""


def _allowed(sd: float, n: int) -> float:
    return Z_BOUND * 1.1 * sd / n**0.5 + 3 * sd / SIMULATED**0.5


@pytest.mark.slow
def test_clean_federation_intervals_are_calibrated(clean_audits):
    """Unadjusted, about 5% of clean tests exceed 1.96 sd: the variances are honest.

    Too many would mean understated uncertainty (false findings), too few overstated
    (a clean audit that cannot find anything). Bounds from the statistic's own
    distribution (above): false-failure rate below 1e-4 for the two together.
    """
    shares, means = [], []
    for ev in clean_audits.values():
        z = [t.gap / t.gap_var**0.5 for t in ev.tests]
        shares.append(sum(abs(x) > 1.96 for x in z) / len(z))
        means.append(statistics.fmean(z))
    share, mean_z = statistics.fmean(shares), statistics.fmean(means)
    n = len(shares)
    share_bound, mean_bound = _allowed(SHARE_SD, n), _allowed(MEAN_Z_SD, n)
    seeds = f"seeds {min(clean_audits)}..{max(clean_audits)}"
    print(
        f"share |z|>1.96 {share:.4f} (allowed {SHARE_MEAN:.4f} +- {share_bound:.4f}); "
        f"mean z {mean_z:.4f} (allowed {MEAN_Z_MEAN:.4f} +- {mean_bound:.4f})"
    )
    assert abs(share - SHARE_MEAN) <= share_bound, (share, seeds)
    assert abs(mean_z - MEAN_Z_MEAN) <= mean_bound, (mean_z, seeds)


@pytest.mark.slow
def test_bonferroni_controls_false_findings_even_at_a_tiny_tolerance(clean_federations):
    """With tolerance ~0 every true-zero gap is a null: still at most FLAGGED_AT_MOST of 20
    clean audits may flag (the error control's 5%; false-failure rate 3.4e-5)."""
    tiny = {"tolerance": 0.001}
    plan = _plan(**dict.fromkeys(TINY_TOLERANCE_CHECKS, tiny))
    flagged = [s for s, fed in clean_federations.items() if evaluate(plan, fed).findings]
    print(f"tolerance 0.001: {len(flagged)} of {CLEAN_AUDITS} clean audits flagged")
    assert len(flagged) <= FLAGGED_AT_MOST, ("flagged seeds", flagged)


def test_error_control_uses_holm_over_all_tests():
    """Holm over m = tests performed: the first step at alpha/m, intervals at each test's step."""
    ev = evaluate(_plan(), _federation(1, *_clean()))
    control = ev.error_control
    m = control.tests
    assert m == len(ev.tests) == TESTS_PER_CLEAN_AUDIT
    assert control.method == "holm"
    assert control.per_test_confidence == pytest.approx(1 - 0.05 / m)
    assert control.z == pytest.approx(statistics.NormalDist().inv_cdf(1 - 0.05 / (2 * m)))
    # A clean audit flags nothing, so Holm stops at its first step: every test at alpha/m.
    assert control.flagged == 0
    assert control.test_z == pytest.approx([control.z] * m)
    tested = [mt for mt in ev.metrics if mt.tested]
    assert len(tested) == sum(1 for t in ev.tests if t.kind != "credential_inflation")
    metric = tested[0]
    half = (metric.ci[1] - metric.ci[0]) / 2
    assert half == pytest.approx(control.z * metric.value.var**0.5, rel=1e-9)
    assert "Holm" in control.description
    assert f"{m} tests" in control.description


def test_holm_steps_follow_the_textbook_procedure():
    """p = (0.01, 0.04, 0.03, 0.005) at alpha 0.05: steps 0.0125, 0.0167, 0.025 (stop)."""
    from fedaudit.coordinator.statistics.error_control import holm_steps

    levels, flagged = holm_steps([0.01, 0.04, 0.03, 0.005], 0.05)
    assert flagged == 2  # 0.005 < 0.0125, 0.01 < 0.0167, 0.03 >= 0.025: stop
    assert levels == pytest.approx([0.05 / 3, 0.05 / 2, 0.05 / 2, 0.05 / 4])
    # Bonferroni (0.0125 for all) would flag only 0.005.
    assert holm_steps([0.001, 0.002, 0.003], 0.05)[1] == 3
    assert holm_steps([], 0.05) == ([], 0)


def test_holm_finds_every_bonferroni_finding_and_states_its_step(planted):
    """Never less power: each test Bonferroni flags, Holm flags too, at a z no larger."""
    from fedaudit.coordinator.statistics.error_control import bonferroni

    base = bonferroni(_plan(), len(planted.tests), planted.metrics)
    by_bonferroni = {i for i, t in enumerate(planted.tests) if t.severity(base.z) is not None}
    control = planted.error_control
    by_holm = {i for i, t in enumerate(planted.tests) if t.severity(control.z_of(i)) is not None}
    assert by_bonferroni <= by_holm
    assert len(by_holm) == control.flagged == len(planted.findings)
    assert all(control.z_of(i) <= base.z + 1e-12 for i in range(len(planted.tests)))


def _planted() -> list[Municipality]:
    m1, m2, m3, m4, m5 = _clean()
    m1.foreign_pass = 0.60
    m1.pass_rate = 0.90
    m2.employment = 0.55
    m3.providers["P-M03-2"] = (0.99, 0.45)
    m4.late_share = 0.60
    m5.upheld = 0.50
    return [m1, m2, m3, m4, m5]


@pytest.fixture(scope="module", name="planted")
def _planted_evaluation() -> Evaluation:
    return evaluate(_plan(), _federation(2024, *_planted()))


def test_planted_employment_gap_is_found_for_that_municipality_only(planted):
    """M02 at 55% employment vs 80%: flagged, and no other municipality is."""
    munis = {m for m, p, g in _flagged(planted, "employment_gap") if p is None and g is None}
    assert munis == {"M02"}
    finding = next(
        f
        for f in planted.findings
        if f.kind == "employment_gap" and f.subject.provider_id is None and f.subject.group is None
    )
    assert finding.gap_ci[1] < -0.10
    assert finding.severity == ("critical" if finding.gap_ci[1] < -0.20 else "warning")
    assert finding.reference.description == "rest of region (M01, M03, M04, M05)"
    assert finding.summary.startswith("Employment 12 months after certification in M02 is 5")
    assert "below the rest of the region" in finding.summary
    # its own providers share the gap; providers elsewhere do not
    providers = {p for m, p, g in _flagged(planted, "employment_gap") if p is not None}
    assert providers - {f"P-M02-{i}" for i in range(1, 6)} == {"P-M03-2"}


def test_planted_credential_inflation_is_found_for_the_provider(planted):
    """P-M03-2 passes 99% but employs 45%: credential inflation and a pass-rate gap."""
    assert ("M03", "P-M03-2", None) in _flagged(planted, "credential_inflation")
    assert ("M03", "P-M03-2", None) in _flagged(planted, "pass_rate_gap")
    # M02 and its providers employ few people at an ordinary pass rate: an employment
    # gap, not inflation. Only the provider that passes more than it places is flagged.
    assert _flagged(planted, "credential_inflation") == {("M03", "P-M03-2", None)}
    finding = next(
        f
        for f in planted.findings
        if f.kind == "credential_inflation" and f.subject.provider_id == "P-M03-2"
    )
    assert finding.gap_ci[0] > 0.15
    assert "more people pass than the job outcomes justify" in finding.summary
    assert "points above" in finding.summary
    assert "points below" in finding.summary


def test_low_employment_at_an_ordinary_pass_rate_is_not_credential_inflation():
    """Issue 11: 84% passing against 86% and 48% employed against 79% is an employment gap.

    The old test ("pass gap minus employment gap" beyond the tolerance) flagged it as
    credential inflation; inflation needs the pass rate above its reference too.
    """
    munis = _clean(n_per_provider=1200)
    munis[1].pass_rate, munis[1].employment = 0.84, 0.48
    ev = evaluate(_plan(), _federation(11, *munis))
    assert _flagged(ev, "credential_inflation") == set()
    assert ("M02", None, None) in _flagged(ev, "employment_gap")
    spread = next(
        t
        for t in ev.tests
        if t.kind == "credential_inflation" and t.subject.municipality == "M02"
        if t.subject.provider_id is None
    )
    # The spread alone is far beyond the tolerance: it is the pass-rate condition that fails.
    assert spread.gap > 0.25
    assert spread.also[0].name == "pass_rate_above_reference"
    assert spread.also[0].distance() < 0


def test_credential_inflation_needs_each_part_beyond_its_own_interval():
    """A high pass rate with ordinary employment is a pass-rate gap, not inflation; both is."""
    munis = _clean(n_per_provider=1200)
    munis[2].pass_rate = 0.97  # passes more, places as many: no inflation
    munis[3].pass_rate, munis[3].employment = 0.97, 0.62  # both: inflation
    ev = evaluate(_plan(), _federation(12, *munis))
    flagged = {m for m, p, _ in _flagged(ev, "credential_inflation") if p is None}
    assert flagged == {"M04"}
    m03 = next(
        t
        for t in ev.tests
        if t.kind == "credential_inflation" and t.subject.municipality == "M03"
        if t.subject.provider_id is None
    )
    assert m03.also[0].distance() > 3  # the pass rate is clearly above its reference...
    assert m03.also[1].distance() < 0  # ...but employment is not below its own


def test_planted_recognition_delay_is_found(planted):
    """M04 decides 60% late vs 10% elsewhere."""
    assert _flagged(planted, "recognition_delay") == {("M04", None, None)}


def test_planted_outcome_disparity_is_found(planted):
    """Foreign candidates in M01 pass at 60% vs 90% for nationals."""
    flagged = _flagged(planted, "outcome_disparity")
    assert ("M01", None, "citizenship_group=foreign") in flagged
    assert {m for m, _, _ in flagged} == {"M01"}
    finding = next(
        f
        for f in planted.findings
        if f.kind == "outcome_disparity" and f.subject.group == "citizenship_group=foreign"
    )
    assert finding.metric == "pass_rate"
    assert finding.reference.description == "national candidates in M01"
    assert "foreign candidates" in finding.summary


def test_planted_appeal_anomaly_is_found(planted):
    """M05 upholds 50% of appeals vs 15% elsewhere."""
    assert _flagged(planted, "appeal_anomaly") == {("M05", None, None)}


def test_planted_pass_rate_gaps_stay_with_the_planted_subjects(planted):
    """No municipality-level pass-rate finding where nothing was planted."""
    munis = {m for m, p, g in _flagged(planted, "pass_rate_gap") if p is None}
    assert munis <= {"M01"}  # M01's mix (90% national, 60% foreign) is near the region


def test_gap_smaller_than_tolerance_is_not_flagged():
    """A real 6-point employment gap (interval excludes 0) stays below the 10-point tolerance."""
    munis = _clean(n_per_provider=3000)
    munis[2].employment = 0.74
    ev = evaluate(_plan(), _federation(5, *munis))
    test = next(
        t
        for t in ev.tests
        if t.kind == "employment_gap"
        and t.subject == replace(t.subject, municipality="M03")
        and t.subject.provider_id is None
        and t.subject.group is None
    )
    _, high = test.gap_interval(ev.error_control.z)
    assert high < 0  # the gap is real...
    assert high > -0.10  # ...but within tolerance
    assert ev.findings == ()


@pytest.mark.parametrize(("employment", "severity"), [(0.65, "warning"), (0.50, "critical")])
def test_severity_follows_twice_the_tolerance(employment, severity):
    """An interval beyond the 10-point tolerance is a warning; beyond 20 points, critical."""
    munis = _clean(n_per_provider=3000)
    munis[0].employment = employment
    ev = evaluate(_plan(), _federation(9, *munis))
    found = {
        f.subject.municipality: f.severity
        for f in ev.findings
        if f.kind == "employment_gap" and f.subject.provider_id is None
    }
    assert found == {"M01": severity}


def _suppress(answer: Answer, predicate) -> Answer:
    cells = tuple(
        replace(c, estimate=0, suppressed=True) if predicate(c) else c for c in answer.cells
    )
    return replace(answer, cells=cells)


def test_suppressed_cells_are_missing_not_zero():
    """A withheld cell drops its whole row from the rate; a fully withheld subject is skipped."""
    answers = _federation(3, *_clean())
    original = answers["M01"]["pass_rates"]
    answers["M01"]["pass_rates"] = _suppress(
        original,
        lambda c: (
            (c.keys == ("P-M01-1", "foreign") and c.category == "pass") or c.keys[0] == "P-M01-2"
        ),
    )
    ev = evaluate(_plan(), answers)

    def kept(c: Cell) -> bool:
        return c.keys != ("P-M01-1", "foreign") and c.keys[0] != "P-M01-2"

    passed = sum(c.estimate for c in original.cells if kept(c) and c.category == "pass")
    failed = sum(c.estimate for c in original.cells if kept(c) and c.category == "fail")
    foreign_fail = sum(
        c.estimate
        for c in original.cells
        if c.keys == ("P-M01-1", "foreign") and c.category == "fail"
    )
    muni = next(
        m
        for m in ev.metrics
        if m.metric == "pass_rate"
        and m.subject.municipality == "M01"
        and m.subject.provider_id is None
        and m.subject.group is None
    )
    assert muni.denominator == pytest.approx(passed + failed)
    assert muni.value.value == pytest.approx(passed / (passed + failed))
    as_zero = passed / (passed + failed + foreign_fail)  # what zero-filling would give
    assert abs(muni.value.value - as_zero) > 1e-3
    assert "withheld" in muni.note
    provider_metrics = [
        m for m in ev.metrics if m.metric == "pass_rate" and m.subject.provider_id == "P-M01-2"
    ]
    assert provider_metrics == []
    assert any("P-M01-2" in s and "withheld" in s for s in ev.skipped)
    assert ev.findings == ()


def test_missing_node_answers_pool_the_remaining_nodes():
    """Without M03 (and M02's employment) the audit runs and references name their nodes."""
    munis = _clean()
    munis[3].employment = 0.55
    answers = _federation(4, *munis)
    del answers["M03"]
    del answers["M02"]["employment"]
    ev = evaluate(_plan(), answers)
    assert not any(m.subject.municipality == "M03" for m in ev.metrics)
    refs = {
        (m.metric, m.subject.municipality): m.reference.description
        for m in ev.metrics
        if m.reference is not None and m.subject.provider_id is None and m.subject.group is None
    }
    assert refs[("pass_rate", "M01")] == "rest of region (M02, M04, M05)"
    assert refs[("employment_rate_12m", "M01")] == "rest of region (M04, M05)"
    assert ("employment_rate_12m", "M02") not in refs
    assert ev.error_control.tests == (4 + 20) + (3 + 15) * 2 + 4 + 4 + 4 + 3
    assert {m for m, p, g in _flagged(ev, "employment_gap") if p is None and g is None} == {"M04"}


def test_small_subjects_are_reported_but_not_tested():
    """Below min_denominator a subject is a metric with a note, not one of the m tests."""
    munis = _clean()
    ev_small = evaluate(_plan(), _federation(6, *munis))
    plan = parse_plan({**json.loads(json.dumps(PLAN)), "min_denominator": 300}, source="t")
    ev = evaluate(plan, _federation(6, *munis))
    # appeals (~190 decided per town) fall below 300; everything else stays above
    assert ev.error_control.tests == ev_small.error_control.tests - 5
    appeal = next(m for m in ev.metrics if m.metric == "appeal_upheld_rate")
    assert not appeal.tested
    assert appeal.note.startswith("not tested: fewer than 300 in the denominator")
    assert "reported but not tested" in ev.error_control.description


def _schema() -> dict[str, Any]:
    path = Path(__file__).resolve().parents[1] / "audit_reports" / "report.schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_report_parts_match_the_report_schema(planted):
    """findings, metrics and error_control validate against report.schema.json."""
    schema = _schema()
    parts = planted.to_report_parts()
    for name, ref in (("findings", "finding"), ("metrics", "metric")):
        validator = Draft202012Validator(
            {"$defs": schema["$defs"], "type": "array", "items": {"$ref": f"#/$defs/{ref}"}}
        )
        errors = [e.message for e in validator.iter_errors(parts[name])]
        assert errors == [], (name, errors[:3])
    validator = Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/errorControl"})
    assert [e.message for e in validator.iter_errors(parts["error_control"])] == []
    assert [f["id"] for f in parts["findings"]][:2] == ["F001", "F002"]
    kinds = {m["metric"] for m in parts["metrics"]}
    assert {
        "pass_rate",
        "employment_rate_12m",
        "in_field_rate_12m",
        "recognition_on_time_share",
        "recognition_late_share",
        "recognition_d0_30",
        "recognition_median_days",
        "recognition_full_share",
        "appeal_upheld_rate",
        "certificates_reciprocity",
        "certificates_reciprocity_share",
        "earnings_1500_1999_12m",
        "earnings_median_12m",
    } <= kinds


def test_earnings_median_is_near_the_simulated_one(planted):
    """The noisy-CDF median lands in the bin the simulated distribution puts it in."""
    medians = [m for m in planted.metrics if m.metric == "earnings_median_12m"]
    assert len(medians) == 5
    for m in medians:
        assert 1500 <= m.value.value < 2500
        assert m.ci[0] <= m.value.value <= m.ci[1]
        assert m.unit == "currency"


def _noise_only(answer: Answer, seed: int) -> Answer:
    """The answer a node gives when it holds no such records: every cell is noise."""
    rng = random.Random(seed)
    return replace(answer, cells=tuple(replace(c, estimate=_noise(rng)) for c in answer.cells))


def test_absent_data_are_not_assessable_instead_of_noise():
    """Issue 11: no employment outcomes at the horizon (M03) and no appeals (M05) are said
    to be not assessable, with the reason; they add no noisy metric and no reference."""
    fed = _federation(21, *_clean())
    fed["M03"]["employment"] = _noise_only(fed["M03"]["employment"], 1)
    fed["M05"]["appeals"] = _noise_only(fed["M05"]["appeals"], 2)
    ev = evaluate(_plan(), fed)
    na = {(n.check, n.subject.municipality): n.reason for n in ev.not_assessable}
    assert set(na) == {
        ("employment", "M03"),
        ("credential_inflation", "M03"),
        ("appeals", "M05"),
    }
    assert na[("employment", "M03")].startswith(
        "no employment outcomes 12 months after certification recorded at this node"
    )
    assert na[("appeals", "M05")].startswith("no decided appeals recorded at this node")
    assert not [
        m
        for m in ev.metrics
        if m.subject.municipality == "M03" and m.metric.startswith(("employment", "in_field"))
    ]
    refs = [
        m.reference.description
        for m in ev.metrics
        if m.reference
        and "rest of region" in m.reference.description
        and m.metric.startswith("employment")
    ]
    assert refs
    assert all("M03" not in r for r in refs)
    assert ev.findings == ()
    parts = ev.to_report_parts()
    assert {(n["check"], n["where"]) for n in parts["not_assessable"]} >= {("employment", "in M03")}


def test_present_data_are_assessable_everywhere(planted):
    """A federation whose nodes hold every kind of record has nothing not assessable."""
    assert planted.not_assessable == ()
