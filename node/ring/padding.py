"""DP dummy padding of a node's ring batch: the row counts the coordinator sees are DP.

Without padding, the final batches show the coordinator exact row counts per origin,
occupation and row shape (certified / failed / passed, certificate revoked or
recognised). Here each node adds, before it blinds anything, dummy rows of random
group elements to every cell of a data-independent grid (every occupation of the
node's qualification catalogue, which is reference data, times every row shape the
run's parameters allow). The number of dummies per cell is

    D = mu + Z,  Z ~ discrete Gaussian(sigma), conditioned on 0 <= D <= 2 mu

(OpenDP's exact discrete Gaussian; the truncation by rejection, which conditions the
distribution on the range exactly). Dummy tokens are uniform ristretto255 elements:
after blinding (a uniform element to a non-zero scalar is uniform) and the hops'
shuffles they look exactly like real tokens that match nothing, so only the counts
per cell carry information, and those are DP for the person:

* Removing one person changes, at each of the roster's N nodes, at most R person
  rows (one per distinct occupation, so one per cell) and R revoked plus R
  recognised certificate rows (at most R in one cell): over all cells of all
  batches ``||c||_2^2 <= N (R + 2 R^2 [revoked])`` and ``||c||_1 <= N R (1 + 2 [revoked])``.
* Without truncation, independent discrete Gaussians of scale sigma on every cell
  are rho-zCDP with ``rho = ||c||_2^2 / (2 sigma^2)`` (Canonne, Kamath, Steinke 2020),
  hence (eps, delta_g)-DP with ``eps = rho + 2 sqrt(rho ln(1/delta_g))``.
* Truncation: conditioning every cell on the same range [0, 2 mu] divides both
  neighbours' probabilities by the same normaliser Zt per cell, so on the outputs
  both can produce the likelihood ratio is the untruncated one; the outputs only one
  of them can produce have probability at most ``sum_j t(c_j)``, t(c) = P(D <= c - 1).
  So the padded view is ``(eps, delta_g / Zt^k + sum_j t(c_j))``-DP (k touched cells).
  `plan_padding` picks the smallest mu for which ``N (R t(1) + 2 [revoked] t(R))``
  (the worst split of a person's rows into cells) is at most the policy's delta.

A row with a fail window and a pass at the same node used to show one internal
equality (the pass month inside its own window, at one of 13 offsets) that a dummy
could not reproduce; `fedaudit.node.ring.rows.hashed_rows` now blanks that window
slot, so all rows of a shape have the same (no) internal equalities.

What this does not cover (docs/dedup.md): the equality pattern between rows (which
rows of different batches share tokens, hence the exact pre-noise duplicate,
shopping and revocation counts) is still exact for the coordinator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from fedaudit.common import ring_crypto as rc
from fedaudit.common.mechanisms import measurement
from fedaudit.common.ring_protocol import SHOPPING_WINDOW_MONTHS
from fedaudit.node.domain import Mechanism

FAIL_WINDOW = SHOPPING_WINDOW_MONTHS + 1
MAX_MU = 100_000
"""A padding plan needing more dummies per cell than this is refused (parameters absurd)."""


@dataclass(frozen=True)
class Cell:
    """One cell of the padding grid: rows of this kind, occupation, flags and width."""

    kind: int
    isco_code: str
    flags: int
    width: int


@dataclass(frozen=True)
class PaddingPlan:
    """The padding distribution of one run at one node, and the guarantee it gives.

    `rho`: the zCDP parameter of the untruncated padding for one person across all
    `nodes` nodes (what the ledger is charged); `delta`: the policy's bound on the
    truncation's share of delta; `sigma`, `mu`: the discrete Gaussian's scale and
    centre (dummies per cell are in [0, 2 mu], mean mu); `l2sq`, `l1`: the person's
    largest squared-L2 and L1 change over all cells; `delta_used`: the exact
    truncation delta of `mu` (<= `delta`).
    """

    rho: float
    delta: float
    nodes: int
    bound: int
    revoked: bool
    sigma: float
    mu: int
    l2sq: int
    l1: int
    delta_used: float

    @property
    def upper(self) -> int:
        return 2 * self.mu

    def epsilon(self, delta_gauss: float) -> tuple[float, float]:
        """(eps, delta) of the padded row-count view: eps at `delta_gauss` for the
        Gaussian part, delta adding the truncation (docstring of this module)."""
        eps = self.rho + 2.0 * math.sqrt(self.rho * math.log(1.0 / delta_gauss))
        # Zt: the untruncated discrete Gaussian's mass on [-mu, mu] (tails beyond 40
        # sigma are below double precision); at most `l1` cells are touched.
        reach = self.mu + int(40 * self.sigma) + 1
        inside = math.fsum(_weight(d, self.mu, self.sigma) for d in range(self.upper + 1))
        total = math.fsum(_weight(d, 0, self.sigma) for d in range(-reach, reach + 1))
        return eps, delta_gauss / (inside / total) ** self.l1 + self.delta_used


def cells(occupations: Sequence[str], keys: int, *, shopping: bool, revoked: bool) -> list[Cell]:
    """Every row shape a run can produce, for every occupation of the catalogue.

    Person rows: certified, failed (a fail window of 13 tokens) and passed (one pass
    token) in every combination a registry can hold (certified only, without
    shopping); certificate rows: revoked here or recognised here.
    """
    out: list[Cell] = []
    for isco in sorted(set(occupations)):
        for certified in (True, False):
            for failed in (False, True) if shopping else (False,):
                for passed in (False, True) if shopping else (False,):
                    if not (certified or failed or passed):
                        continue
                    flags = (
                        (rc.FLAG_CERTIFIED if certified else 0)
                        | (rc.FLAG_FAILED if failed else 0)
                        | (rc.FLAG_PASSED if passed else 0)
                    )
                    width = keys + (FAIL_WINDOW if failed else 0) + (1 if passed else 0)
                    out.append(Cell(rc.KIND_PERSON, isco, flags, width))
        if revoked:
            out.append(Cell(rc.KIND_CERT, isco, rc.FLAG_REVOKED, 1))
            out.append(Cell(rc.KIND_CERT, isco, 0, 1))
    return out


def _weight(d: int, mu: int, sigma: float) -> float:
    return math.exp(-((d - mu) ** 2) / (2.0 * sigma * sigma))


def tail(mu: int, sigma: float, c: int) -> float:
    """t(c) = P(D <= c - 1) for D ~ discrete Gaussian(mu, sigma) conditioned on [0, 2 mu].

    The probability of the outputs that shifting one cell by c makes impossible.
    """
    if c <= 0:
        return 0.0
    if c > mu:
        return 1.0
    norm = math.fsum(_weight(d, mu, sigma) for d in range(2 * mu + 1))
    return math.fsum(_weight(d, mu, sigma) for d in range(c)) / norm


def plan_delta(mu: int, sigma: float, *, nodes: int, bound: int, revoked: bool) -> float:
    """The truncation delta of centre `mu`: the worst split of one person's rows over cells."""
    per_node = bound * tail(mu, sigma, 1) + (2 * tail(mu, sigma, bound) if revoked else 0.0)
    return nodes * per_node


