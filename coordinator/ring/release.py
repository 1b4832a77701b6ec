"""The ring's DP releases at the coordinator: check, charge, intervals and decisions.

The coordinator holds no exact count. The run's tally node counted the fully blinded
batches and added the noise (`fedaudit.common.ring_releases`, from the run's public
parameters); here the noisy vectors are checked against the same plan, charged to the
coordinator's budget for the report, given intervals and decided. What was charged is
summarised for the report's privacy section by `privacy_summary`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedaudit.common.ring_protocol import RingParams, TallyResult
from fedaudit.common.ring_releases import release_names, release_plan
from fedaudit.coordinator.errors import CoordinatorError
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.ring.config import DedupConfig
from fedaudit.coordinator.ring.significance import Branch, CountTest, Decision, decide
from fedaudit.node.domain import Mechanism


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


def releases_from_tally(
    plan: AuditPlan,
    config: DedupConfig,
    params: RingParams,
    municipalities: Sequence[str],
    tally: TallyResult,
    *,
    per_test_confidence: float | None,
) -> Releases:
    """The tally node's noisy counts as releases with intervals, charged and decided.

    The coordinator never holds an exact count: the tally node added the noise. From
    the run's public parameters it recomputes what each release must cost and at what
    scale (`release_plan`, the same function the tally node used) and refuses a tally
    whose releases, cells or scales differ, so a tally node cannot have released
    weaker noise than every node was charged for.
    """
    n = len(municipalities)
    # Region-wide counts are tested first, each at its share of the error budget; their
    # breakdowns (per pair, occupation, municipality) only once the region-wide count is a
    # finding (gatekeeping, `significance`), so locating a finding costs it no power.
    branches = 1 + int(config.shopping) + int(config.revoked)
    alpha = (1.0 - per_test_confidence) * branches if per_test_confidence else 1 - plan.confidence
    confidence = 1.0 - alpha / branches
    names = release_names(shopping=params.shopping, revoked=params.revoked)
    levels = {name: confidence if name.endswith("_overall") else plan.confidence for name in names}
    planned = release_plan(params, n, confidence=levels)
    cells = {
        "dup_per_occupation": len(tally.occupations),
        "overlap": n - 1,
        "pairwise": n * (n - 1) // 2,
        "shopping_by_passing": n,
        "revoked_by_pair": n * (n - 1),
    }
    got = {r.name: r for r in tally.releases}
    if tuple(got) != names or len(got) != len(tally.releases):
        raise CoordinatorError(
            f"the tally node {tally.municipality_code} released {sorted(got)}, not the run's "
            f"releases {list(names)}"
        )
    budget = CoordinatorBudget(math.fsum(p.charge.rho for p in planned.values()))
    released: dict[str, Release] = {}
    for name, spec in planned.items():
        r = got[name]
        if len(r.values) != cells.get(name, 1) or not math.isclose(
            r.scale, spec.noise.scale, rel_tol=1e-12
        ):
            raise CoordinatorError(
                f"the tally node {tally.municipality_code} released {name!r} with "
                f"{len(r.values)} cells at scale {r.scale:g}; the run asks "
                f"{cells.get(name, 1)} cells at scale {spec.noise.scale:g}"
            )
        budget.charge(name, spec.charge.rho, spec.charge.epsilon)
        released[name] = Release(
            name=name,
            values=list(r.values),
            half_width=spec.noise.ci_half_width,
            scale=spec.noise.scale,
            rho=spec.charge.rho,
            epsilon=spec.charge.epsilon,
            sensitivity=spec.sensitivity,
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


def privacy_summary(releases: Releases, mechanism: Mechanism, tally: str = "") -> dict[str, Any]:
    """The coordinator's charges for the report's privacy section (`tally`: who drew the noise)."""
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
            "Charged by the coordinator for its own releases of the ring's counts, which "
            + (f"the run's tally node {tally}" if tally else "the run's tally node")
            + " counted and noised (the coordinator never held an exact count); every node "
            "that joined charged the same amount to its ledger for its registry's persons, "
            "plus the DP dummy padding of its batch (its policy's ring.padding_rho)."
        ),
    }
