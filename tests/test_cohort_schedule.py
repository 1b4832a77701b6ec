"""Ten years of the shipped monthly schedule in compressed time, under cohort accounting.

Three municipalities on real SQLite files. Each month every municipality exports its
registry as it stood at the end of the month before (tests/cohort_support.py cuts one long
synthetic registry, so every month adds that month's new persons: a new cohort), the nodes
import it, and the scheduler runs the slot of deploy/plans/monthly.yaml against nodes
holding deploy/policy.monthly.yaml: pass rates of the newest cohort, employment of the
cohort twelve months older, recognition of the cohort whose 90-day limit has passed, and
the blinding ring every January. M01 is a real gRPC server on loopback (queries and ring);
M02 and M03 are reached in-process. The nodes and the scheduler share an injected clock, so
ten years take seconds.

What must hold:
- no node refuses anything over the ten years (every run complete, the ring complete in
  every January and left out, with its reason, in every other month);
- a run asks only cohorts not answered before (each cohort once per check);
- for sampled persons at each node, the loss computed by brute force (every charge whose
  logged query could read them: cohort-restricted queries only for their own cohort, every
  other charge for everyone) never exceeds the node's cap, nor the offline forecast's
  per-person bound;
- the archive's trend holds one entry per cohort asked.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import structlog
from cohort_support import MonthlyExports, brute_force_loss
from dedup_support import ring_credentials

from fedaudit.coordinator.planning.cohorts import add_months, month_of
from fedaudit.coordinator.planning.plan import load_plan
from fedaudit.coordinator.ring.relay import GrpcDedupTransport
from fedaudit.coordinator.running.transport import GrpcNodeTransport
from fedaudit.coordinator.scheduling.cohort_forecast import BudgetRules, forecast_cohorts
from fedaudit.coordinator.scheduling.incremental import TREND_FILE
from fedaudit.coordinator.scheduling.schedule import Scheduler
from fedaudit.inprocess import InProcessDedupTransport, InProcessNodeTransport
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import load_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.ring.service import DedupService
from fedaudit.node.server import start_node_server
from fedaudit.node.store.db import make_engine
from fedaudit.synthetic.federation import generate_federation

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "deploy" / "plans" / "monthly.yaml"
POLICY = ROOT / "deploy" / "policy.monthly.yaml"
UTC = dt.UTC
FIRST_RUN = dt.datetime(2027, 1, 1, tzinfo=UTC)
YEARS = 10
SAMPLED_PER_NODE = 40


class Clock:
    """The time every node and the scheduler see."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def _last_day_before(month_start: dt.datetime) -> dt.date:
    return (month_start - dt.timedelta(days=1)).date()


@pytest.fixture(scope="module", name="simulation")
def _simulation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    root: Path = tmp_path_factory.mktemp("cohort-sim")
    fed = generate_federation(
        root / "fed", municipalities=3, candidates_per_municipality=600, today=dt.date(2037, 2, 1)
    )
    policy = load_policy(POLICY)
    plan = load_plan(POLICY.parent / "plans" / "monthly.yaml")
    clock = Clock(FIRST_RUN)
    credentials = ring_credentials(root / "pki", fed.municipalities)
    exports = {c: MonthlyExports(b) for c, b in zip(fed.municipalities, fed.bundles, strict=True)}
    engines, services, rings, servers = {}, {}, {}, {}
    for code in fed.municipalities:
        engine = make_engine(f"sqlite:///{root / code}.db")
        first = exports[code].export_as_of(_last_day_before(FIRST_RUN), root / "exp" / code / "0")
        import_bundle(engine, first, now=FIRST_RUN)
        service = NodeService(engine, policy, clock=clock)
        ring = DedupService(
            engine, policy, ledger=service.ledger, identity=credentials[code], clock=clock
        )
        engines[code], services[code], rings[code] = engine, service, ring
    # M01 is served over real gRPC on loopback: queries and the ring.
    servers["M01"] = start_node_server(
        services["M01"], host="127.0.0.1", port=0, dedup=rings["M01"]
    )
    address = f"127.0.0.1:{servers['M01'].port}"
    plan = plan.with_nodes({c: address if c == "M01" else "127.0.0.1:1" for c in services})

    def transports(p: Any) -> dict[str, Any]:
        return {
            c: GrpcNodeTransport(c, address, requester=p.requester)
            if c == "M01"
            else InProcessNodeTransport(c, services[c], requester=p.requester)
            for c in services
        }

    def ring_transports(p: Any) -> dict[str, Any]:
        return {
            c: GrpcDedupTransport(c, address, requester=p.requester)
            if c == "M01"
            else InProcessDedupTransport(c, rings[c], requester=p.requester)
            for c in services
        }

    scheduler = Scheduler(
        [plan], transports, root / "archive", clock=clock, dedup_transports=ring_transports
    )
    records = []
    started = time.monotonic()
    month = FIRST_RUN
    try:
        for index in range(12 * YEARS):
            month = dt.datetime.fromisoformat(f"{add_months('2027-01', index)}-01T00:00:00+00:00")
            if index:  # the end of last month's export, imported on the 1st
                cut = _last_day_before(month)
                for code, engine in engines.items():
                    bundle = exports[code].export_as_of(cut, root / "exp" / code / str(index))
                    import_bundle(engine, bundle, now=month + dt.timedelta(hours=1))
                    services[code].reload()
            clock.now = month.replace(day=2, hour=6, minute=5)
            records.extend(scheduler.run_due())
        elapsed = time.monotonic() - started
        loss = {}
        rng = random.Random(13)
        for code, engine in engines.items():
            first = exports[code].first_record()
            present = sorted(c for c, day in first.items() if day < month.date())
            sample = rng.sample(present, min(SAMPLED_PER_NODE, len(present)))
            loss[code] = {
                cand: (month_of(first[cand]), brute_force_loss(engine, month_of(first[cand])))
                for cand in sample
            }
        return {
            "records": records,
            "elapsed": elapsed,
            "loss": loss,
            "policy": policy,
            "plan": plan,
            "archive": root / "archive",
        }
    finally:
        for server in servers.values():
            server.stop(grace=None)
        for engine in engines.values():
            engine.dispose()


