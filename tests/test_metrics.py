"""Node observability over real gRPC and HTTP on loopback: metrics, request ids, readiness."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from fedaudit import PROTOCOL_METADATA_KEY, PROTOCOL_VERSION, REQUESTER_METADATA_KEY
from fedaudit.cli.errors import EXIT_FINDINGS, EXIT_OK
from fedaudit.cli.main import main
from fedaudit.coordinator.running.audit_metrics import AuditMetrics, export_audit_metrics
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.ops.health_port import check_health
from fedaudit.node.ops.metrics import REQUEST_ID_METADATA_KEY, NodeMetrics
from fedaudit.node.ops.observability import NodeObservability
from fedaudit.node.ops.readiness import LIVENESS_SERVICE
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.rpc.status import SERVICE_NAME
from fedaudit.node.server import RunningNode, start_node_server
from fedaudit.node.store.db import make_engine
from fedaudit.wire.v1 import node_pb2 as pb
from fedaudit.wire.v1 import node_pb2_grpc as pb_grpc

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
REQUESTER = "oversight-board"
METADATA = ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, REQUESTER))
WATCH_INTERVAL = 0.2

Started = tuple[RunningNode, NodeObservability]


@pytest.fixture(name="observed_node")
def _observed_node() -> Iterator[Callable[[Path], Started]]:
    """Start nodes with the metrics interceptor, a metrics endpoint, a health port and a watcher."""
    running: list[tuple[RunningNode, NodeObservability, object]] = []

    def start(db_dir: Path) -> Started:
        db_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(f"sqlite:///{db_dir / 'node.db'}")
        import_bundle(engine, FIXTURE_BUNDLE)
        service = NodeService(engine, example_policy({REQUESTER: 2.0}))
        obs = NodeObservability(
            metrics=NodeMetrics(),
            metrics_port=0,
            health_port=0,
            readiness_interval=WATCH_INTERVAL,
        )
        node = start_node_server(service, port=0, interceptors=obs.interceptors)
        obs.attach(node, engine)
        running.append((node, obs, engine))
        return node, obs

    yield start
    for node, obs, engine in running:
        obs.close()
        node.stop(grace=None)
        engine.dispose()  # type: ignore[attr-defined]


def _scrape(obs: NodeObservability) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    server = obs.metrics_server
    assert server is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _trailer(call_or_error: object, key: str) -> str | None:
    return dict(call_or_error.trailing_metadata() or ()).get(key)  # type: ignore[attr-defined]


def test_metrics_endpoint_counts_answers_and_refusals_by_reason(observed_node, tmp_path) -> None:
    """After a query and a refusal, /metrics shows calls by code, the refusal reason, latency and budget."""
    node, obs = observed_node(tmp_path / "db")
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        stub = pb_grpc.AuditNodeStub(channel)
        stub.Query(
            pb.QueryRequest(
                request_id="m-1",
                template="certificates_issued",
                mechanism=pb.DISCRETE_GAUSSIAN,
                rho=0.05,
                confidence=0.95,
            ),
            metadata=METADATA,
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.Query(
                pb.QueryRequest(request_id="m-2", template="no_such_template", rho=0.05),
                metadata=METADATA,
                timeout=10,
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    samples = _scrape(obs)
    handled = "fedaudit_node_grpc_handled_total"
    svc = {"grpc_service": SERVICE_NAME, "grpc_method": "Query"}
    assert _value(samples, handled, **svc, grpc_code="OK") == 1
    assert _value(samples, handled, **svc, grpc_code="INVALID_ARGUMENT") == 1
    assert (
        _value(
            samples,
            "fedaudit_node_refusals_total",
            grpc_method="Query",
            reason="INVALID_PARAMETERS",
        )
        == 1
    )
    assert _value(samples, "fedaudit_node_grpc_handling_seconds_count", **svc) == 2
    assert _value(
        samples, "fedaudit_node_requester_rho_remaining", requester=REQUESTER
    ) == pytest.approx(1.95)
    assert _value(samples, "fedaudit_node_ready") == 1


def test_request_id_is_returned_in_trailers_and_bound_in_logs(
    observed_node, tmp_path, capsys
) -> None:
    """Answers and refusals carry fedaudit-request-id; a caller's id is kept; log lines carry it."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.JSONRenderer(),
        ]
    )
    node, _ = observed_node(tmp_path / "db")
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        stub = pb_grpc.AuditNodeStub(channel)
        _, call = stub.GetCapabilities.with_call(
            pb.CapabilitiesRequest(), metadata=METADATA, timeout=5
        )
        generated = _trailer(call, REQUEST_ID_METADATA_KEY)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Query(
                pb.QueryRequest(request_id="r-1", template="no_such_template", rho=0.05),
                metadata=(*METADATA, (REQUEST_ID_METADATA_KEY, "coord-run-7.q3")),
                timeout=5,
            )
    assert generated is not None
    assert len(generated) == 32
    assert _trailer(refused.value, REQUEST_ID_METADATA_KEY) == "coord-run-7.q3"
    # the refusal's own details survive next to the request id
    assert _trailer(refused.value, "grpc-status-details-bin") is not None
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    refusal_events = [e for e in events if e.get("grpc_request_id") == "coord-run-7.q3"]
    assert {e["event"] for e in refusal_events} >= {"request_refused", "rpc_finished"}


