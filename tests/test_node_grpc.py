"""A node over real gRPC on loopback: capabilities, preflight, queries, refusals, health."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from fedaudit import PROTOCOL_METADATA_KEY, PROTOCOL_VERSION, REQUESTER_METADATA_KEY
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query import catalogue
from fedaudit.wire.v1 import node_pb2 as pb
from fedaudit.wire.v1 import node_pb2_grpc as pb_grpc

REQUESTER = "oversight-board"
METADATA = ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, REQUESTER))


def _stub(node) -> tuple[grpc.Channel, pb_grpc.AuditNodeStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{node.port}")
    return channel, pb_grpc.AuditNodeStub(channel)


def _request(template: str, request_id: str, **kw) -> pb.QueryRequest:
    return pb.QueryRequest(
        request_id=request_id,
        template=template,
        mechanism=kw.pop("mechanism", pb.DISCRETE_GAUSSIAN),
        rho=kw.pop("rho", 0.05),
        confidence=0.95,
        **kw,
    )


def _refusal(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(exc)
    assert status is not None, "refusal without google.rpc.Status details"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "fedaudit.org"
    return info


def test_capabilities_show_policy_catalogue_and_budget(node_factory, sqlite_url) -> None:
    """Capabilities list every template, the public key lists and this requester's budget."""
    node = node_factory(sqlite_url)
    channel, stub = _stub(node)
    with channel:
        caps = stub.GetCapabilities(pb.CapabilitiesRequest(), metadata=METADATA, timeout=5)
    assert caps.municipality_code == "T01"
    assert caps.catalogue_version == catalogue.CATALOGUE_VERSION
    assert caps.data_version.startswith("v1-")
    assert {t.name for t in caps.templates} == set(catalogue.TEMPLATES)
    dims = {d.name: list(d.keys) for d in caps.dimensions}
    assert dims["isco_code"] == ["3112", "5120", "7411"]
    assert caps.budget.requester_rho_cap == pytest.approx(2.0)
    assert caps.budget.requester_rho_remaining == pytest.approx(2.0)


@pytest.mark.parametrize("template", sorted(catalogue.TEMPLATES))
def test_every_template_answers_over_grpc(node_factory, db_url, template) -> None:
    """Each template returns the full cross product of cells with its noise and charge."""
    node = node_factory(db_url)
    channel, stub = _stub(node)
    with channel:
        resp = stub.Query(_request(template, f"t-{template}"), metadata=METADATA, timeout=10)
    t = catalogue.TEMPLATES[template]
    defaults = {p.name: p.default for p in t.params}
    assert list(resp.categories) == list(t.categories(defaults))
    assert len(resp.cells) == len(resp.categories)  # no group_by: one group
    assert resp.charge.rho == pytest.approx(0.05, rel=1e-9)
    assert resp.charge.rho <= 0.05
    assert resp.noise.scale > 0
    assert resp.noise.variance > 0
    assert resp.budget.requester_rho_spent == pytest.approx(0.05, rel=1e-9)


def test_grouped_query_releases_every_cell_including_zeros(node_factory, sqlite_url) -> None:
    """Grouping by provider and result yields providers x categories cells, zeros included."""
    node = node_factory(sqlite_url)
    channel, stub = _stub(node)
    with channel:
        caps = stub.GetCapabilities(pb.CapabilitiesRequest(), metadata=METADATA, timeout=5)
        providers = next(list(d.keys) for d in caps.dimensions if d.name == "provider")
        resp = stub.Query(
            _request("assessment_results", "grouped-1", group_by=["provider"]),
            metadata=METADATA,
            timeout=5,
        )
    assert len(resp.cells) == len(providers) * 3
    assert {tuple(c.keys) for c in resp.cells} == {(p,) for p in providers}


