"""Scheduled compliance checks: cron slots, archive and index, alerts, budget forecast, restarts.

The scheduler tests run months of slots in compressed time: real NodeServices on real
SQLite files share an injected clock with the scheduler, and a fake `sleep` moves that
clock instead of waiting. Each municipality imports a fresh data version before every
slot (as monthly exports would), so every run is really charged at the nodes.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedaudit.audit_reports.render import validate_report
from fedaudit.audit_reports.wording import KIND_LABELS, subject_label
from fedaudit.cli.main import main
from fedaudit.coordinator.planning.plan import AuditPlan, parse_plan
from fedaudit.coordinator.running.audit import run_audit
from fedaudit.coordinator.running.transport import GrpcNodeTransport
from fedaudit.coordinator.scheduling.alerts import WebhookNotifier, evaluate_alert
from fedaudit.coordinator.scheduling.archive import Archive
from fedaudit.coordinator.scheduling.forecast import (
    ScheduledCost,
    forecast,
    forecast_plans,
    parse_period,
)
from fedaudit.coordinator.scheduling.schedule import (
    Scheduler,
    latest_slot,
    read_state,
    run_id_for,
    slots_between,
)
from fedaudit.inprocess import InProcessNodeTransport
from fedaudit.node.domain import BudgetStatus
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.store.db import make_engine
from fedaudit.synthetic.federation import generate_federation

REQUESTER = "oversight-board"
UTC = dt.UTC
PLAN_DOC: dict[str, Any] = {
    "name": "twice-monthly",
    "requester": REQUESTER,
    "confidence": 0.95,
    "min_answering_nodes": 2,
    "schedule": "0 6 1,15 * *",
    "checks": {
        "pass_rates": {"rho": 0.1, "tolerance": 0.05},
        "employment": {"rho": 0.2, "tolerance": 0.10, "months_after": 12},
    },
}
RUN_COST = 0.3


def _plan(**changes: Any) -> AuditPlan:
    return parse_plan({**PLAN_DOC, **changes}, source="<test plan>")


class FakeTime:
    """A shared clock; `sleep` jumps it forward and asks to stop once past `until`."""

    def __init__(self, start: dt.datetime, until: dt.datetime) -> None:
        self.now = start
        self.until = until
        self.sleeps: list[float] = []

    def __call__(self) -> dt.datetime:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.sleeps.append(seconds)
        self.now += dt.timedelta(seconds=seconds)
        return self.now > self.until


class Federation:
    """Three municipalities as real NodeServices on SQLite, sharing the test's clock."""

    def __init__(self, bundles: list[Path], tmp: Path, clock: FakeTime, caps: dict[str, float]):
        self.clock = clock
        self.bundles = {b.name: b for b in bundles}
        self.engines = {}
        self.services = {}
        self.down: set[str] = set()
        for name, bundle in self.bundles.items():
            engine = make_engine(f"sqlite:///{tmp / (name + '.db')}")
            import_bundle(engine, bundle)
            policy = example_policy(
                {REQUESTER: caps.get(name, 1.0)}, period="month", node_rho_total=100.0
            )
            self.engines[name] = engine
            self.services[name] = NodeService(engine, policy, clock=clock)

    def new_exports(self) -> None:
        """Every municipality imports a new data version (so replays by content do not apply)."""
        for name, engine in self.engines.items():
            import_bundle(engine, self.bundles[name])
            self.services[name].reload()

    def transports(self, plan: AuditPlan) -> dict[str, Any]:
        self.new_exports()
        out: dict[str, Any] = {}
        for name, service in self.services.items():
            if name in self.down:
                out[name] = GrpcNodeTransport(
                    name, f"127.0.0.1:{_closed_port()}", requester=plan.requester, retries=0
                )
            else:
                out[name] = InProcessNodeTransport(name, service, requester=plan.requester)
        return out

    def spent(self, name: str) -> float:
        return self.services[name].ledger.status(REQUESTER, self.clock()).requester_rho_spent

    def close(self) -> None:
        for engine in self.engines.values():
            engine.dispose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", name="bundles")