def test_readiness_follows_the_database(observed_node, tmp_path) -> None:
    """A node whose database disappears turns NOT_SERVING within the interval, and SERVING when it returns."""
    db_dir = tmp_path / "db"
    node, obs = observed_node(db_dir)
    health_port = obs.health_server
    assert health_port is not None
    address = f"127.0.0.1:{health_port.port}"

    def status(service: str = "") -> str:
        return check_health(address, service=service, timeout=2)

    def wait_for(expected: str, service: str = "") -> float:
        started = time.monotonic()
        while time.monotonic() - started < WATCH_INTERVAL * 15:
            if status(service) == expected:
                return time.monotonic() - started
            time.sleep(WATCH_INTERVAL / 4)
        pytest.fail(f"{service or 'node'} did not become {expected}; last {status(service)}")

    assert status() == "SERVING"
    assert status(SERVICE_NAME) == "SERVING"
    assert main(["node", "health", "--address", address]) == EXIT_OK
    db_dir.rename(tmp_path / "db-gone")  # open pooled handles still work; a new connection fails
    wait_for("NOT_SERVING")
    assert status(SERVICE_NAME) == "NOT_SERVING"
    assert status(LIVENESS_SERVICE) == "SERVING"  # an outage makes the node unready, not dead
    assert main(["node", "health", "--address", address]) == EXIT_FINDINGS
    assert main(["node", "health", "--address", address, "--service", "liveness"]) == EXIT_OK
    # the audit port reports the same as the health port
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=2
        )
    assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert _value(_scrape(obs), "fedaudit_node_ready") == 0

    (tmp_path / "db-gone").rename(db_dir)
    wait_for("SERVING")
    assert _value(_scrape(obs), "fedaudit_node_ready") == 1


def test_health_port_offers_nothing_but_health(observed_node, tmp_path) -> None:
    """The plaintext health port does not serve the AuditNode service."""
    _, obs = observed_node(tmp_path / "db")
    assert obs.health_server is not None
    with (
        grpc.insecure_channel(f"127.0.0.1:{obs.health_server.port}") as channel,
        pytest.raises(grpc.RpcError) as exc,
    ):
        pb_grpc.AuditNodeStub(channel).GetCapabilities(
            pb.CapabilitiesRequest(), metadata=METADATA, timeout=5
        )
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_two_nodes_in_one_process_keep_separate_metrics(observed_node, tmp_path) -> None:
    """Each node's registry counts only its own calls."""
    first, obs_first = observed_node(tmp_path / "a")
    _, obs_second = observed_node(tmp_path / "b")
    with grpc.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        pb_grpc.AuditNodeStub(channel).GetCapabilities(
            pb.CapabilitiesRequest(), metadata=METADATA, timeout=5
        )
    labels = {"grpc_service": SERVICE_NAME, "grpc_method": "GetCapabilities", "grpc_code": "OK"}
    assert _value(_scrape(obs_first), "fedaudit_node_grpc_handled_total", **labels) == 1
    assert _value(_scrape(obs_second), "fedaudit_node_grpc_handled_total", **labels) is None


