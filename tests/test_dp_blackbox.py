"""Black-box privacy audit of the real node: `NodeService.query`, and once over gRPC.

The auditor sees only answers, as a coordinator does. One registry holds many
independent copies of a neighbouring pair: providers `BD*` ("big", database D) and
`BN*` (the same plus one person with 4 failed assessments, D'), and `ED*` / `EN*`
("edge" groups whose true total is just below the suppression threshold in D and just
above it in D'). A query grouped by provider releases every group with its own noise
and its own suppression decision, so one query gives hundreds of independent draws of
each side of the pair, through the node's whole path: policy, ledger, per-person bound
in SQL, OpenDP noise, suppression (on, threshold 10), query log.

Per mechanism the audit checks, at a total false-failure rate <= 1e-4 per test
(Bonferroni over its checks; see `dp_audit` for each bound):

- the released cell moves by the *declared* sensitivity K between D and D' (tells K
  from K + 1: the bound in SQL), and the noise has the *declared* variance;
- the privacy loss it measures is within what was charged: a model-free epsilon lower
  bound from threshold events (Laplace), the zCDP rho of the Gaussian-shaped release
  (Gaussian); and the suppression decision of the edge groups leaks no more than that.

Power (stated and asserted by `test_audit_power_*`, by simulating the same checks on
synthetic releases of a violating mechanism with the same draw counts): against K + 1
and against a 2x violation (epsilon doubled / rho doubled), each flagged in 200 of 200
synthetic audits for every case, see the printed table. The event and rho bounds are
Clopper-Pearson / one-sided normal bounds; the normal-approximation z-tests were measured
once by simulation with `scripts/calibrate_dp_audit.py` (see SHIFT_MARGIN) and run with a
margin that covers the heavier-than-normal tail it found.

OpenDP's noise is drawn from the OS's randomness and cannot be seeded: a failure prints
the statistics it saw instead of a seed.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import structlog
from dp_audit import (
    discrete_laplace,
    event_epsilon_lower_bound,
    rho_lower_bound,
    rounded_gaussian,
    shift_check,
    variance_check,
)
from factories import RegistryFactory
from sqlalchemy import Engine, insert, update

from fedaudit.common import mechanisms
from fedaudit.coordinator.running.transport import GrpcNodeTransport
from fedaudit.node.domain import Answer, Mechanism, QuerySpec
from fedaudit.node.privacy.policy import Policy, parse_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.server import start_node_server
from fedaudit.node.store.db import create_schema, make_engine
from fedaudit.node.store.models import REGISTRY_TABLES, DataVersion, LedgerEntry

TEMPLATE = "assessment_results"
CELL = "fail"
K = 2
"""The policy's bound for the template: a person keeps at most K records."""
EXTRA_RECORDS = 4
"""The added person's failed assessments, all in the audited cell (the SQL keeps K)."""
BASE_FAIL = 3
BIG_PASS_PERSONS = 30
"""60 pass records: a big group's total is ~9 noise sds above the threshold (never withheld)."""
SUPPRESS_BELOW = 10
EDGE_TOTAL = SUPPRESS_BELOW - 1
"""An edge group's true total in D; in D' it is EDGE_TOTAL + K, above the threshold."""
BIG_GROUPS = 600
EDGE_GROUPS = 100
QUERIES = 10
"""Fresh queries per mechanism: 6,000 big and 1,000 edge draws per side."""
GRPC_QUERIES = 4
ALPHA = 1e-4
"""False-failure budget of each test function, split evenly over its checks."""
RHO, EPSILON = 0.25, 1.0
DELTA = 1e-6
SUPPRESSED = -(10**9)
"""A withheld cell in the sample arrays: below every value, so events can select it."""

_FRESH = itertools.count()


# --- the registry ------------------------------------------------------------------------------


