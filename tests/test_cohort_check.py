"""`schedule check` of a cohort plan against a live node (real NodeService on SQLite).

The live check sees only what the node shows the requester (its caps, and what is left for
the cohort that binds), so it walks the plan's runs per cohort assuming every cohort has
spent as much as that one. The shipped monthly plan fits a fresh node; after a requester
has spent most of a quarter's cap on a query over every cohort, the check refuses the
next run and names the cohort that binds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from fedaudit.coordinator.planning.plan import load_plan
from fedaudit.coordinator.scheduling.cohort_check import forecast_live
from fedaudit.inprocess import InProcessNodeTransport
from fedaudit.node.domain import Mechanism, QuerySpec
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import load_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.store.db import make_engine

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "deploy" / "plans" / "monthly.yaml"
POLICY = ROOT / "deploy" / "policy.monthly.yaml"
BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
NOW = dt.datetime(2026, 12, 20, 12, tzinfo=dt.UTC)


@pytest.fixture(name="node")
def _node(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    import_bundle(engine, BUNDLE, now=NOW - dt.timedelta(days=1))
    service = NodeService(engine, load_policy(POLICY), clock=lambda: NOW)
    yield service
    engine.dispose()


def _check(service: NodeService):
    plan = load_plan(PLAN)
    transport = InProcessNodeTransport("T01", service, requester=plan.requester)
    return forecast_live([plan], {plan.name: {"T01": transport}}, NOW)


def test_the_monthly_plan_fits_a_fresh_node(node: NodeService) -> None:
    result = _check(node)
    assert result.unreachable == ()
    assert result.ok, result.problems()
    (forecast,) = result.nodes
    assert forecast.period == "2026-Q4"
    assert forecast.runs_current == 0  # the next slot is 2027-01-02
    assert forecast.runs_next == 3
    # Per cohort in 2027-Q1: the January ring (every cohort) and one check's question (0.5).
    assert forecast.rho_next == pytest.approx(1.0)


def test_a_cohort_with_little_left_in_the_period_makes_the_check_refuse(
    node: NodeService,
) -> None:
    """1.8 of the quarter's 2.0 spent on every cohort: 2027-Q1's first run would need 0.5 of
    the cohort asked; the walk names the node, the run and the cohort."""
    spec = QuerySpec(
        template="assessment_results",
        group_by=(),
        filters={},
        params={},
        mechanism=Mechanism.DISCRETE_GAUSSIAN,
        rho=0.9,
        epsilon=None,
        confidence=0.95,
    )
    node.query("oversight-board", "spend-1", spec)
    node.query("oversight-board", "spend-2", dataclasses.replace(spec, group_by=("sex",)))
    # Spent in 2026-Q4; the plan's next runs are in 2027-Q1, where each cohort starts afresh.
    result = _check(node)
    assert result.ok, "spending in 2026-Q4 must not block runs in 2027-Q1"
    jan = dt.datetime(2027, 1, 1, 12, tzinfo=dt.UTC)
    node2 = NodeService(node.engine, load_policy(POLICY), clock=lambda: jan)
    # Other questions than in December (the same ones would be replayed for free).
    node2.query("oversight-board", "spend-3", dataclasses.replace(spec, group_by=("eqf_level",)))
    node2.query(
        "oversight-board", "spend-4", dataclasses.replace(spec, group_by=("citizenship_group",))
    )
    plan = load_plan(PLAN)
    transport = InProcessNodeTransport("T01", node2, requester=plan.requester)
    result = forecast_live([plan], {plan.name: {"T01": transport}}, jan)
    assert not result.ok
    (forecast,) = result.nodes
    assert forecast.shortfall is not None
    assert forecast.shortfall.run_at == dt.datetime(2027, 1, 2, 6, tzinfo=dt.UTC)
    assert "per cohort:" in forecast.message
    assert "of cohort 2026-" in forecast.message
