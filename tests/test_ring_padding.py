"""DP dummy padding of the ring's batches (node/ring/padding.py): what the coordinator's view costs.

Three kinds of evidence that the padded row counts are as private as claimed:

- exact: the privacy loss of the padded view for the worst person is a sum of integer
  multiples of 1 / (2 sigma^2) (one per touched cell, +inf where the truncation gives
  the person away), so its distribution, and with it delta(eps) for every eps, is
  computed exactly by convolution; it must be at most what `PaddingPlan.epsilon` claims,
  and a plan calibrated for fewer nodes than the person sits at must fail the same check;
- the sampler: OpenDP's discrete Gaussian conditioned on [0, 2 mu] has the pmf the
  accounting assumes (chi-square goodness of fit);
- black box, as `test_dedup_blackbox.py` does it for the releases: neighbouring
  federations D (without the person) and D' (with the person at 1, 2 or 3
  municipalities), the rows built by the production local merge and row building,
  padded with draws from the exact pmf that the sampler test above holds OpenDP's sampler
  to (numpy's inverse-CDF draws of that pmf: the audit needs millions of draws, which
  OpenDP's exact sampler takes minutes for); the threshold-event lower bound on eps
  (`dp_audit.eps_lower_bound`) must stay at or below the claimed eps, and the zCDP
  lower bound (`dp_audit.rho_lower_bound`) at or below the claimed rho. The same
  auditor flags a plan calibrated for one node when the person is at three, and a
  membership guess from the counts succeeds no more often than the exact optimum.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
from collections import Counter

import numpy as np
import pytest
from dp_audit import AUDIT_ALPHA, cp_lower, eps_lower_bound, rho_lower_bound
from scipy.stats import chisquare

from fedaudit.common.mechanisms import add_noise
from fedaudit.common.ring_counting import count_rows
from fedaudit.common.ring_protocol import NAME_KEYS, LabelledRow, RingParams
from fedaudit.common.ring_releases import release_plan
from fedaudit.node.ring.keys import Identity, PersonInput, merge_local
from fedaudit.node.ring.padding import (
    PaddingPlan,
    cells,
    draw_counts,
    plan_delta,
    plan_padding,
    tail,
)
from fedaudit.node.ring.rows import hashed_rows

RHO, DELTA = 0.25, 1e-7  # the policy's defaults (node/privacy/policy.py)
CODES = ("M1", "M2", "M3")
RHO_DRAWS = 30_000
"""Draws per side for the zCDP bound (its power against a 3x under-calibration is ample)."""
ISCO = "7212"


def _pmf(plan: PaddingPlan) -> np.ndarray:
    """The exact pmf of the dummies per cell on 0..2 mu."""
    d = np.arange(plan.upper + 1)
    w = np.exp(-((d - plan.mu) ** 2) / (2 * plan.sigma**2))
    return w / w.sum()


def _exact_delta(plan: PaddingPlan, shifts: list[int], eps: float) -> float:
    """delta(eps) of the padded cells for a person who moves cell j by shifts[j] (exact).

    With the person the count is x + c + D, without it x + D; the loss of one cell at
    D = d is ((d + c - mu)^2 - (d - mu)^2) / (2 sigma^2) = (2 c (d - mu) + c^2) units of
    1 / (2 sigma^2), and +inf when d + c > 2 mu (the other side cannot produce it).
    """
    pmf = _pmf(plan)
    mu = plan.mu
    dist = {0: 1.0}  # loss in units -> probability (finite part)
    finite = 1.0
    for c in shifts:
        cell: dict[int, float] = {}
        for d, p in enumerate(pmf):
            if d + c > plan.upper:
                continue
            k = 2 * c * (d - mu) + c * c
            cell[k] = cell.get(k, 0.0) + float(p)
        finite *= math.fsum(cell.values())
        merged: dict[int, float] = {}
        for k1, p1 in dist.items():
            for k2, p2 in cell.items():
                merged[k1 + k2] = merged.get(k1 + k2, 0.0) + p1 * p2
        dist = merged
    unit = 1.0 / (2 * plan.sigma**2)
    inf_mass = 1.0 - finite
    return inf_mass + math.fsum(
        p * max(0.0, 1.0 - math.exp(eps - k * unit)) for k, p in dist.items()
    )


def _worst_shifts(nodes: int, bound: int, revoked: bool) -> list[int]:
    """The person's worst split: R person cells of 1 and two certificate cells of R per node."""
    return [1] * (nodes * bound) + ([bound] * (2 * nodes) if revoked else [])


