"""Black-box privacy audit of cohort-restricted queries: a person's loss is their cohort's charge.

The registry holds many independent copies of a neighbouring pair, as in
`test_dp_blackbox`: providers `D*` (database D) and `N*` (the same plus one person with
4 failed assessments, D'). Every group has persons in two cohorts, March 2024 (`A`) and
May 2024 (`B`); the added person is in cohort A. The node answers, through its whole
path (`NodeService.query`: policy, canonical form, ledger, the cohort join and the
per-person bound in SQL, OpenDP noise), discrete Laplace queries grouped by provider:

- restricted to cohort A: the added person's records move the released cell by the
  declared K, and the epsilon measured from the releases is within what the ledger
  charged **cohort A** per query;
- restricted to cohort B: the ledger charges cohort A nothing, and the person's measured
  loss is nothing: the cell does not move, and no event separates D from D' (epsilon
  lower bound <= 0).

So the audit measures, from the outside, that a person's loss is bounded by what their
own cohort was charged (parallel composition), not by what was charged in total.

False-failure rate <= 1e-4 for the test (Bonferroni over its 4 statistical checks; the
z-test runs at a further margin, calibrated for `test_dp_blackbox`). Power: the event
bound for cohort A is the same check with the same scale and draw count range as
`test_dp_blackbox`'s Laplace audit, whose power it states. For cohort B, measured once
with the cohort filter left out of the SQL (the node then counts the cohort-A person
in a cohort-B query): shift 1.95 against an allowed +-0.38, and an epsilon lower bound
of 0.60 where 0 is allowed, so both checks fail that node.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
from collections.abc import Iterator

import numpy as np
import pytest
import structlog
from dp_audit import event_epsilon_lower_bound, shift_check
from factories import RegistryFactory, record_import
from sqlalchemy import insert, update

from fedaudit.node.domain import Mechanism, QuerySpec
from fedaudit.node.privacy.policy import Policy, parse_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.store.db import create_schema, make_engine
from fedaudit.node.store.models import REGISTRY_TABLES, LedgerEntry

TEMPLATE = "assessment_results"
K = 2
EXTRA_RECORDS = 4
BASE_FAIL = 3
"""Failed persons (one record each) per group and cohort."""
PASS_PERSONS = 5
GROUPS = 300
QUERIES = 8
"""Per restriction: 2,400 draws per side."""
EPSILON = 1.0
A, B = "2024-03", "2024-05"
REFERENCE = dt.date(2024, 6, 30)
ALPHA = 1e-4
CHECKS = 4
SHIFT_MARGIN = 10
"""As in test_dp_blackbox: the Laplace z-test's measured tail is up to 3x the normal's."""

_FRESH = itertools.count()


def _registry() -> RegistryFactory:
    reg = RegistryFactory(municipality_code="M01")
    q = reg.qualification()

    def person(provider: str, month: str, result: str, records: int) -> None:
        c = reg.candidate()
        for j in range(records):
            reg.assessment(c, q, provider, f"{month}-{1 + j:02d}", result=result)

    for side in ("D", "N"):
        for g in range(GROUPS):
            p = reg.provider(f"{side}{g:04d}")
            for month in (A, B):
                for _ in range(PASS_PERSONS):
                    person(p, month, "pass", 1)
                for _ in range(BASE_FAIL):
                    person(p, month, "fail", 1)
            if side == "N":
                person(p, A, "fail", EXTRA_RECORDS)
    return reg


def _policy() -> Policy:
    return parse_policy(
        {
            "version": 1,
            "requesters": {"auditor": {"rho_per_period": 1_000_000.0}},
            "budget": {"period": "year", "node_rho_total": 1_000_000.0, "max_rho_per_request": 1.0},
            "reliability": {"suppress_below": 0},
            "bounds": {TEMPLATE: K},
            "periods": {"first": 2024, "last": 2024},
        },
        source="<cohort audit policy>",
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('cohort-audit') / 'node.db'}")
    create_schema(engine)
    reg = _registry()
    with engine.begin() as conn:
        for model in REGISTRY_TABLES:
            rows = reg.rows_of(model)
            if rows:
                conn.execute(insert(model.__table__), rows)
    record_import(engine, reg, REFERENCE)  # cohorts and digests by the importer's code
    yield NodeService(engine, _policy())
    engine.dispose()


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _sample(node: NodeService, cohort: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """QUERIES fresh answers restricted to `cohort`: the fail cell of every D and N group,
    and the rho the ledger charged cohorts A and B meanwhile."""
    before = node.ledger.spent_by_cohort([A, B])
    d, n = [], []
    for _ in range(QUERIES):
        spec = QuerySpec(
            TEMPLATE,
            group_by=("provider",),
            filters={"cohort": (cohort,)},
            mechanism=Mechanism.DISCRETE_LAPLACE,
            epsilon=EPSILON,
            confidence=0.5 + next(_FRESH) / 1000,
        )
        answer = node.query("auditor", f"cohort-audit-{next(_FRESH)}", spec)
        assert not answer.replayed
        assert answer.noise.sensitivity_l1 == K
        for cell in answer.cells:
            if cell.category == "fail" and cell.keys[0][:1] in "DN":
                (d if cell.keys[0][0] == "D" else n).append(cell.estimate)
        with node.engine.begin() as conn:  # retire the answer (its charge stands)
            conn.execute(
                update(LedgerEntry).where(LedgerEntry.state == "released").values(state="failed")
            )
    after = node.ledger.spent_by_cohort([A, B])
    return (
        np.asarray(d, dtype=np.int64),
        np.asarray(n, dtype=np.int64),
        after[A] - before[A],
        after[B] - before[B],
    )


def _events(scale: float) -> list[tuple[str, object]]:
    """Threshold events on the fail cell, fixed from the declared mechanism before sampling."""
    events: list[tuple[str, object]] = []
    for j in (0, 1, 2, 4):
        t = BASE_FAIL + K + round(j * scale / 2)
        events.append((f"X >= {t}", lambda x, t=t: x >= t))
        u = BASE_FAIL - round(j * scale / 2)
        events.append((f"X <= {u}", lambda x, u=u: x <= u))
    return events


def test_a_persons_measured_loss_is_bounded_by_their_cohorts_charge(node: NodeService) -> None:
    alpha = ALPHA / CHECKS
    scale = K / EPSILON
    lines: list[str] = []
    failures: list[str] = []

    def check(ok: bool, line: str) -> None:
        lines.append(line)
        if not ok:
            failures.append(line)

    # Restricted to the person's own cohort A.
    d, n, charged_a, charged_b = _sample(node, A)
    assert len(d) == len(n) == GROUPS * QUERIES
    assert charged_b == 0.0  # a cohort-A query charges no other cohort
    eps_a = math.sqrt(2 * charged_a / QUERIES)  # per query, charged as rho = eps^2 / 2
    assert eps_a == pytest.approx(EPSILON, rel=1e-9)
    shift = shift_check(d, n, K, alpha=alpha / SHIFT_MARGIN)
    check(shift.ok, f"cohort A: shift {shift.shift:.3f} vs K={K} (+-{shift.bound:.3f})")
    bound = event_epsilon_lower_bound(d, n, _events(scale), alpha=alpha)
    check(
        bound.epsilon <= eps_a,
        f"cohort A: eps lower bound {bound.epsilon:.3f} <= cohort A's charge {eps_a:.3f} "
        f"({bound.event}, {bound.ordering}, {bound.counts})",
    )

    # Restricted to the other cohort B: cohort A is charged nothing, and loses nothing.
    d, n, charged_a, charged_b = _sample(node, B)
    assert charged_a == 0.0
    assert charged_b == pytest.approx(QUERIES * EPSILON**2 / 2, rel=1e-9)
    shift = shift_check(d, n, 0, alpha=alpha / SHIFT_MARGIN)
    check(shift.ok, f"cohort B: shift {shift.shift:.3f} vs 0 (+-{shift.bound:.3f})")
    bound = event_epsilon_lower_bound(d, n, _events(scale), alpha=alpha)
    check(
        bound.epsilon <= 0.0,
        f"cohort B: eps lower bound {bound.epsilon:.3f} <= cohort A's charge 0 "
        f"({bound.event}, {bound.ordering}, {bound.counts})",
    )
    print("\n".join(lines))
    assert not failures, "cohort privacy audit failed:\n" + "\n".join(failures)
