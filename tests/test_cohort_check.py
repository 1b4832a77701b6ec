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
    # Per cohort in 2027-Q1: the January ring (0.35, every cohort), the node's padding of it
    # (0.25, as the node reports it) and one check's question (0.5).
    assert forecast.rho_next == pytest.approx(1.1)


@pytest.mark.parametrize(("padding", "expected"), [(0.5, 1.35), (None, 0.85)])
def test_the_check_counts_the_padding_the_node_reports(
    tmp_path: Path, padding: float | None, expected: float
) -> None:
    """A node reports its ring padding (policy ring.padding_rho; 0 when off), and the live
    walk charges each ring run that, not the default it used to assume."""
    policy = load_policy(POLICY)
    policy = dataclasses.replace(policy, ring=dataclasses.replace(policy.ring, padding_rho=padding))
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    import_bundle(engine, BUNDLE, now=NOW - dt.timedelta(days=1))
    try:
        (forecast,) = _check(NodeService(engine, policy, clock=lambda: NOW)).nodes
    finally:
        engine.dispose()
    assert forecast.rho_next == pytest.approx(expected)


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


# --- a corrected re-import of an old cohort, handled explicitly ----------------------------------


def test_a_reask_after_a_reopened_import_charges_that_cohort_only(tmp_path: Path) -> None:
    """Three nodes run the January slot of the monthly plan. M01 then re-imports corrected
    data and its data officer reopens cohort 2026-12; `Scheduler.reask` asks the archived
    query about it again: M01 charges cohort 2026-12 (and nothing else) once more, M02 and
    M03 (nothing reopened) replay their stored answers for free."""
    from cohort_support import MonthlyExports

    from fedaudit.coordinator.scheduling.incremental import TREND_FILE
    from fedaudit.coordinator.scheduling.schedule import Scheduler
    from fedaudit.synthetic.federation import generate_federation

    clock_now = [dt.datetime(2027, 1, 1, tzinfo=dt.UTC)]
    fed = generate_federation(
        tmp_path / "fed",
        municipalities=3,
        candidates_per_municipality=200,
        today=dt.date(2027, 6, 1),
    )
    policy = load_policy(POLICY)
    services, engines, exports = {}, {}, {}
    for code, bundle in zip(fed.municipalities, fed.bundles, strict=True):
        exports[code] = MonthlyExports(bundle)
        engine = make_engine(f"sqlite:///{tmp_path / code}.db")
        first = exports[code].export_as_of(dt.date(2026, 12, 31), tmp_path / "exp" / code)
        import_bundle(engine, first, now=clock_now[0])
        engines[code] = engine
        services[code] = NodeService(engine, policy, clock=lambda: clock_now[0])
    plan = load_plan(PLAN).with_nodes({c: f"127.0.0.1:{7000 + i}" for i, c in enumerate(services)})

    def transports(p):
        return {c: InProcessNodeTransport(c, s, requester=p.requester) for c, s in services.items()}

    scheduler = Scheduler([plan], transports, tmp_path / "archive", clock=lambda: clock_now[0])
    try:
        clock_now[0] = dt.datetime(2027, 1, 2, 6, 5, tzinfo=dt.UTC)
        (january,) = scheduler.run_due()
        assert january.report["audit"]["status"] == "complete"
        assert january.report["audit"]["cohorts"]["asked"]["pass_rates"] == ["2026-12"]
        keys = ["2026-11", "2026-12"]
        before = {c: s.ledger.spent_by_cohort(keys) for c, s in services.items()}

        # M01's data officer imports a correction and reopens cohort 2026-12.
        clock_now[0] = dt.datetime(2027, 1, 10, tzinfo=dt.UTC)
        corrected = exports["M01"].export_as_of(dt.date(2026, 12, 31), tmp_path / "exp2")
        import_bundle(engines["M01"], corrected, now=clock_now[0], reopen=["2026-12"])
        services["M01"].reload()

        with pytest.raises(ValueError, match="asked about cohort 2019-01"):
            scheduler.reask(plan, "2019-01", "nothing was asked about it")
        record = scheduler.reask(plan, "2026-12", "M01 corrected December")
        report = record.report
        assert report["audit"]["status"] == "complete"
        assert report["audit"]["cohorts"]["asked"] == {"pass_rates": ["2026-12"]}
        assert report["audit"]["cohorts"]["reason"].startswith("re-asked cohort 2026-12")
        after = {c: s.ledger.spent_by_cohort(keys) for c, s in services.items()}
        assert after["M01"]["2026-12"] == pytest.approx(before["M01"]["2026-12"] + 0.5)
        assert after["M01"]["2026-11"] == pytest.approx(before["M01"]["2026-11"])
        for code in ("M02", "M03"):
            assert after[code] == pytest.approx(before[code]), code
        replayed = {
            n["node"]: [q["replayed"] for q in n["queries"]] for n in report["coverage"]["nodes"]
        }
        assert replayed == {"M01": [False], "M02": [True], "M03": [True]}
        # The schedule's progress did not move; the trend was rebuilt from the archive.
        assert scheduler.due() == []
        assert (tmp_path / "archive" / plan.name / TREND_FILE).is_file()
    finally:
        for engine in engines.values():
            engine.dispose()


def test_an_on_demand_run_of_a_cohort_plan_asks_the_cohorts_due_this_month(
    node: NodeService,
) -> None:
    """`audit run` of a cohort plan (no archive): narrowed to the month the run starts in."""
    from fedaudit.coordinator.running.audit import run_audit

    plan = dataclasses.replace(load_plan(PLAN), min_answering_nodes=1)
    transport = InProcessNodeTransport("T01", node, requester=plan.requester)
    report = run_audit(plan, {"T01": transport}, run_id="on-demand", clock=lambda: NOW)
    cohorts = report["audit"]["cohorts"]
    assert cohorts["run_month"] == "2026-12"
    assert cohorts["asked"] == {
        "pass_rates": ["2026-11"],
        "employment": ["2025-11"],
        "recognition": ["2026-07"],
    }
    assert "duplicates" in cohorts["left_out"]  # December: the ring runs in January
    assert report["duplicates"]["status"] == "not_run"
    spent = node.ledger.spent_by_cohort(["2025-11", "2026-07", "2026-10", "2026-11"])
    assert spent["2026-11"] == pytest.approx(0.5)
    assert spent["2025-11"] == pytest.approx(0.5)
    assert spent["2026-07"] == pytest.approx(0.5)
    assert spent["2026-10"] == pytest.approx(0.0)  # a cohort no query read