@pytest.mark.parametrize(
    ("nodes", "bound", "revoked"), [(2, 1, True), (3, 1, True), (5, 1, True), (3, 2, False)]
)
def test_exact_delta_of_the_worst_person_is_within_the_claim(nodes, bound, revoked):
    plan = plan_padding(RHO, DELTA, nodes=nodes, bound=bound, revoked=revoked)
    assert plan.delta_used <= DELTA
    assert plan_delta(plan.mu - 1, plan.sigma, nodes=nodes, bound=bound, revoked=revoked) > DELTA
    pmf = _pmf(plan)
    assert tail(plan.mu, plan.sigma, 1) == pytest.approx(float(pmf[0]), rel=1e-9)
    assert tail(plan.mu, plan.sigma, 2) == pytest.approx(float(pmf[:2].sum()), rel=1e-9)
    shifts = _worst_shifts(nodes, bound, revoked)
    assert sum(c * c for c in shifts) == plan.l2sq
    for delta_g in (1e-3, 1e-5, DELTA):
        eps, delta = plan.epsilon(delta_g)
        exact = _exact_delta(plan, shifts, eps)
        print(f"N={nodes} R={bound}: claimed ({eps:.3f}, {delta:.3g}), exact delta {exact:.3g}")
        assert exact <= delta


def test_a_plan_for_one_node_fails_the_exact_check_for_a_person_at_three():
    """The check has power: padding calibrated for one node is not enough for three."""
    plan = plan_padding(RHO, DELTA, nodes=1, bound=1, revoked=True)
    eps, delta = plan.epsilon(DELTA)
    assert _exact_delta(plan, _worst_shifts(3, 1, True), eps) > 100 * delta


def test_sampler_draws_the_truncated_discrete_gaussian():
    """OpenDP's draws conditioned on [0, 2 mu] fit the exact pmf (chi-square, alpha 1e-4)."""
    plan = plan_padding(RHO, DELTA, nodes=3, bound=1, revoked=True)
    draws = np.asarray(draw_counts(plan, 40_000))
    assert draws.min() >= 0
    assert draws.max() <= plan.upper
    expected = _pmf(plan) * len(draws)
    observed = np.bincount(draws, minlength=plan.upper + 1).astype(float)
    keep = expected >= 5  # pool the sparse tails into one bin
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    assert chisquare(obs, exp).pvalue > 1e-4


def test_grid_covers_every_shape_a_registry_can_produce():
    """Every row the production row building emits falls in a cell of the grid."""
    person = PersonInput(
        person_id="p",
        identity=Identity.of("Anna", "Berger", dt.date(1985, 4, 5)),
        certified={ISCO: dt.date(2022, 1, 1)},
        fails={ISCO: [dt.date(2022, 1, 1)], "5120": [dt.date(2021, 1, 1)]},
        passes={ISCO: [dt.date(2022, 6, 1)], "4110": [dt.date(2020, 1, 1)]},
        revoked=[(ISCO, "A-1")],
        recognised=[(ISCO, "M2", "B-1")],
    )
    people, certs = merge_local([person], NAME_KEYS, "M1", bound=3)
    rows = hashed_rows("r", people, certs, token=_clear, blank=lambda: os.urandom(32))
    grid = {
        (c.kind, c.isco_code, c.flags, c.width)
        for c in cells([ISCO, "5120", "4110"], 2, shopping=True, revoked=True)
    }
    assert len(grid) == 3 * 9
    for r in rows:
        assert (r.kind, r.isco_code, r.flags, len(r.tokens)) in grid
    # the pass in its own fail window (offset 5) leaves no internal equality in the row
    row = next(r for r in rows if r.isco_code == ISCO and r.kind == 1)
    assert len(set(row.tokens)) == len(row.tokens)


