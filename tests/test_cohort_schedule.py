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
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
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

# Ten years of monthly runs at three nodes: 120 audits, 360 imports, 10 rings. Measured 130 s
# to 165 s on 2 cores (load ~2-4). About two thirds of it are the ten rings (~11 s each: some
# 190,000 ristretto255 multiplications per ring, mostly for the DP padding rows); the rest is
# the nodes' per-request work, whose ledger reads no longer grow with years of history.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


class Clock:
    """The time every node and the scheduler see."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def _first_import(first_record: dt.date) -> dt.datetime:
    """When a person first reached the node: the first import, or the 1st of the month after
    their first record (each month's export is imported then)."""
    if first_record < FIRST_RUN.date():
        return FIRST_RUN
    month = dt.datetime(first_record.year, first_record.month, 1, tzinfo=UTC)
    return dt.datetime.fromisoformat(f"{add_months(month_of(month), 1)}-01T01:00:00+00:00")


def _last_day_before(month_start: dt.datetime) -> dt.date:
    return (month_start - dt.timedelta(days=1)).date()


@pytest.fixture(scope="module", name="simulation")
def _simulation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    # Real SQLite files, on a memory-backed file system where there is one: ten years are
    # some 6,000 commits per node, and each fsync to disk would cost milliseconds.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="fedaudit-cohort-sim-") as temp:
            yield _simulate(Path(temp))
    else:
        yield _simulate(tmp_path_factory.mktemp("cohort-sim"))


def _simulate(root: Path) -> dict[str, Any]:
    fed = generate_federation(
        root / "fed", municipalities=3, candidates_per_municipality=250, today=dt.date(2037, 2, 1)
    )
    policy = load_policy(POLICY)
    plan = load_plan(POLICY.parent / "plans" / "monthly.yaml")
    clock = Clock(FIRST_RUN)
    credentials = ring_credentials(root / "pki", fed.municipalities, days=366 * (YEARS + 1))
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
    run_seconds: list[float] = []
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
            run_started = time.monotonic()
            records.extend(scheduler.run_due())
            run_seconds.append(time.monotonic() - run_started)
        elapsed = time.monotonic() - started
        loss = {}
        rng = random.Random(13)
        for code, engine in engines.items():
            first = exports[code].first_record()
            present = sorted(c for c, day in first.items() if day < month.date())
            sample = rng.sample(present, min(SAMPLED_PER_NODE, len(present)))
            loss[code] = {}
            for cand in sample:
                seen = _first_import(first[cand])
                cohort = month_of(first[cand])
                loss[code][cand] = (cohort, seen, brute_force_loss(engine, cohort, seen))
        node_spent = {}
        for code, service in services.items():
            with engines[code].connect() as conn:
                keys = sorted(
                    conn.execute(sa.text("SELECT DISTINCT cohort FROM person_cohorts")).scalars()
                )
            node_spent[code] = service.ledger.spent_by_cohort(keys)
        return {
            "node_spent": node_spent,
            "records": records,
            "elapsed": elapsed,
            "run_seconds": run_seconds,
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


def _forecast(simulation: dict[str, Any]) -> Any:
    """The offline forecast of these ten years, from the plan and the nodes' policy alone."""
    policy = simulation["policy"]
    plan = simulation["plan"]
    rules = BudgetRules(
        node="any",
        period_kind=policy.budget_period,
        rho_per_period=policy.requesters[plan.requester].rho_per_period,
        node_share=policy.node_share(plan.requester),
        node_rho_total=policy.node_rho_total,
        max_rho_per_request=policy.max_rho_per_request,
        min_rho_per_query=policy.min_rho_per_query,
        ring_min_rho=policy.ring.min_rho,
        first_cohort=policy.cohort_start,
        ring_padding_rho=policy.ring.padding_rho or 0.0,
    )
    (forecast,) = forecast_cohorts(plan, [rules], FIRST_RUN, YEARS)
    return forecast


def test_ten_years_of_monthly_runs_are_never_refused(simulation: dict[str, Any]) -> None:
    records = simulation["records"]
    runs = simulation["run_seconds"]
    print(
        f"{len(records)} monthly runs in {simulation['elapsed']:.1f} s (the runs alone "
        f"{sum(runs):.1f} s; first year {sum(runs[:12]):.1f} s, last year {sum(runs[-12:]):.1f} s)"
    )
    assert len(records) == 12 * YEARS
    for record in records:
        report = record.report
        assert report["audit"]["status"] == "complete", (
            record.run_id,
            report["audit"]["status_reason"],
        )
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
    # The HTML report names the cohorts too.
    last = simulation["records"][-1]
    html = (last.report_dir / "report.html").read_text(encoding="utf-8")
    pass_cohort = last.report["audit"]["cohorts"]["asked"]["pass_rates"][0]
    assert f"pass_rates about {pass_cohort}" in html


def test_brute_force_loss_of_sampled_persons_stays_within_the_cap(
    simulation: dict[str, Any],
) -> None:
    """Every sampled person's loss, recomputed from the ledger and the query log, is within the
    node's cap and within the per-person bound the offline forecast gives for these ten years."""
    policy = simulation["policy"]
    forecast = _forecast(simulation)
    ring_rho = simulation["plan"].checks.duplicates.budget.rho
    worst = 0.0
    for code, persons in simulation["loss"].items():
        assert len(persons) >= 20, code
        for cand, (cohort, seen, loss) in persons.items():
            assert loss <= policy.node_rho_total + 1e-9, (code, cand, cohort, loss)
            assert loss <= forecast.bound_rho + 1e-9, (code, cand, cohort, loss)
            # Every January's ring read everyone in the registry by then.
            rings = sum(
                1 for y in range(2027, 2027 + YEARS) if dt.datetime(y, 1, 2, tzinfo=UTC) > seen
            )
            assert loss >= ring_rho * rings - 1e-9, (code, cand, cohort, loss)
            worst = max(worst, loss)
    print(f"worst sampled per-person loss {worst:.4g} rho; forecast bound {forecast.bound_rho:.4g}")


def test_the_offline_forecast_matches_what_the_nodes_charged_each_cohort(
    simulation: dict[str, Any],
) -> None:
    """The forecast replays the same ten years from the plan and the policy alone: for every
    cohort that has persons at a node, the node's ledger charged it exactly what the
    forecast says (each question once, and the ring of every January, which a node charges
    to every cohort with persons and the next month's)."""
    forecast = _forecast(simulation)
    compared = 0
    for code, spent in simulation["node_spent"].items():
        for cohort, charged in spent.items():
            if cohort > add_months("2027-01", 12 * YEARS - 2):  # imported by the last run
                continue
            expected = forecast.by_cohort.get(cohort, 0.0)
            assert charged == pytest.approx(expected, abs=1e-9), (code, cohort)
            compared += 1
    assert compared > 100


def test_the_archive_trend_never_holds_a_cohort_twice(simulation: dict[str, Any]) -> None:
    """trend.json (free post-processing of the archived answers) is rebuilt after every run;
    per metric and municipality it holds one point per cohort, in cohort order. (With a few
    persons per cohort most municipality-level rates are withheld as unreliable here; the
    newest-answer rule itself is tested in tests/test_cohort_plan.py.)"""
    trend = json.loads(
        (simulation["archive"] / simulation["plan"].name / TREND_FILE).read_text(encoding="utf-8")
    )
    assert trend["version"] == 1
    for metric, by_municipality in trend["metrics"].items():
        for municipality, points in by_municipality.items():
            cohorts = [tuple(p["cohorts"]) for p in points]
            assert len(cohorts) == len(set(cohorts)), (metric, municipality)
            assert cohorts == sorted(cohorts), (metric, municipality)