def _bundles(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three synthetic municipalities; M02 is the planted low-employment town."""
    out = tmp_path_factory.mktemp("federation")
    fed = generate_federation(out, municipalities=3, candidates_per_municipality=1200)
    return list(fed.bundles)


@pytest.fixture(name="webhook")
def _webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server on 127.0.0.1 that records every JSON body POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


# --- cron arithmetic --------------------------------------------------------------------------


def test_slots_and_run_ids_follow_the_cron_expression() -> None:
    """Slots are cron times in UTC; the run id names plan and slot; latest includes `now`."""
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    slots = list(slots_between("0 6 1,15 * *", start, dt.datetime(2027, 3, 1, tzinfo=UTC)))
    assert [s.strftime("%m-%d %H") for s in slots] == [
        "01-01 06",
        "01-15 06",
        "02-01 06",
        "02-15 06",
    ]
    at = dt.datetime(2027, 1, 15, 6, 0, 0, 500, tzinfo=UTC)
    assert latest_slot("0 6 1,15 * *", at) == dt.datetime(2027, 1, 15, 6, tzinfo=UTC)
    assert run_id_for("p", slots[0]) == "p-20270101T0600Z"


# --- the compressed-time scenario -------------------------------------------------------------


def test_scheduler_runs_slots_over_several_periods(
    bundles: list[Path], tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    """Slots run on time; budget refusal, renewal, an outage, missed slots and alerts behave."""
    url, received = webhook
    clock = FakeTime(dt.datetime(2027, 1, 1, 6, tzinfo=UTC), dt.datetime(2027, 2, 20, tzinfo=UTC))
    fed = Federation(bundles, tmp_path, clock, caps={"M03": 2 * RUN_COST + 0.05})
    plan = _plan()
    archive = tmp_path / "archive"
    scheduler = Scheduler(
        [plan],
        fed.transports,
        archive,
        clock=clock,
        sleep=clock.sleep,
        fail_on="warning",
        notifier=WebhookNotifier(url, timeout=2.0, retries=1, backoff=0.0),
    )
    try:
        # January: slot 1 runs; then an ad-hoc audit by the same board uses up M03's month.
        first = scheduler.run_forever(max_runs=1)
        assert [r.slot for r in first] == [dt.datetime(2027, 1, 1, 6, tzinfo=UTC)]
        adhoc = run_audit(plan, fed.transports(plan), run_id="adhoc-jan", clock=clock)
        assert adhoc["audit"]["status"] == "complete"
        assert fed.spent("M03") == pytest.approx(2 * RUN_COST)

        # Jan 15 (M03 refused, budget), Feb 1 (renewed: all answer), Feb 15 (M01 down).
        def outage_on_feb_15(plan: AuditPlan) -> dict[str, Any]:
            fed.down = {"M01"} if clock().day == 15 and clock().month == 2 else set()
            return fed.transports(plan)

        scheduler._transports = outage_on_feb_15  # same scheduler, new node conditions
        records = first + scheduler.run_forever()
    finally:
        fed.close()

    assert [r.run_id for r in records] == [
        "twice-monthly-20270101T0600Z",
        "twice-monthly-20270115T0600Z",
        "twice-monthly-20270201T0600Z",
        "twice-monthly-20270215T0600Z",
    ]
    # The scheduler slept exactly until each next slot.
    assert clock.sleeps[:3] == [14 * 86400.0, 17 * 86400.0, 14 * 86400.0]
    coverage = [
        {n["node"]: (n["status"], n["reason"]) for n in r.report["coverage"]["nodes"]}
        for r in records
    ]
    assert coverage[1]["M03"] == ("refused", "BUDGET_EXHAUSTED")
    assert records[1].status == "partial"
    assert coverage[2]["M03"] == ("answered", ""), "the requester budget renewed on Feb 1"
    assert coverage[3]["M01"][0] == "unavailable"
    assert records[3].status == "partial"
    assert "M01" in records[3].report["audit"]["status_reason"]
    for r in records:
        validate_report(r.report)
        assert (r.report_dir / "report.json").is_file()
        assert (r.report_dir / "report.html").is_file()

    # Alerts: partial runs alert as incomplete and exit 3 (DESIGN.md 6.2); complete runs
    # with findings at/above warning alert and exit 1.
    assert "incomplete" in records[1].alert.reasons
    assert "incomplete" in records[3].alert.reasons
    for r in records:
        hit = any(f["severity"] in ("warning", "critical") for f in r.report["findings"])
        partial = r.status != "complete"
        assert r.exit_code == (3 if partial else 1 if hit else 0)
        assert (r.alert is not None and "findings" in r.alert.reasons) == hit
    flagged = [r for r in records if hit_at_warning(r)]
    assert flagged, "M02's planted employment gap is found in at least one run"
    assert any(
        f["kind"] == "employment_gap" and f["subject"]["municipality"] == "M02"
        for r in flagged
        for f in r.report["findings"]
    )
    by_run = {body["run_id"]: body for body in received}
    assert set(by_run) == {r.run_id for r in records if r.alert is not None}
    body = by_run[records[3].run_id]
    assert body["status"] == "partial"
    assert "incomplete" in body["reasons"]
    assert body["report"].endswith("report.html")
    assert Path(body["report"]).is_file()
    for f in by_run[flagged[0].run_id]["findings"]:
        assert set(f) == {"kind", "severity", "subject"}, "only kinds, subjects and severities"

    # The index lists every archived run, links each report, and draws a trend.
    index = (archive / "index.html").read_text(encoding="utf-8")
    for r in records:
        assert r.run_id in index
        link = f'href="{r.report_dir.relative_to(archive)}/report.html"'
        assert link in index
    assert index.count('<tr class="run">') == 4
    assert "<svg" in index
    assert "http://" not in index
    assert "https://" not in index
    _assert_index_states(index, [r.report for r in records])
    assert read_state(archive, plan.name)["last_completed_slot"] == "2027-02-15T06:00:00Z"


def _assert_index_states(index: str, reports: list[dict[str, Any]]) -> None:
    """Each finding of the last two runs shows the state the rules give it in the index.

    Flagged in the latest run: new (not in the run before) or persisting; flagged only in
    the run before: resolved if the latest run reached its municipality, else not checked.
    """

    def keyed(report: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
        return {(f["kind"], *sorted(f["subject"].items())): f for f in report["findings"]}

    latest, previous = keyed(reports[-1]), keyed(reports[-2])
    answered = {n["node"] for n in reports[-1]["coverage"]["nodes"] if n["status"] == "answered"}
    expected = {k: ("persisting" if k in previous else "new") for k in latest}
    for key, finding in previous.items():
        if key not in latest:
            reached = finding["subject"].get("municipality") in answered
            expected[key] = "resolved" if reached else "not_checked"
    assert expected, "the scenario flags something in its last two runs"
    for key, state in expected.items():
        finding = latest.get(key) or previous[key]
        row = (
            rf'<tr class="state-row-{state}">\s*<th scope="row">'
            rf"{re.escape(subject_label(finding['subject']))}</th>\s*"
            rf'<td data-label="Finding">{re.escape(KIND_LABELS[finding["kind"]])}</td>'
        )
        assert re.search(row, index), (state, finding["kind"], finding["subject"])


def test_missed_slots_after_downtime_run_once_and_say_so(
    bundles: list[Path], tmp_path: Path
) -> None:
    """After six weeks down, only the most recent slot runs, naming the slots it stands in for."""
    clock = FakeTime(dt.datetime(2027, 1, 1, 6, tzinfo=UTC), dt.datetime(2027, 1, 2, tzinfo=UTC))
    fed = Federation(bundles, tmp_path, clock, caps={})
    archive = tmp_path / "archive"
    try:
        first = Scheduler([_plan()], fed.transports, archive, clock=clock).run_due()
        clock.now = dt.datetime(2027, 2, 16, 9, tzinfo=UTC)  # down from Jan 1 to Feb 16
        later = Scheduler([_plan()], fed.transports, archive, clock=clock).run_due()
        again = Scheduler([_plan()], fed.transports, archive, clock=clock).run_due()
    finally:
        fed.close()
    assert len(first) == 1
    assert len(later) == 1
    assert again == []
    assert later[0].slot == dt.datetime(2027, 2, 15, 6, tzinfo=UTC)
    assert [s.strftime("%m-%d") for s in later[0].missed] == ["01-15", "02-01"]
    assert read_state(archive, "twice-monthly")["skipped_slots"] == [
        "2027-01-15T06:00:00Z",
        "2027-02-01T06:00:00Z",
    ]
    assert later[0].alert is None or "incomplete" not in later[0].alert.reasons


def hit_at_warning(record: Any) -> bool:
    """Whether a run has a finding at or above warning (whatever its exit code)."""
    return any(f["severity"] in ("warning", "critical") for f in record.report["findings"])


class _CrashingArchive(Archive):
    """An archive whose disk 'fills up' on the first store: the crash after the charge."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.crashed = False

    def store(self, report: Any, *, slot: dt.datetime) -> Path:
        if not self.crashed:
            self.crashed = True
            raise OSError(28, "No space left on device")
        return super().store(report, slot=slot)


def test_restarted_scheduler_replays_the_slot_without_charging_again(
    bundles: list[Path], tmp_path: Path
) -> None:
    """A slot re-run after a crash replays stored answers: no node is charged twice."""
    clock = FakeTime(
        dt.datetime(2027, 1, 1, 6, 30, tzinfo=UTC), dt.datetime(2027, 1, 2, tzinfo=UTC)
    )
    fed = Federation(bundles, tmp_path, clock, caps={})
    archive = _CrashingArchive(tmp_path / "archive")
    plan = _plan()
    try:
        with pytest.raises(OSError, match="No space left"):
            Scheduler([plan], fed.transports, archive, clock=clock).run_due()
        spent = {n: fed.spent(n) for n in fed.services}
        assert spent == pytest.approx(dict.fromkeys(fed.services, RUN_COST))
        assert read_state(archive.root, plan.name) == {}, "the slot is not marked done"
        # Restart (a new data version was imported meanwhile; transports() imports one too).
        [record] = Scheduler([plan], fed.transports, archive, clock=clock).run_due()
        assert record.run_id == "twice-monthly-20270101T0600Z"
        assert {n: fed.spent(n) for n in fed.services} == pytest.approx(spent)
        assert all(n["rho"] == 0 and n["queries"] == 0 for n in record.report["privacy"]["nodes"])
        # Control: the same plan under another run id on the new data is charged.
        other = run_audit(plan, fed.transports(plan), run_id="other", clock=clock)
        assert all(n["rho"] > 0 for n in other["privacy"]["nodes"])
    finally:
        fed.close()
    assert read_state(archive.root, plan.name)["last_completed_slot"] == "2027-01-01T06:00:00Z"


# --- budget forecast --------------------------------------------------------------------------


def _budget(period: str, remaining: float, cap: float = 1.0, node: float = 100.0) -> BudgetStatus:
    return BudgetStatus(
        period=period,
        requester_rho_cap=cap,
        requester_rho_spent=cap - remaining,
        requester_rho_remaining=remaining,
        node_rho_cap=node,
        node_rho_remaining=node,
        max_rho_per_request=0.5,
    )


def _cost(
    node: str, budget: BudgetStatus, schedule: str = "0 6 1,15 * *", cost: float = RUN_COST
) -> ScheduledCost:
    return ScheduledCost(node, "twice-monthly", REQUESTER, schedule, cost, budget)


def test_forecast_refuses_a_schedule_that_runs_dry_and_names_when() -> None:
    """The first run that does not fit is named with node, period and date."""
    now = dt.datetime(2027, 1, 10, tzinfo=UTC)
    result = forecast(
        [
            _cost("M01", _budget("2027-01", remaining=1.0)),
            _cost("M02", _budget("2027-01", remaining=0.2)),  # Jan 15 does not fit
            _cost("M03", _budget("2027-01", remaining=1.0, cap=0.5)),  # Feb 15 does not fit
        ],
        now,
    )
    assert not result.ok
    by_node = {n.node: n for n in result.nodes}
    assert by_node["M01"].shortfall is None
    assert by_node["M01"].runs_current == 1
    assert by_node["M01"].runs_next == 2
    m02, m03 = by_node["M02"].shortfall, by_node["M03"].shortfall
    assert (m02.period, m02.run_at) == ("2027-01", dt.datetime(2027, 1, 15, 6, tzinfo=UTC))
    assert (m03.period, m03.run_at) == ("2027-02", dt.datetime(2027, 2, 15, 6, tzinfo=UTC))
    assert "node M02" in by_node["M02"].message
    assert "2027-01-15 06:00 UTC" in by_node["M02"].message
    assert "budget period 2027-02" in by_node["M03"].message
    assert result.problems() == [by_node["M02"].message, by_node["M03"].message]


def test_forecast_counts_runs_per_budget_period_kind_and_the_node_wide_budget() -> None:
    """Quarter and year periods count their own slots; a node-wide shortfall says it never renews."""
    now = dt.datetime(2027, 2, 20, tzinfo=UTC)
    assert parse_period("2027-Q1").end == dt.datetime(2027, 4, 1, tzinfo=UTC)
    result = forecast(
        [
            _cost("Q", _budget("2027-Q1", remaining=3.0, cap=4.0), schedule="0 6 1 * *"),
            _cost("Y", _budget("2027", remaining=3.0, cap=4.0, node=10.0), schedule="0 6 1 * *"),
            _cost("N", _budget("2027-02", remaining=1.0, node=0.5)),
        ],
        now,
    )
    by_node = {n.node: n for n in result.nodes}
    assert (by_node["Q"].runs_current, by_node["Q"].runs_next) == (1, 3)
    assert (by_node["Y"].runs_current, by_node["Y"].runs_next) == (10, 12)
    assert by_node["Y"].shortfall is None
    assert by_node["Y"].node_budget_dry_at == dt.datetime(2029, 12, 1, 6, tzinfo=UTC)
    n = by_node["N"].shortfall
    assert n.scope == "node"
    assert n.run_at == dt.datetime(2027, 3, 15, 6, tzinfo=UTC), "Mar 1 fits, Mar 15 does not"
    assert "never renews" in by_node["N"].message


def test_forecast_prices_runs_with_the_nodes_own_preflight(
    bundles: list[Path], tmp_path: Path
) -> None:
    """Through real NodeServices: the cost is the nodes' preflight and spent budget counts."""
    clock = FakeTime(dt.datetime(2027, 1, 10, tzinfo=UTC), dt.datetime(2027, 1, 11, tzinfo=UTC))
    fed = Federation(bundles, tmp_path, clock, caps={"M02": 0.5})
    plan = _plan()
    try:
        transports = {
            plan.name: {
                n: InProcessNodeTransport(n, s, requester=REQUESTER)
                for n, s in fed.services.items()
            }
        }
        result = forecast_plans([plan], transports, clock())
    finally:
        fed.close()
    assert not result.ok
    by_node = {n.node: n for n in result.nodes}
    assert by_node["M01"].rho_current == pytest.approx(RUN_COST)
    assert by_node["M02"].shortfall.run_at == dt.datetime(2027, 2, 15, 6, tzinfo=UTC)
    assert result.problems() == [by_node["M02"].message]


def test_forecast_adds_the_ring_and_reconciliation_to_the_preflight_price(
    bundles: list[Path], tmp_path: Path
) -> None:
    """No preflight prices the cross-node protocols; the plan does, and the forecast counts it."""
    clock = FakeTime(dt.datetime(2027, 1, 10, tzinfo=UTC), dt.datetime(2027, 1, 11, tzinfo=UTC))
    fed = Federation(bundles, tmp_path, clock, caps={})
    checks = {**PLAN_DOC["checks"], "duplicates": {"rho": 0.4}, "revocation": {"rho": 0.05}}
    plan = _plan(checks=checks)
    try:
        transports = {
            plan.name: {
                n: InProcessNodeTransport(n, s, requester=REQUESTER)
                for n, s in fed.services.items()
            }
        }
        result = forecast_plans([plan], transports, clock())
    finally:
        fed.close()
    by_node = {n.node: n for n in result.nodes}
    assert by_node["M01"].rho_current == pytest.approx(RUN_COST + 0.4 + 0.05)


def test_alert_without_threshold_fires_only_for_incomplete_audits() -> None:
    """Findings alert only at/above the threshold; an incomplete audit always alerts."""
    report = json.loads((Path(__file__).parent / "fixtures" / "sample_report.json").read_text())
    sev = {f["severity"] for f in report["findings"]}
    assert "warning" in sev or "critical" in sev
    report["audit"]["status"] = "complete"
    assert evaluate_alert(report, None, report_path="r") is None
    assert evaluate_alert(report, "info", report_path="r").reasons == ("findings",)
    report["audit"]["status"] = "partial"
    assert evaluate_alert(report, None, report_path="r").reasons == ("incomplete",)
    with pytest.raises(ValueError, match="http"):
        WebhookNotifier("file:///etc/passwd")


# --- the command over gRPC --------------------------------------------------------------------

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"


def _write_plan(path: Path, schedule: str, node: str) -> Path:
    doc = {
        **PLAN_DOC,
        "schedule": schedule,
        "min_answering_nodes": 1,
        "nodes": [{"name": "T01", "address": node}],
    }
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    return path


def test_schedule_command_over_grpc(node_factory, sqlite_url: str, tmp_path: Path, capsys) -> None:
    """`schedule check` refuses a plan that runs dry; `schedule run --once` archives one run."""
    node = node_factory(sqlite_url)
    address = f"127.0.0.1:{node.port}"
    greedy = _write_plan(tmp_path / "greedy.yaml", "*/10 * * * *", address)
    assert main(["schedule", "check", str(greedy), "--insecure"]) == 2
    out = capsys.readouterr()
    assert re.search(
        r"refused: node T01 would run dry in budget period 20\d\d-Q\d \(.*\): "
        r"the run of plan twice-monthly at 20\S+ \d\d:\d\d UTC",
        out.err,
    )

    yearly = _write_plan(tmp_path / "yearly.yaml", "0 0 1 1 *", address)
    assert main(["schedule", "check", str(yearly), "--insecure"]) == 0
    archive = tmp_path / "archive"
    args = ["schedule", "run", str(yearly), "--archive", str(archive), "--once", "--insecure"]
    assert main([*args, "--fail-on", "critical"]) == 0
    runs = list((archive / "twice-monthly").glob("*T000000Z-twice-monthly-*/report.json"))
    assert len(runs) == 1
    assert json.loads(runs[0].read_text())["audit"]["run_id"].startswith("twice-monthly-")
    assert "nothing due" not in capsys.readouterr().out
    assert main(args) == 0
    assert "nothing due" in capsys.readouterr().out
    assert (
        main(["schedule", "run", str(greedy), "--archive", str(archive), "--once", "--insecure"])
        == 2
    )
