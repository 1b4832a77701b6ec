"""What an audit plan can detect, before it spends anything: the minimum detectable gap.

`fedaudit audit preview PLAN` asks each node for a free preflight of every query (the
noise it would add per cell and how many cells it would release) and computes, per check
and subject size, the smallest true gap the audit finds with 80% probability at the
plan's confidence, and the same for a central analysis without privacy noise (sampling
error only). Their ratio is the price of privacy for that check.

The model is the one the statistics use (`statistics.estimates`): a rate r = A / N
from two noisy sums has variance r (1 - r) / N (sampling) plus
(nA (1 - r)^2 + nB r^2) v / N^2 (noise; nA and nB cells of variance v summed into the
numerator and the rest). A subject is compared with a reference pooled from the other
subjects, so the gap's variance adds the reference's. A gap is flagged when its interval
at the audit's per-test level lies beyond the tolerance, so with z the Bonferroni z (Holm's
first and strictest step) the minimum detectable gap is

    tolerance + (z + z_power) * sd(gap),    z_power = 0.84 for 80% power.

Assumptions, printed with the figures: the subject's rate is the check's typical rate
(`BASELINES`); a municipality's reference is the other nodes, each the subject's size;
a provider's reference is the region's other providers, `PROVIDERS_PER_NODE` per node,
each the subject's size; the number of tests is estimated for that many providers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from fedaudit.coordinator.planning import checks as q
from fedaudit.coordinator.planning.plan import AuditPlan

POWER = 0.8
PROVIDERS_PER_NODE = 5
KEY_COUNTS = {"citizenship_group": 3, "sex": 4}
"""Public keys of the grouping dimensions besides provider (the catalogue's key lists)."""


@dataclass(frozen=True)
class CheckModel:
    """How a check's rate is formed from its query's cells."""

    check: str
    key: str
    label: str
    categories: int
    numerator_cells: int
    rest_cells: int
    baseline: float
    providers: bool


MODELS: tuple[CheckModel, ...] = (
    CheckModel("pass_rates", q.KEY_PASS_RATES, "pass rate", 3, 1, 1, 0.85, True),
    CheckModel("employment", q.KEY_EMPLOYMENT, "employment", 4, 2, 1, 0.80, True),
    CheckModel("recognition", q.KEY_RECOGNITION_TIME, "late recognitions", 9, 5, 4, 0.15, False),
    CheckModel("appeals", q.KEY_APPEALS, "appeals upheld", 4, 1, 1, 0.20, False),
)
BASELINES = {m.check: m.baseline for m in MODELS}


@dataclass(frozen=True)
class QueryNoise:
    """What a node's preflight says about one query: noise variance per cell, cells released."""

    variance: float
    cells: int


@dataclass(frozen=True)
class Detectable:
    """The minimum detectable gap for one check, subject kind and size."""

    check: str
    label: str
    subject: str
    size: int
    tolerance: float
    with_noise: float
    without_noise: float

    @property
    def ratio(self) -> float:
        """How much larger the statistical margin is with privacy noise than without."""
        margin = self.without_noise - self.tolerance
        return (self.with_noise - self.tolerance) / margin if margin > 0 else math.inf


def estimated_tests(plan: AuditPlan, nodes: int) -> int:
    """The number of tests of a full audit, with `PROVIDERS_PER_NODE` providers a node."""
    c = plan.checks
    per_node = 0
    outcome_subjects = 1 + PROVIDERS_PER_NODE
    per_node += outcome_subjects * (c.pass_rates is not None)
    per_node += outcome_subjects * (c.employment is not None)
    per_node += outcome_subjects * (
        c.credential_inflation is not None and c.pass_rates is not None and c.employment is not None
    )
    per_node += c.recognition is not None
    per_node += c.appeals is not None
    if c.outcome_disparity is not None:
        outcomes = (c.pass_rates is not None) + (c.employment is not None)
        per_node += len(c.outcome_disparity.by) * outcomes
    return max(1, per_node * nodes)


def _rate_var(n: float, r: float, num_cells: int, rest_cells: int, v: float) -> tuple[float, float]:
    """(sampling, noise) variance of a rate over n units from the given cells."""
    sampling = r * (1 - r) / n
    noise = (num_cells * (1 - r) ** 2 + rest_cells * r * r) * v / (n * n)
    return sampling, noise


def detectable_gaps(
    plan: AuditPlan,
    noise: Mapping[str, QueryNoise],
    *,
    nodes: int,
    sizes: Sequence[int],
    ring: bool = False,
) -> list[Detectable]:
    """Per check in the plan and subject size, the minimum detectable gap with and without noise.

    `noise` maps a planned query key to the (largest over the nodes) noise of that query.
    `ring` halves the error budget, as the audit does when the blinding ring runs.
    """
    alpha = (1.0 - plan.confidence) * (0.5 if ring else 1.0)
    m = estimated_tests(plan, nodes)
    z = NormalDist().inv_cdf(1 - alpha / (2 * m)) + NormalDist().inv_cdf(POWER)
    out: list[Detectable] = []
    tolerances = plan.tolerances()
    kinds = {
        "pass_rates": "pass_rate_gap",
        "employment": "employment_gap",
        "recognition": "recognition_delay",
        "appeals": "appeal_anomaly",
    }
    for model in MODELS:
        if getattr(plan.checks, model.check) is None or model.key not in noise:
            continue
        qn = noise[model.key]
        rows_node = max(1, qn.cells // model.categories)
        other = 1
        for dim in q.outcome_group_by(plan):
            other *= KEY_COUNTS.get(dim, 1)
        subjects = [("municipality", rows_node, max(1, nodes - 1))]
        if model.providers:
            subjects.append(("provider", other, max(1, nodes * PROVIDERS_PER_NODE - 1)))
        tol = tolerances[kinds[model.check]]
        for kind, rows, ref_multiple in subjects:
            for n in sizes:
                s_sub, v_sub = _rate_var(
                    n,
                    model.baseline,
                    rows * model.numerator_cells,
                    rows * model.rest_cells,
                    qn.variance,
                )
                ref_n = n * ref_multiple
                s_ref, v_ref = _rate_var(
                    ref_n,
                    model.baseline,
                    rows * ref_multiple * model.numerator_cells,
                    rows * ref_multiple * model.rest_cells,
                    qn.variance,
                )
                with_noise = tol + z * math.sqrt(s_sub + v_sub + s_ref + v_ref)
                without = tol + z * math.sqrt(s_sub + s_ref)
                out.append(Detectable(model.check, model.label, kind, n, tol, with_noise, without))
    return out


__all__ = [
    "BASELINES",
    "MODELS",
    "PROVIDERS_PER_NODE",
    "Detectable",
    "QueryNoise",
    "detectable_gaps",
    "estimated_tests",
]