def _registry() -> RegistryFactory:
    reg = RegistryFactory(municipality_code="M01")
    q = reg.qualification()

    def person(provider: str, result: str, records: int) -> None:
        c = reg.candidate()
        for j in range(records):
            reg.assessment(c, q, provider, f"2024-03-{1 + j:02d}", result=result)

    for side in ("D", "N"):
        for g in range(BIG_GROUPS):
            p = reg.provider(f"B{side}{g:04d}")
            for _ in range(BIG_PASS_PERSONS):
                person(p, "pass", 2)
            for _ in range(BASE_FAIL):
                person(p, "fail", 1)
            if side == "N":
                person(p, "fail", EXTRA_RECORDS)
        for g in range(EDGE_GROUPS):
            p = reg.provider(f"E{side}{g:04d}")
            for _ in range(EDGE_TOTAL // 2):
                person(p, "pass", 2)
            person(p, "pass", EDGE_TOTAL % 2)
            if side == "N":
                person(p, "fail", EXTRA_RECORDS)
    return reg


def _build(url: str) -> Engine:
    """Schema and rows with bulk Core inserts (the ORM would take ~20 s for 90k rows)."""
    engine = make_engine(url)
    create_schema(engine)
    reg = _registry()
    with engine.begin() as conn:
        for model in REGISTRY_TABLES:
            rows = reg.rows_of(model)
            if rows:
                conn.execute(insert(model.__table__), rows)
        conn.execute(
            insert(DataVersion.__table__),
            {
                "version": "v1-audit",
                "bundle_digest": "audit",
                "imported_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                "reference_date": dt.date(2026, 1, 1),
                "row_counts": "{}",
            },
        )
    return engine


def audit_policy() -> Policy:
    return parse_policy(
        {
            "version": 1,
            "requesters": {"auditor": {"rho_per_period": 1_000_000.0}},
            "budget": {"period": "year", "node_rho_total": 1_000_000.0, "max_rho_per_request": 1.0},
            "reliability": {"suppress_below": SUPPRESS_BELOW},
            "bounds": {TEMPLATE: K},
            "periods": {"first": 2024, "last": 2024},
        },
        source="<audit policy>",
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    engine = _build(f"sqlite:///{tmp_path_factory.mktemp('dp-audit') / 'node.db'}")
    yield NodeService(engine, audit_policy())
    engine.dispose()


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


# --- sampling ----------------------------------------------------------------------------------


def _retire_stored_answers(engine) -> None:
    """Make the answers taken so far unreplayable; their charges stand.

    The node replays a stored answer to any equivalent query (canonical queries: the
    confidence level is not part of the lookup), which is what stops averaging noise
    away. The audit needs fresh noise for every draw, so it retires each answer.
    """
    with engine.begin() as conn:
        conn.execute(
            update(LedgerEntry).where(LedgerEntry.state == "released").values(state="failed")
        )


def fresh_spec(mechanism: Mechanism) -> QuerySpec:
    """The audited query; a distinct confidence each time, so the node never replays."""
    i = next(_FRESH)
    gaussian = mechanism is Mechanism.DISCRETE_GAUSSIAN
    return QuerySpec(
        TEMPLATE,
        group_by=("provider",),
        mechanism=mechanism,
        rho=RHO if gaussian else None,
        epsilon=None if gaussian else EPSILON,
        confidence=0.5 + i / 1000,
    )


@dataclass
class Draws:
    """The audited cell of every group, by kind and side, over all answers."""

    big_d: list[int]
    big_n: list[int]
    edge_d: list[int]
    edge_n: list[int]
    answers: list[Answer]

    def add(self, answer: Answer) -> None:
        assert not answer.replayed, "the node replayed an answer: the audit needs fresh draws"
        self.answers.append(answer)
        for cell in answer.cells:
            if cell.category != CELL:
                continue
            value = SUPPRESSED if cell.suppressed else cell.estimate
            target = {"BD": self.big_d, "BN": self.big_n, "ED": self.edge_d, "EN": self.edge_n}
            kind = cell.keys[0][:2]
            if kind in target:  # the public key list also has "none" (no provider)
                target[kind].append(value)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return tuple(
            np.asarray(x, dtype=np.int64)
            for x in (self.big_d, self.big_n, self.edge_d, self.edge_n)
        )  # type: ignore[return-value]


def draws() -> Draws:
    return Draws([], [], [], [], [])


def _events(mechanism: Mechanism, scale: float) -> list[tuple[str, object]]:
    """Threshold events on the audited cell, fixed from the declared mechanism before sampling."""
    top = BASE_FAIL + K
    steps = (0, 1, 2, 4) if mechanism is Mechanism.DISCRETE_LAPLACE else (0, 2, 4, 6)
    events: list[tuple[str, object]] = []
    for j in steps:
        t = top + round(j * scale / 2)
        events.append((f"X >= {t}", lambda x, t=t: x >= t))
        u = BASE_FAIL - round(j * scale / 2)
        events.append((f"X <= {u}", lambda x, u=u: (x <= u) & (x != SUPPRESSED)))
    return events


SUPPRESSION_EVENTS = [("withheld", lambda x: x == SUPPRESSED)]


# --- the audit ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    lines: list[str]
    failures: list[str]

    def check(self, ok: bool, line: str) -> None:
        self.lines.append(line)
        if not ok:
            self.failures.append(line)

    def assert_clean(self) -> None:
        print("\n".join(self.lines))
        assert not self.failures, "privacy audit failed:\n" + "\n".join(self.failures)


def audit(sample: Draws, mechanism: Mechanism, *, checks_alpha: float) -> Verdict:
    """Every check of the module docstring on `sample`; each at `checks_alpha`."""
    verdict = Verdict([], [])
    big_d, big_n, edge_d, edge_n = sample.arrays()
    answers = sample.answers
    declared = {(a.noise.mechanism, a.noise.scale, a.noise.sensitivity_l1) for a in answers}
    charged = {(a.charge.rho, a.charge.epsilon) for a in answers}
    verdict.check(
        len(declared) == 1 and len(charged) == 1,
        f"one declared noise {declared} and one charge {charged} for identical requests",
    )
    noise = answers[0].noise
    charge = answers[0].charge
    if mechanism is Mechanism.DISCRETE_LAPLACE:
        eps = charge.epsilon or 0.0
        verdict.check(
            charge.rho >= eps * eps / 2 * (1 - 1e-12),
            f"pure-DP charge rho {charge.rho:.6f} >= eps^2/2 = {eps * eps / 2:.6f}",
        )
    verdict.check(
        noise.sensitivity_l1 == K and noise.max_records_per_person == K,
        f"declared sensitivity {noise.sensitivity_l1} == policy bound K={K}",
    )
    withheld = int(np.count_nonzero(big_d == SUPPRESSED) + np.count_nonzero(big_n == SUPPRESSED))
    verdict.check(withheld == 0, f"big groups withheld: {withheld} (expected none)")
    big_d, big_n = big_d[big_d != SUPPRESSED], big_n[big_n != SUPPRESSED]

    shift = shift_check(big_d, big_n, noise.sensitivity_l1, alpha=checks_alpha / SHIFT_MARGIN)
    verdict.check(
        shift.ok,
        f"shift D->D' {shift.shift:.3f} vs declared {shift.expected} "
        f"(allowed +-{shift.bound:.3f}, se {shift.se:.3f}, n={len(big_d)}/{len(big_n)})",
    )
    var = variance_check(big_d - BASE_FAIL, noise.variance, alpha=checks_alpha / VARIANCE_MARGIN)
    verdict.check(
        var.ok,
        f"noise variance {var.variance:.3f} vs declared {var.declared:.3f} "
        f"(allowed +-{var.bound:.3f})",
    )
    if mechanism is Mechanism.DISCRETE_LAPLACE:
        claimed = charge.epsilon or 0.0
        delta = 0.0
        lb = event_epsilon_lower_bound(
            big_d, big_n, _events(mechanism, noise.scale), alpha=checks_alpha
        )
        verdict.check(
            lb.epsilon <= claimed,
            f"eps lower bound {lb.epsilon:.3f} <= charged eps {claimed:.3f} "
            f"(best event {lb.event}, {lb.ordering}, counts {lb.counts})",
        )
    else:
        rho = rho_lower_bound(big_d, big_n, alpha=checks_alpha)
        verdict.check(
            rho.rho_lb <= charge.rho,
            f"rho lower bound {rho.rho_lb:.4f} (estimate {rho.rho_hat:.4f}) "
            f"<= charged rho {charge.rho:.4f}",
        )
        claimed, delta = mechanisms.epsilon_equivalent(charge.rho, DELTA), DELTA
    supp = event_epsilon_lower_bound(
        edge_d, edge_n, SUPPRESSION_EVENTS, alpha=checks_alpha, delta=delta
    )
    rates = (float(np.mean(edge_d == SUPPRESSED)), float(np.mean(edge_n == SUPPRESSED)))
    verdict.check(
        supp.epsilon <= claimed,
        f"suppression: withheld in D {rates[0]:.3f}, in D' {rates[1]:.3f}; "
        f"eps lower bound {supp.epsilon:.3f} <= {claimed:.3f} (delta {delta:g})",
    )
    return verdict


CHECKS = 7
"""Checks in `audit` that can fail by chance (identities of declared values cannot)."""
SHIFT_MARGIN, VARIANCE_MARGIN = 10, 100
"""The z-tests run at alpha / margin: simulated on correct releases (5,000 audits each,
scripts/calibrate_dp_audit.py), the Laplace noise's sample variance rejected 1.6e-3 (n=6000)
and 3.0e-3 (n=2400) at a nominal 1e-3, a tail up to 3x heavier than normal, and the shift
1.6e-3 / 6e-4; the margins keep each check's true rate below its share of 1e-4."""


@pytest.mark.parametrize("mechanism", [Mechanism.DISCRETE_LAPLACE, Mechanism.DISCRETE_GAUSSIAN])
def test_node_release_is_within_its_declared_privacy(
    node: NodeService, mechanism: Mechanism
) -> None:
    """NodeService.query: shift = K, declared variance, privacy loss <= charge, suppression DP.

    False-failure rate <= 1e-4 (ALPHA split over CHECKS checks).
    """
    now = node.clock()
    spent = node.ledger.status("auditor", now).requester_rho_spent
    sample = draws()
    for _ in range(QUERIES):
        sample.add(node.query("auditor", f"audit-{next(_FRESH)}", fresh_spec(mechanism)))
        _retire_stored_answers(node.engine)
    verdict = audit(sample, mechanism, checks_alpha=ALPHA / CHECKS)
    charged = math.fsum(a.charge.rho for a in sample.answers)
    ledger = node.ledger.status("auditor", now).requester_rho_spent - spent
    verdict.check(
        ledger == pytest.approx(charged, rel=1e-9, abs=1e-9),
        f"ledger charged rho {ledger:.6f} for answers stating {charged:.6f}",
    )
    verdict.assert_clean()


def test_node_release_over_grpc_is_within_its_declared_privacy(node: NodeService) -> None:
    """The same audit with answers taken over gRPC (loopback server, the coordinator's transport).

    Fewer draws (2,400 big and 400 edge per side); false-failure rate <= 1e-4.
    """
    running = start_node_server(node, host="127.0.0.1", port=0)
    transport = GrpcNodeTransport("M01", f"127.0.0.1:{running.port}", requester="auditor")
    try:
        sample = draws()
        for _ in range(GRPC_QUERIES):
            spec = fresh_spec(Mechanism.DISCRETE_LAPLACE)
            answer, _ = transport.query(spec, f"grpc-{next(_FRESH)}", timeout=60)
            sample.add(answer)
            _retire_stored_answers(node.engine)
    finally:
        transport.close()
        running.stop(grace=None)
    audit(sample, Mechanism.DISCRETE_LAPLACE, checks_alpha=ALPHA / CHECKS).assert_clean()


# --- power: the same checks on synthetic violating releases ------------------------------------


def _power(
    mechanism: Mechanism, *, n_big: int, shift: int, scale: float, runs: int, seed: int
) -> dict[str, float]:
    """Share of synthetic audits flagged, per check, for a mechanism with `shift` and `scale`."""
    noise, charge = mechanisms.plan_noise(
        mechanism, rho=RHO, epsilon=EPSILON, sensitivity=K, confidence=0.95
    )
    draw = discrete_laplace if mechanism is Mechanism.DISCRETE_LAPLACE else rounded_gaussian
    a = ALPHA / CHECKS
    flagged = {"shift": 0, "privacy": 0, "any": 0}
    rng = np.random.default_rng(seed)
    for _ in range(runs):
        d = BASE_FAIL + draw(rng, scale, n_big)
        n = BASE_FAIL + shift + draw(rng, scale, n_big)
        s = not shift_check(d, n, K, alpha=a / SHIFT_MARGIN).ok
        if mechanism is Mechanism.DISCRETE_LAPLACE:
            p = event_epsilon_lower_bound(d, n, _events(mechanism, noise.scale), alpha=a).epsilon
            p_flag = p > (charge.epsilon or 0.0)
        else:
            p_flag = rho_lower_bound(d, n, alpha=a).rho_lb > charge.rho
        v = not variance_check(d - BASE_FAIL, noise.variance, alpha=a / VARIANCE_MARGIN).ok
        flagged["shift"] += s
        flagged["privacy"] += p_flag
        flagged["any"] += s or p_flag or v
    return {k: v / runs for k, v in flagged.items()}


POWER_RUNS = 200
POWER_CASES = [
    pytest.param(Mechanism.DISCRETE_LAPLACE, QUERIES, id="laplace-node"),
    pytest.param(Mechanism.DISCRETE_GAUSSIAN, QUERIES, id="gaussian-node"),
    pytest.param(Mechanism.DISCRETE_LAPLACE, GRPC_QUERIES, id="laplace-grpc"),
]


@pytest.mark.parametrize(("mechanism", "queries"), POWER_CASES)
def test_audit_power_against_k_plus_one_and_a_2x_violation(
    mechanism: Mechanism, queries: int
) -> None:
    """With each case's draw counts the audit flags K + 1 and a 2x violation in >= 99% of runs.

    2x: epsilon doubled (Laplace scale halved) or rho doubled (Gaussian scale / sqrt 2),
    the shift left at K, so only the privacy-loss check can see it. Power is estimated
    from POWER_RUNS synthetic audits (seeded: a property of the test, not of the node).
    Suppression decided on true totals withholds every edge group in D and none in D':
    the bound that gives is computed exactly.
    """
    noise, charge = mechanisms.plan_noise(
        mechanism, rho=RHO, epsilon=EPSILON, sensitivity=K, confidence=0.95
    )
    n = BIG_GROUPS * queries
    factor = 2.0 if mechanism is Mechanism.DISCRETE_LAPLACE else math.sqrt(2.0)
    correct = _power(mechanism, n_big=n, shift=K, scale=noise.scale, runs=50, seed=1)
    k_plus_one = _power(mechanism, n_big=n, shift=K + 1, scale=noise.scale, runs=POWER_RUNS, seed=2)
    doubled = _power(
        mechanism, n_big=n, shift=K, scale=noise.scale / factor, runs=POWER_RUNS, seed=3
    )
    n_edge = EDGE_GROUPS * queries
    gaussian = mechanism is Mechanism.DISCRETE_GAUSSIAN
    leak = event_epsilon_lower_bound(
        np.full(n_edge, SUPPRESSED),
        np.zeros(n_edge, dtype=np.int64),
        SUPPRESSION_EVENTS,
        alpha=ALPHA / CHECKS,
        delta=DELTA if gaussian else 0.0,
    ).epsilon
    claimed = (
        mechanisms.epsilon_equivalent(charge.rho, DELTA) if gaussian else charge.epsilon or 0.0
    )
    print(
        f"{mechanism.value}, {n} big / {n_edge} edge draws per side; flagged share of "
        f"{POWER_RUNS} synthetic audits: K+1 {k_plus_one}, 2x {doubled}; correct (50 runs) "
        f"{correct}; suppression on true totals: eps_lb {leak:.2f} vs claimed {claimed:.2f}"
    )
    assert k_plus_one["shift"] >= 0.99
    assert doubled["privacy"] >= 0.99
    assert correct["any"] == 0.0
    assert leak > claimed