def _report(status: str, node_status: str, reason: str) -> dict:
    return {
        "audit": {
            "plan": "quarterly",
            "status": status,
            "finished_at": "2026-11-26T09:03:41Z",
        },
        "findings": [{"severity": "critical"}, {"severity": "warning"}],
        "coverage": {
            "nodes": [
                {"node": "M01", "status": "answered", "reason": ""},
                {"node": "M02", "status": node_status, "reason": reason},
            ]
        },
        "privacy": {
            "nodes": [
                {"node": "M01", "rho": 0.18, "requester_rho_remaining": 1.22},
                {"node": "M02", "rho": 0.0, "requester_rho_remaining": 0.0},
            ]
        },
    }


def test_audit_metrics_textfile_has_run_status_and_node_outcomes(tmp_path) -> None:
    """The textfile for node-exporter holds the last run's status, findings and node refusals."""
    report = _report("partial", "refused", "BUDGET_EXHAUSTED")
    export_audit_metrics(report, 12.5, textfile_dir=tmp_path)
    text = (tmp_path / "fedaudit_audit_quarterly.prom").read_text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert (
        _value(samples, "fedaudit_audit_last_run_status", plan="quarterly", status="partial") == 1
    )
    assert _value(samples, "fedaudit_audit_last_run_status", plan="quarterly", status="failed") == 0
    assert (
        _value(
            samples,
            "fedaudit_audit_last_run_node_status",
            plan="quarterly",
            node="M02",
            status="refused",
            reason="BUDGET_EXHAUSTED",
        )
        == 1
    )
    assert (
        _value(samples, "fedaudit_audit_last_run_findings", plan="quarterly", severity="critical")
        == 1
    )
    assert _value(samples, "fedaudit_audit_last_success_timestamp_seconds", plan="quarterly") == (
        pytest.approx(1795683821.0)
    )


def test_audit_metrics_show_only_the_latest_run_per_node() -> None:
    """In a long-running scheduler, a node's outcome of an earlier run does not linger."""
    metrics = AuditMetrics()
    metrics.observe(_report("partial", "refused", "BUDGET_EXHAUSTED"), 3.0)
    metrics.observe(_report("complete", "answered", ""), 2.0)
    get = metrics.registry.get_sample_value
    labels = {"plan": "quarterly", "node": "M02"}
    assert (
        get("fedaudit_audit_last_run_node_status", {**labels, "status": "answered", "reason": ""})
        == 1
    )
    assert (
        get(
            "fedaudit_audit_last_run_node_status",
            {**labels, "status": "refused", "reason": "BUDGET_EXHAUSTED"},
        )
        is None
    )
    assert get("fedaudit_audit_runs_total", {"plan": "quarterly", "status": "partial"}) == 1
    assert get("fedaudit_audit_runs_total", {"plan": "quarterly", "status": "complete"}) == 1


def test_audit_metrics_push_replaces_the_plans_group_on_a_pushgateway() -> None:
    """A push is an HTTP PUT to /metrics/job/fedaudit_audit/plan/<plan> with the run's metrics."""
    import http.server
    import threading

    received: list[tuple[str, str, str]] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        export_audit_metrics(
            _report("complete", "answered", ""),
            4.0,
            pushgateway=f"http://127.0.0.1:{server.server_address[1]}",
        )
    finally:
        server.shutdown()
        server.server_close()
    ((method, path, body),) = received
    assert (method, path) == ("PUT", "/metrics/job/fedaudit_audit/plan/quarterly")
    assert 'fedaudit_audit_last_run_status{plan="quarterly",status="complete"} 1.0' in body
