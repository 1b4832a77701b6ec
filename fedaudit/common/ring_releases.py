"""The ring's DP releases, planned the same way by the tally node and the coordinator.

The tally node (`fedaudit.node.ring.service`) counts the fully blinded batches and
adds the noise here; the coordinator never sees an exact count, only the noisy vectors,
and recomputes from the same public inputs (the run's parameters and the roster size)
each release's sensitivity, budget share and scale, to put intervals on the counts and
to check that the tally node noised them as the run was charged. Both sides call
`release_plan`, so they cannot disagree about what a release costs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedaudit.common.mechanisms import add_noise, plan_noise
from fedaudit.common.ring_counting import DedupCounts
from fedaudit.common.ring_protocol import RingParams, TallyRelease
from fedaudit.node.domain import Charge, Mechanism, NoiseSpec


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


def release_names(*, shopping: bool, revoked: bool) -> tuple[str, ...]:
    """The releases of a run, in the order they are drawn and reported."""
    names = ["dup_overall", "dup_per_occupation", "overlap", "pairwise"]
    if shopping:
        names += ["shopping_overall", "shopping_by_passing"]
    if revoked:
        names += ["revoked_overall", "revoked_by_pair"]
    return tuple(names)


def mechanism_of(params: RingParams) -> Mechanism:
    return Mechanism.DISCRETE_LAPLACE if params.epsilon else Mechanism.DISCRETE_GAUSSIAN


@dataclass(frozen=True)
class PlannedRelease:
    """One release's sensitivity, budget share and noise (scale and charge)."""

    name: str
    sensitivity: int
    """The one the mechanism is calibrated to: L2 for the Gaussian, L1 for the Laplace."""
    noise: NoiseSpec
    charge: Charge


def release_plan(
    params: RingParams, nodes: int, *, confidence: Mapping[str, float] | float = 0.95
) -> dict[str, PlannedRelease]:
    """Every release of a run: the run's rho (or epsilon) split over them, scales calibrated.

    The tested region-wide counts get three shares each, their breakdowns one. Only
    public inputs: the run's parameters and the number of members. `confidence` only
    sets the interval half widths (per release name, or one for all).
    """
    names = release_names(shopping=params.shopping, revoked=params.revoked)
    mechanism = mechanism_of(params)
    gaussian = mechanism is Mechanism.DISCRETE_GAUSSIAN
    sens = sensitivities(len(params.keys), params.bound, nodes)
    weights = {name: 3.0 if name.endswith("_overall") else 1.0 for name in names}
    total = math.fsum(weights.values())
    plan: dict[str, PlannedRelease] = {}
    for name in names:
        share = weights[name] / total
        level = confidence if isinstance(confidence, float) else confidence[name]
        sensitivity = sens[name].l2 if gaussian else sens[name].l1
        noise, charge = plan_noise(
            mechanism,
            rho=params.rho * share if gaussian else None,
            epsilon=None if gaussian else (params.epsilon or 0.0) * share,
            sensitivity=sensitivity,
            confidence=level,
        )
        plan[name] = PlannedRelease(name, sensitivity, noise, charge)
    return plan


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


def noisy_releases(
    counts: DedupCounts, params: RingParams, municipalities: Sequence[str]
) -> tuple[TallyRelease, ...]:
    """What the tally node releases: every count vector with its planned OpenDP noise."""
    plan = release_plan(params, len(municipalities))
    vectors = count_vectors(
        counts,
        municipalities,
        counts.occupations,
        shopping=params.shopping,
        revoked=params.revoked,
    )
    return tuple(
        TallyRelease(
            name, tuple(add_noise(plan[name].noise, vectors[name])), plan[name].noise.scale
        )
        for name in plan
    )
