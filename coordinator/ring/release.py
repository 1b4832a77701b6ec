"""The DP releases of the ring's counts: sensitivities, the coordinator's budget, noise.

Exact counts (`fedaudit.coordinator.ring.counting`) become noisy vectors here and
nowhere else (OpenDP, via `fedaudit.common.mechanisms`), with sensitivities derived
from the number of keys m and the per-person bound R (see `sensitivities`), each
release charged to the run's budget before anything is drawn. What was charged is
summarised for the report's privacy section by `privacy_summary`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedaudit.common.mechanisms import add_noise, plan_noise
from fedaudit.coordinator.errors import CoordinatorError
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.ring.config import DedupConfig
from fedaudit.coordinator.ring.counting import DedupCounts
from fedaudit.coordinator.ring.significance import Branch, CountTest, Decision, decide
from fedaudit.node.domain import Mechanism


@dataclass(frozen=True)
class Sensitivity:
    l1: int
    l2: int


def sensitivities(keys: int, bound: int, nodes: int) -> dict[str, Sensitivity]:
    """Sensitivity of each release to adding or removing one person, across every node.

    The privacy unit is the person with up to R = `bound` person rows (and R
    certificate rows of each side) at each of up to N = `nodes` nodes, each person
    row carrying m = `keys` identity tokens: P = R*N rows and T = P*m tokens in all.
    Removing a set S of rows from a union-find component leaves at most as many
    pieces as S has distinct tokens shared with the rest (each piece touched S
    through a token, and rows sharing a token stay together). A counted component
    therefore turns into at most h of its tokens' pieces (change <= h - 1), and any
    component loses at most 1; summed over the components S touches (at most P, with
    at most T tokens between them), one count moves by at most

        C = max(P, T - 1)

    This is what a person bridging several clusters with spelling variants does
    (issue 9: Anna/Ana Berger/Bergmann at three nodes); the older bound R*max(1, m-1)
    assumed the person sits at one node. Derivation in docs/dedup.md.

    Per cell: duplicated per occupation and the shopping count C; the overlap
    histogram loses one cell and gains the pieces (P + T); pairwise counts move by at
    most C in each of the N(N-1)/2 pairs, per-municipality shopping by C in each of N
    municipalities. Certificates: a person's R*N revoked and R*N recognised rows each
    change at most one match (2RN overall); per (recognising, revoking) pair at most
    2R, over N(N-1) pairs, and R*N*(N-1) + R*N in L1.
    """
    m, r, n = keys, bound, nodes
    rows = r * n
    c = max(rows, rows * m - 1)
    pairs = n * (n - 1) // 2
    overlap = rows + rows * m
    revoked_l1 = r * n * n
    return {
        "dup_overall": Sensitivity(c, c),
        "dup_per_occupation": Sensitivity(c, c),
        "overlap": Sensitivity(overlap, overlap),
        "pairwise": Sensitivity(c * pairs, math.ceil(c * math.sqrt(pairs))),
        "shopping_overall": Sensitivity(c, c),
        "shopping_by_passing": Sensitivity(c * n, math.ceil(c * math.sqrt(n))),
        "revoked_overall": Sensitivity(2 * r * n, 2 * r * n),
        "revoked_by_pair": Sensitivity(
            revoked_l1, min(revoked_l1, math.ceil(2 * r * math.sqrt(n * (n - 1))))
        ),
    }


@dataclass(frozen=True)
class Release:
    name: str
    values: list[int]
    half_width: float
    scale: float
    rho: float
    epsilon: float | None
    sensitivity: int


class CoordinatorBudget:
    """The privacy budget the coordinator keeps for its own releases (a cap, charged in rho)."""

    def __init__(self, rho_cap: float) -> None:
        self.rho_cap = rho_cap
        self.charged: list[tuple[str, float, float | None]] = []

    @property
    def rho_spent(self) -> float:
        return math.fsum(r for _, r, _ in self.charged)

    def charge(self, name: str, rho: float, epsilon: float | None) -> None:
        if self.rho_spent + rho > self.rho_cap * (1 + 1e-9):
            raise CoordinatorError(
                f"release {name!r} (rho={rho:.4g}) exceeds the coordinator's budget "
                f"({self.rho_cap - self.rho_spent:.4g} of {self.rho_cap:.4g} left)"
            )
        self.charged.append((name, rho, epsilon))


def release(
    name: str,
    values: Sequence[int],
    sens: Sensitivity,
    mechanism: Mechanism,
    *,
    rho: float | None,
    epsilon: float | None,
    confidence: float,
    budget: CoordinatorBudget,
) -> Release:
    """Noisy `values` (OpenDP), charged to `budget` before anything is drawn."""
    gaussian = mechanism is Mechanism.DISCRETE_GAUSSIAN
    noise, charge = plan_noise(
        mechanism,
        rho=rho,
        epsilon=epsilon,
        sensitivity=sens.l2 if gaussian else sens.l1,
        confidence=confidence,
    )
    budget.charge(name, charge.rho, charge.epsilon)
    return Release(
        name=name,
        values=add_noise(noise, list(values)),
        half_width=noise.ci_half_width,
        scale=noise.scale,
        rho=charge.rho,
        epsilon=charge.epsilon,
        sensitivity=sens.l2 if gaussian else sens.l1,
    )


BREAKDOWNS: dict[str, tuple[str, ...]] = {
    "dup_overall": ("pairwise", "dup_per_occupation"),
    "shopping_overall": ("shopping_by_passing",),
    "revoked_overall": ("revoked_by_pair",),
}
"""Per region-wide count, the breakdowns that locate it (tested only once it is a finding)."""


@dataclass(frozen=True)
class Releases:
    """Every noisy vector of one run, the budget they were charged to, and the tests."""

    values: dict[str, Release]
    budget: CoordinatorBudget
    confidence: float
    """The confidence of the region-wide tests (each branch's share of the error budget)."""
    tests: int
    decisions: dict[tuple[str, int], Decision] = field(default_factory=dict)
    """(release, cell) -> how the count was decided (`significance.decide`)."""
    alpha: float = 0.05
    """The ring's share of the audit's error budget (all its tests together)."""
    mechanism: Mechanism = Mechanism.DISCRETE_GAUSSIAN
    """The mechanism of every release of the run."""


def decide_counts(releases: dict[str, Release], mechanism: Mechanism, alpha: float) -> dict:
    """Decide every tested count of the run at the ring's error budget `alpha`."""
    branches = []
    for overall, parts in BREAKDOWNS.items():
        if overall not in releases:
            continue

        def tests(name: str) -> list[CountTest]:
            r = releases[name]
            return [
                CountTest(name, i, float(v), r.scale, mechanism) for i, v in enumerate(r.values)
            ]

        cells = [t for name in parts if name in releases for t in tests(name)]
        branches.append(Branch(tests(overall)[0], tuple(cells)))
    return decide(branches, alpha)


def unordered_pairs(municipalities: Sequence[str]) -> list[tuple[str, str]]:
    """Each pair of municipalities once, in ring order (the `pairwise` cells)."""
    n = len(municipalities)
    return [(municipalities[i], municipalities[j]) for i in range(n) for j in range(i + 1, n)]


def ordered_pairs(municipalities: Sequence[str]) -> list[tuple[str, str]]:
    """(recognising, revoking) pairs of distinct municipalities (the `revoked_by_pair` cells)."""
    return [(b, a) for b in municipalities for a in municipalities if a != b]


def count_vectors(
    counts: DedupCounts,
    municipalities: Sequence[str],
    occupations: Sequence[str],
    *,
    shopping: bool,
    revoked: bool,
) -> dict[str, list[int]]:
    """The exact vectors each release adds noise to, cell order fixed by the arguments."""
    munis = municipalities
    n = len(munis)
    vectors: dict[str, list[int]] = {
        "dup_overall": [counts.duplicated],
        "dup_per_occupation": [counts.per_occupation.get(o, 0) for o in occupations],
        "overlap": [counts.overlap.get(k, 0) for k in range(2, n + 1)],
        "pairwise": [counts.pairwise.get(p, 0) for p in unordered_pairs(munis)],
    }
    if shopping:
        vectors["shopping_overall"] = [counts.shopping]
        vectors["shopping_by_passing"] = [counts.shopping_by_passing.get(m, 0) for m in munis]
    if revoked:
        vectors["revoked_overall"] = [counts.revoked]
        vectors["revoked_by_pair"] = [
            counts.revoked_by_pair.get(p, 0) for p in ordered_pairs(munis)
        ]
    return vectors


def release_counts(
    plan: AuditPlan,
    config: DedupConfig,
    municipalities: Sequence[str],
    counts: DedupCounts,
    per_test_confidence: float | None,
) -> Releases:
    """Release every count of the run with DP, splitting the check's budget between them."""
    munis = municipalities
    n = len(munis)
    occs = counts.occupations
    # Region-wide counts are tested first, each at its share of the error budget; their
    # breakdowns (per pair, occupation, municipality) only once the region-wide count is a
    # finding (gatekeeping, `significance`), so locating a finding costs it no power.
    branches = 1 + int(config.shopping) + int(config.revoked)
    alpha = (1.0 - per_test_confidence) * branches if per_test_confidence else 1 - plan.confidence
    confidence = 1.0 - alpha / branches
    sens = sensitivities(len(config.keys), config.bound, n)
    vectors = count_vectors(counts, munis, occs, shopping=config.shopping, revoked=config.revoked)
    gaussian = plan.mechanism is Mechanism.DISCRETE_GAUSSIAN
    budget = CoordinatorBudget(
        config.rho if gaussian and config.rho else (config.epsilon or 0.0) ** 2 / 2
    )
    # The tested overall counts get three shares of the budget each, the breakdowns one.
    weights = {name: 3.0 if name.endswith("_overall") else 1.0 for name in vectors}
    total_weight = math.fsum(weights.values())
    if not gaussian:
        # Pure-DP releases compose linearly in epsilon; the cap is on their rho images.
        budget.rho_cap = math.fsum(
            ((config.epsilon or 0.0) * w / total_weight) ** 2 / 2 for w in weights.values()
        )
    released: dict[str, Release] = {}
    for name, values in vectors.items():
        share = weights[name] / total_weight
        released[name] = release(
            name,
            values,
            sens[name],
            plan.mechanism,
            rho=config.rho * share if gaussian and config.rho else None,
            epsilon=None if gaussian else (config.epsilon or 0.0) * share,
            confidence=confidence if name.endswith("_overall") else plan.confidence,
            budget=budget,
        )
    decisions = decide_counts(released, plan.mechanism, alpha)
    return Releases(
        values=released,
        budget=budget,
        confidence=confidence,
        tests=len(decisions),
        decisions=decisions,
        alpha=alpha,
        mechanism=plan.mechanism,
    )


def privacy_summary(releases: Releases, mechanism: Mechanism) -> dict[str, Any]:
    """The coordinator's charges for the report's privacy section."""
    budget = releases.budget
    gaussian = mechanism is Mechanism.DISCRETE_GAUSSIAN
    return {
        "rho": budget.rho_spent,
        "epsilon": (math.fsum(e for _, _, e in budget.charged if e) if not gaussian else None),
        "rho_cap": budget.rho_cap,
        "mechanism": mechanism.value,
        "releases": [
            {
                "name": r.name,
                "cells": len(r.values),
                "sensitivity": r.sensitivity,
                "scale": r.scale,
                "rho": r.rho,
                "epsilon": r.epsilon,
            }
            for r in releases.values.values()
        ],
        "note": (
            "Charged by the coordinator for its own releases of the ring's counts; every "
            "node that joined charged the same amount to its ledger for its registry's persons, "
            "plus the DP dummy padding of its batch (its policy's ring.padding_rho)."
        ),
    }