def test_ten_years_of_monthly_runs_are_never_refused(simulation: dict[str, Any]) -> None:
    records = simulation["records"]
    print(f"{len(records)} monthly runs in {simulation['elapsed']:.1f} s")
    assert len(records) == 12 * YEARS
    for record in records:
        report = record.report
        assert report["audit"]["status"] == "complete", (record.run_id, report["audit"])
        for node in report["coverage"]["nodes"]:
            assert node["status"] == "answered", (record.run_id, node)
        ring = report["duplicates"]
        if record.slot.month == 1:
            assert ring["status"] == "complete", (record.run_id, ring)
        else:
            assert ring["status"] == "not_run"
            assert "runs every 12 months" in ring["reason"]


def test_each_cohort_is_asked_once_per_check(simulation: dict[str, Any]) -> None:
    asked: Counter[tuple[str, str]] = Counter()
    for record in simulation["records"]:
        for check, months in record.report["audit"]["cohorts"]["asked"].items():
            asked.update((check, m) for m in months)
    assert asked, "no run asked any cohort"
    assert max(asked.values()) == 1
    assert {c for c, _ in asked} == {"pass_rates", "employment", "recognition"}
    assert sum(1 for c, _ in asked if c == "pass_rates") == 12 * YEARS


def test_brute_force_loss_of_sampled_persons_stays_within_the_cap(
    simulation: dict[str, Any],
) -> None:
    """Every sampled person's loss, recomputed from the ledger and the query log, is within the
    node's cap and within the per-person bound the offline forecast gives for these ten years."""
    policy = simulation["policy"]
    rules = BudgetRules(
        node="any",
        period_kind=policy.budget_period,
        rho_per_period=policy.requesters["oversight-board"].rho_per_period,
        node_share=policy.node_share("oversight-board"),
        node_rho_total=policy.node_rho_total,
        max_rho_per_request=policy.max_rho_per_request,
        min_rho_per_query=policy.min_rho_per_query,
        ring_min_rho=policy.ring.min_rho,
        first_cohort=policy.cohort_start,
    )
    (forecast,) = forecast_cohorts(simulation["plan"], [rules], FIRST_RUN, YEARS)
    worst = 0.0
    for code, persons in simulation["loss"].items():
        assert len(persons) >= 20, code
        for cand, (cohort, loss) in persons.items():
            assert loss <= policy.node_rho_total + 1e-9, (code, cand, cohort, loss)
            assert loss <= forecast.bound_rho + 1e-9, (code, cand, cohort, loss)
            # Ten Januaries of the ring read everyone present by then.
            assert loss >= 0.5 * sum(1 for y in range(2027, 2037) if f"{y}-01" >= cohort) - 1e-9
            worst = max(worst, loss)
    print(f"worst sampled per-person loss {worst:.4g} rho; forecast bound {forecast.bound_rho:.4g}")


def test_the_archive_trend_has_one_entry_per_cohort(simulation: dict[str, Any]) -> None:
    trend = json.loads(
        (simulation["archive"] / simulation["plan"].name / TREND_FILE).read_text(encoding="utf-8")
    )
    series = trend["metrics"]["pass_rate"]
    cohorts = [tuple(entry["cohorts"]) for entry in next(iter(series.values()))]
    assert len(cohorts) == len(set(cohorts))
    assert len(cohorts) >= 12 * YEARS - 12  # a cohort without persons releases no municipality row