def test_retry_with_same_request_id_replays_at_no_cost(node_factory, sqlite_url) -> None:
    """A retried request id returns the identical stored answer and charges nothing more."""
    node = node_factory(sqlite_url)
    channel, stub = _stub(node)
    with channel:
        first = stub.Query(_request("assessment_results", "retry-1"), metadata=METADATA, timeout=5)
        second = stub.Query(_request("assessment_results", "retry-1"), metadata=METADATA, timeout=5)
        third = stub.Query(_request("assessment_results", "retry-2"), metadata=METADATA, timeout=5)
    assert not first.replayed
    assert second.replayed
    assert third.replayed
    assert [c.estimate for c in second.cells] == [c.estimate for c in first.cells]
    assert [c.estimate for c in third.cells] == [c.estimate for c in first.cells]
    assert third.budget.requester_rho_spent == pytest.approx(first.charge.rho)


def test_same_request_id_for_another_query_is_refused(node_factory, sqlite_url) -> None:
    """Reusing a request id for a different query is an error, not a silent replay."""
    node = node_factory(sqlite_url)
    channel, stub = _stub(node)
    with channel:
        stub.Query(_request("assessment_results", "dup-1"), metadata=METADATA, timeout=5)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Query(_request("appeal_outcomes", "dup-1"), metadata=METADATA, timeout=5)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _refusal(exc.value).reason == "INVALID_PARAMETERS"


def test_unknown_requester_is_refused_with_reason(node_factory, sqlite_url) -> None:
    """A requester the policy does not name gets PERMISSION_DENIED / REQUESTER_NOT_ALLOWED."""
    node = node_factory(sqlite_url)
    channel, stub = _stub(node)
    metadata = ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, "mallory"))
    with channel, pytest.raises(grpc.RpcError) as exc:
        stub.Query(_request("assessment_results", "m-1"), metadata=metadata, timeout=5)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _refusal(exc.value).reason == "REQUESTER_NOT_ALLOWED"


def test_protocol_version_mismatch_names_both_versions(node_factory, sqlite_url) -> None:
    """A client speaking another protocol version is refused with both versions named."""
    node = node_factory(sqlite_url)
    channel, stub = _stub(node)
    metadata = ((PROTOCOL_METADATA_KEY, "2"), (REQUESTER_METADATA_KEY, REQUESTER))
    with channel, pytest.raises(grpc.RpcError) as exc:
        stub.GetCapabilities(pb.CapabilitiesRequest(), metadata=metadata, timeout=5)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = _refusal(exc.value)
    assert info.reason == "VERSION_MISMATCH"
    assert "'2'" in exc.value.details()
    assert f"'{PROTOCOL_VERSION}'" in exc.value.details()
    assert info.metadata["node_version"] == PROTOCOL_VERSION


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"template": "no_such_template"}, "no_such_template"),
        ({"group_by": ["candidate_id"]}, "candidate_id"),
        ({"rho": float("nan")}, "rho"),
        ({"rho": -1.0}, "rho"),
        ({"mechanism": pb.MECHANISM_UNSPECIFIED}, "mechanism"),
        ({"filters": [pb.Filter(dimension="sex", keys=["robot"])]}, "robot"),
    ],
)
def test_invalid_requests_are_refused_and_cost_nothing(
    node_factory, sqlite_url, changes, fragment
) -> None:
    """Malformed queries get INVALID_ARGUMENT naming the problem, and no budget is spent."""
    node = node_factory(sqlite_url)
    channel, stub = _stub(node)
    base = {"template": "assessment_results", "request_id": "bad-1"}
    base.update(changes)
    template = base.pop("template")
    rid = base.pop("request_id")
    with channel:
        with pytest.raises(grpc.RpcError) as exc:
            stub.Query(_request(template, rid, **base), metadata=METADATA, timeout=5)
        caps = stub.GetCapabilities(pb.CapabilitiesRequest(), metadata=METADATA, timeout=5)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _refusal(exc.value).reason == "INVALID_PARAMETERS"
    assert fragment in exc.value.details()
    assert caps.budget.requester_rho_spent == 0