# --- black-box audit of the coordinator's row-count view -------------------------------------


def _clear(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _neighbours(i: int) -> list[PersonInput]:
    return [
        PersonInput(
            person_id=f"n{i}-{k}",
            identity=Identity.of(f"Name{k}", f"Other{i}", dt.date(1970 + k, 1, 1)),
            certified={ISCO: dt.date(2021, 1, 1)},
        )
        for k in range(5 + 3 * i)
    ]


PERSON = PersonInput(
    person_id="p",
    identity=Identity.of("Anna", "Berger", dt.date(1985, 4, 5)),
    certified={ISCO: dt.date(2022, 1, 1)},
    revoked=[(ISCO, "X-1")],
    recognised=[(ISCO, "M9", "Y-1")],
)


def _view(at: tuple[str, ...]) -> Counter:
    """Exact rows per (node, cell) of the federation, with the person at `at`."""
    view: Counter = Counter()
    for i, code in enumerate(CODES):
        persons = _neighbours(i) + ([PERSON] if code in at else [])
        people, certs = merge_local(persons, NAME_KEYS, code, bound=1)
        for r in hashed_rows("r", people, certs, token=_clear, blank=lambda: os.urandom(32)):
            view[(code, r.kind, r.isco_code, r.flags, len(r.tokens))] += 1
    return view


def _sampler(at: tuple[str, ...], plan: PaddingPlan):
    """Draws of the padded view, reduced to the auditor's statistic: the total over the cells
    the neighbours differ in (chosen from D and D' alone, before any draw)."""
    d, d_prime = _view(()), _view(at)
    touched = sorted(k for k in set(d) | set(d_prime) if d[k] != d_prime[k])
    exact = {"D": sum(d[k] for k in touched), "D'": sum(d_prime[k] for k in touched)}

    pmf = _pmf(plan)
    rng = np.random.default_rng()

    def sample(which: str, n: int) -> list[int]:
        pads = rng.choice(pmf.size, size=(n, len(touched)), p=pmf)
        return (exact[which] + pads.sum(axis=1)).tolist()

    return sample, touched


@pytest.mark.slow
@pytest.mark.parametrize("at", [("M1",), ("M1", "M2"), CODES], ids=["1-node", "2-nodes", "3-nodes"])
def test_coordinator_row_count_view_does_not_exceed_claimed_privacy(at):
    """For a person (certified, one revoked and one recognised certificate) at 1, 2 or 3 of 3
    municipalities: eps_lb <= claimed eps and rho_lb <= claimed rho."""
    plan = plan_padding(RHO, DELTA, nodes=len(CODES), bound=1, revoked=True)
    sample, touched = _sampler(at, plan)
    assert len(touched) == 3 * len(at)
    eps, delta = plan.epsilon(DELTA)
    lb, t = eps_lower_bound(sample, delta=delta)
    d, d_prime = np.asarray(sample("D", RHO_DRAWS)), np.asarray(sample("D'", RHO_DRAWS))
    rho = rho_lower_bound(d, d_prime, alpha=AUDIT_ALPHA)
    print(
        f"person at {len(at)} node(s), {len(touched)} cells moved: claimed eps={eps:.3f} "
        f"(delta {delta:.2g}), eps_lb={lb:.4f} (X >= {t}); claimed rho={RHO}, "
        f"rho_lb={rho.rho_lb:.4f} (estimate {rho.rho_hat:.4f})"
    )
    assert lb <= eps
    assert rho.rho_lb <= RHO


@pytest.mark.slow
def test_auditor_flags_padding_calibrated_for_one_node():
    """The same auditor on a plan for one node while the person is at three: rho_lb > rho."""
    plan = plan_padding(RHO, DELTA, nodes=1, bound=1, revoked=True)
    sample, _ = _sampler(CODES, plan)
    d, d_prime = np.asarray(sample("D", RHO_DRAWS)), np.asarray(sample("D'", RHO_DRAWS))
    rho = rho_lower_bound(d, d_prime, alpha=AUDIT_ALPHA)
    print(f"plan for 1 node, person at 3: claimed rho={RHO}, rho_lb={rho.rho_lb:.4f}")
    assert rho.rho_lb > RHO


@pytest.mark.slow
def test_membership_guess_from_the_counts_is_no_better_than_the_exact_optimum():
    """The coordinator guesses whether the person (at all 3 municipalities) is in the data from
    the padded counts: a threshold on the total, chosen on one sample, scored on another. Its
    accuracy is at most (1 + TV) / 2 with TV the exact total variation of the padded cells
    (about 0.64 at the default rho; the roster oracle of issue 9 reached 273/274)."""
    plan = plan_padding(RHO, DELTA, nodes=len(CODES), bound=1, revoked=True)
    sample, touched = _sampler(CODES, plan)
    optimum = (1.0 + _exact_delta(plan, [1] * len(touched), 0.0)) / 2
    s0, s1 = np.asarray(sample("D", 20_000)), np.asarray(sample("D'", 20_000))
    thresholds = np.unique(np.concatenate([s0, s1]))
    accuracy = [(np.mean(s1 >= t) + np.mean(s0 < t)) / 2 for t in thresholds]
    t = thresholds[int(np.argmax(accuracy))]
    n = 50_000
    e0, e1 = np.asarray(sample("D", n)), np.asarray(sample("D'", n))
    correct = int(np.count_nonzero(e1 >= t) + np.count_nonzero(e0 < t))
    lower = cp_lower(correct, 2 * n, AUDIT_ALPHA)
    print(
        f"membership guess: accuracy {correct / (2 * n):.4f} (lower bound {lower:.4f}), "
        f"exact optimum {optimum:.4f}"
    )
    assert optimum < 0.7
    assert lower <= optimum


# --- black-box audit of the coordinator's whole view (padded totals and releases) -------------


def _duplicates(at: tuple[str, ...]) -> int:
    """The tally node's exact duplicate count for the audit's federation (production counting)."""
    rows = []
    for i, code in enumerate(CODES):
        persons = _neighbours(i) + ([PERSON] if code in at else [])
        people, certs = merge_local(persons, NAME_KEYS, code, bound=1)
        built = hashed_rows("r", people, certs, token=_clear, blank=lambda: os.urandom(32))
        rows += [LabelledRow(code, r) for r in built]
    return count_rows(rows, CODES, len(NAME_KEYS)).duplicated


@pytest.mark.slow
@pytest.mark.parametrize("at", [("M1",), ("M1", "M2"), CODES], ids=["1-node", "2-nodes", "3-nodes"])
def test_coordinator_whole_view_does_not_exceed_claimed_privacy(at):
    """What the coordinator receives of a run at the default plan's rho (1.0): the padded row
    totals of the batches and the tally node's noisy duplicate count, reduced to one statistic
    (their sum over the cells the person moves). eps_lb <= the eps claimed for rho + rho_pad."""
    plan = plan_padding(RHO, DELTA, nodes=len(CODES), bound=1, revoked=True)
    padded, _ = _sampler(at, plan)
    params = RingParams(keys=NAME_KEYS, bound=1, shopping=True, revoked=True, rho=1.0)
    noise = release_plan(params, len(CODES))["dup_overall"].noise
    dup = {"D": _duplicates(()), "D'": _duplicates(at)}

    def sample(which: str, n: int) -> list[int]:
        released = add_noise(noise, [dup[which]] * n)  # as the tally node draws it
        return [p + r for p, r in zip(padded(which, n), released, strict=True)]

    rho = params.rho + RHO
    claimed = rho + 2.0 * math.sqrt(rho * math.log(1.0 / DELTA))
    _, delta = plan.epsilon(DELTA)
    lb, t = eps_lower_bound(sample, delta=delta)
    without, with_person = dup["D"], dup["D'"]
    print(
        f"person at {len(at)} node(s): duplicates {without} -> {with_person}, "
        f"claimed eps={claimed:.3f} (rho {rho}), eps_lb={lb:.4f} (X >= {t})"
    )
    assert lb <= claimed