@cache
def plan_padding(rho: float, delta: float, *, nodes: int, bound: int, revoked: bool) -> PaddingPlan:
    """The smallest padding whose row-count view is rho-zCDP up to a truncation delta."""
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"padding rho must be a finite number > 0, got {rho!r}")
    if not 0 < delta < 1:
        raise ValueError(f"padding delta must be in (0, 1), got {delta!r}")
    if nodes < 1 or bound < 1:
        raise ValueError("nodes and bound must be at least 1")
    certs = 2 if revoked else 0
    l2sq = nodes * (bound + certs * bound * bound)
    l1 = nodes * bound * (1 + certs)
    sigma = math.sqrt(l2sq / (2.0 * rho))

    def ok(mu: int) -> bool:
        return plan_delta(mu, sigma, nodes=nodes, bound=bound, revoked=revoked) <= delta

    hi = max(bound, 1)
    while not ok(hi):
        hi *= 2
        if hi > MAX_MU:
            raise ValueError(
                f"padding for rho={rho:g}, delta={delta:g} at {nodes} nodes would "
                f"need more than {MAX_MU} dummy rows per cell"
            )
    lo = hi // 2
    while lo + 1 < hi:  # smallest mu with ok(mu): the truncation delta falls as mu grows
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return PaddingPlan(
        rho=rho,
        delta=delta,
        nodes=nodes,
        bound=bound,
        revoked=revoked,
        sigma=sigma,
        mu=hi,
        l2sq=l2sq,
        l1=l1,
        delta_used=plan_delta(hi, sigma, nodes=nodes, bound=bound, revoked=revoked),
    )


def draw_counts(plan: PaddingPlan, size: int) -> list[int]:
    """`size` independent dummy counts: mu + discrete Gaussian(sigma), conditioned on [0, 2 mu].

    OpenDP's discrete Gaussian (exact sampling); out-of-range draws are redrawn, which
    conditions the distribution on the range exactly.
    """
    gauss = measurement(Mechanism.DISCRETE_GAUSSIAN, plan.sigma)
    out = [-1] * size
    pending = list(range(size))
    while pending:
        drawn = [int(v) for v in gauss([plan.mu] * len(pending))]
        pending_next = []
        for i, d in zip(pending, drawn, strict=True):
            if 0 <= d <= plan.upper:
                out[i] = d
            else:
                pending_next.append(i)
        pending = pending_next
    return out


def dummy_rows(plan: PaddingPlan, grid: Sequence[Cell]) -> list[rc.Row]:
    """Dummy rows of uniform random elements: a fresh padded count for every cell of `grid`."""
    rows: list[rc.Row] = []
    for cell, count in zip(grid, draw_counts(plan, len(grid)), strict=True):
        for _ in range(count):
            tokens = [rc.random_element() for _ in range(cell.width)]
            rows.append(rc.Row(cell.kind, cell.isco_code, cell.flags, tokens))
    return rows


def expected_dummies(plan: PaddingPlan, grid: Sequence[Cell]) -> tuple[int, int]:
    """(rows, tokens) the padding adds on average: mu per cell (the distribution is symmetric)."""
    return plan.mu * len(grid), plan.mu * sum(c.width for c in grid)