def test_budget_exhaustion_is_refused_with_remaining_budget(node_factory, sqlite_url) -> None:
    """Past the requester cap the node answers RESOURCE_EXHAUSTED with what remains."""
    policy = example_policy({REQUESTER: 0.1}, max_rho_per_request=0.1)
    node = node_factory(sqlite_url, policy=policy)
    channel, stub = _stub(node)
    with channel:
        stub.Query(_request("assessment_results", "b-1", rho=0.08), metadata=METADATA, timeout=5)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Query(_request("appeal_outcomes", "b-2", rho=0.05), metadata=METADATA, timeout=5)
        pre = stub.Preflight(
            _request("appeal_outcomes", "b-3", rho=0.05), metadata=METADATA, timeout=5
        )
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = _refusal(exc.value)
    assert info.reason == "BUDGET_EXHAUSTED"
    assert float(info.metadata["remaining_rho"]) == pytest.approx(0.02, abs=1e-9)
    assert not pre.fits_budget
    assert pre.refusal_reason == "BUDGET_EXHAUSTED"


def test_preflight_is_free_and_matches_the_charge(node_factory, sqlite_url) -> None:
    """Preflight states the exact charge and accuracy of a query and spends nothing."""
    node = node_factory(sqlite_url)
    channel, stub = _stub(node)
    req = _request("employment_outcomes", "p-1", group_by=["months_after"], rho=0.02)
    with channel:
        pre = stub.Preflight(req, metadata=METADATA, timeout=5)
        caps = stub.GetCapabilities(pb.CapabilitiesRequest(), metadata=METADATA, timeout=5)
        ans = stub.Query(req, metadata=METADATA, timeout=5)
    assert caps.budget.requester_rho_spent == 0
    assert pre.fits_budget
    assert pre.cell_count == 2 * 4
    assert pre.charge.rho == ans.charge.rho
    assert pre.noise.scale == ans.noise.scale
    assert pre.noise.ci_half_width > 0


def test_laplace_requests_are_charged_as_rho(node_factory, sqlite_url) -> None:
    """A pure-epsilon request is charged rho = epsilon^2 / 2 on the node's ledger."""
    node = node_factory(sqlite_url)
    channel, stub = _stub(node)
    req = _request("appeal_outcomes", "lap-1", mechanism=pb.DISCRETE_LAPLACE, rho=0.0, epsilon=0.3)
    with channel:
        ans = stub.Query(req, metadata=METADATA, timeout=5)
    assert ans.charge.epsilon == pytest.approx(0.3)
    assert ans.charge.rho == pytest.approx(0.045)


def test_health_reports_serving_only_with_data(node_factory, sqlite_url, tmp_path) -> None:
    """Health is SERVING for a node with data and NOT_SERVING for an empty one."""
    with_data = node_factory(sqlite_url)
    empty = node_factory(f"sqlite:///{tmp_path / 'empty.db'}", bundle=None)
    for node, expected in ((with_data, "SERVING"), (empty, "NOT_SERVING")):
        with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status) == expected


def test_empty_node_refuses_queries_as_data_unavailable(node_factory, tmp_path) -> None:
    """Without an imported bundle, queries are refused with DATA_UNAVAILABLE."""
    node = node_factory(f"sqlite:///{tmp_path / 'empty.db'}", bundle=None)
    channel, stub = _stub(node)
    with channel, pytest.raises(grpc.RpcError) as exc:
        stub.Query(_request("assessment_results", "e-1"), metadata=METADATA, timeout=5)
    assert _refusal(exc.value).reason == "DATA_UNAVAILABLE"


def test_reflection_lists_the_node_service(node_factory, sqlite_url) -> None:
    """Server reflection exposes the AuditNode and Health services to generic clients."""
    node = node_factory(sqlite_url)
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "fedaudit.wire.v1.AuditNode" in names
    assert "grpc.health.v1.Health" in names


def test_the_answers_budget_is_that_of_the_nodes_clock(node_factory, sqlite_url) -> None:
    """The budget that comes with an answer is read at the node's own clock (the one the
    charge was periodised by), not the wall clock: a node whose clock is in 2031 reports
    2031's period and what the query just spent in it."""
    import datetime as dt

    later = dt.datetime(2031, 2, 10, 12, tzinfo=dt.UTC)
    node = node_factory(sqlite_url, clock=lambda: later)
    channel, stub = _stub(node)
    with channel:
        resp = stub.Query(_request("assessment_results", "clock-1"), metadata=METADATA, timeout=5)
    assert resp.budget.period.startswith("2031")
    assert resp.budget.requester_rho_spent == pytest.approx(resp.charge.rho)
