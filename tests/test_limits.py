"""Per-requester limits (concurrency, token-bucket rate) and the message-size cap, over real gRPC."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import Engine, func, select

from fedaudit import PROTOCOL_METADATA_KEY, PROTOCOL_VERSION, REQUESTER_METADATA_KEY
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.rpc.guard import MalformedRequestGuard
from fedaudit.node.rpc.limits import RETRY_AFTER_METADATA_KEY, LimitSettings, RequestLimiter
from fedaudit.node.server import MAX_MESSAGE_BYTES, RunningNode, start_node_server
from fedaudit.node.store.db import make_engine
from fedaudit.node.store.models import LedgerEntry
from fedaudit.wire.v1 import node_pb2 as pb
from fedaudit.wire.v1 import node_pb2_grpc as pb_grpc

FIXTURE = Path(__file__).parent / "fixtures" / "bundle_small"
REQUESTER = "oversight-board"


def _metadata(requester: str = REQUESTER) -> tuple[tuple[str, str], ...]:
    return ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, requester))


class FakeClock:
    """Monotonic seconds that only move when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _info(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(exc)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def _retry_after(exc: grpc.RpcError) -> str | None:
    return dict(exc.trailing_metadata() or ()).get(RETRY_AFTER_METADATA_KEY)


def _spent(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(
            select(func.count(), func.coalesce(func.sum(LedgerEntry.rho_units), 0))
        ).one()
    return int(row[0]), int(row[1])


@pytest.fixture(name="limited_node")
def _limited_node(tmp_path: Path) -> Iterator[tuple[RunningNode, Engine, FakeClock]]:
    """A real node with a rate limiter of burst 3, 1 request/s on a frozen clock."""
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    import_bundle(engine, FIXTURE)
    clock = FakeClock()
    limiter = RequestLimiter(
        LimitSettings(max_concurrent=4, rate_per_second=1.0, burst=3), clock=clock
    )
    node = start_node_server(
        NodeService(engine, example_policy({REQUESTER: 2.0, "other-auditor": 1.0})),
        interceptors=[limiter, MalformedRequestGuard()],
    )
    yield node, engine, clock
    node.stop(grace=None)
    engine.dispose()


def _query(rid: str, rho: float = 0.01) -> pb.QueryRequest:
    """A distinct rho makes a distinct query (an identical one would be replayed for free)."""
    return pb.QueryRequest(
        request_id=rid, template="appeal_outcomes", mechanism=pb.DISCRETE_GAUSSIAN, rho=rho
    )


def test_rate_limit_refuses_with_error_info_and_retry_after(limited_node) -> None:
    """Past the burst a requester gets RATE_LIMITED with a retry hint, is charged nothing, and may retry later."""
    node, engine, clock = limited_node
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        stub = pb_grpc.AuditNodeStub(channel)
        for i in range(3):
            stub.Query(_query(f"ok-{i}", 0.01 + i / 1000), metadata=_metadata(), timeout=10)
        spent = _spent(engine)
        assert spent[0] == 3
        with pytest.raises(grpc.RpcError) as caught:
            stub.Query(_query("over", 0.02), metadata=_metadata(), timeout=10)
        exc = caught.value
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = _info(exc)
        assert (info.reason, info.domain) == ("RATE_LIMITED", "fedaudit.org")
        assert info.metadata["limit"] == "request_rate"
        assert info.metadata["retry_after_ms"] == "1000"
        assert _retry_after(exc) == "1000"
        assert _spent(engine) == spent, "a rate-limited request was charged"

        # Another requester has its own bucket; health checks are never limited.
        stub.GetCapabilities(pb.CapabilitiesRequest(), metadata=_metadata("other-auditor"))
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(10):
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)

        clock.now += 0.5  # half a token: still refused, with the remaining wait
        with pytest.raises(grpc.RpcError) as caught:
            stub.Query(_query("over", 0.02), metadata=_metadata(), timeout=10)
        assert _retry_after(caught.value) == "500"
        clock.now += 0.5
        answer = stub.Query(_query("over", 0.02), metadata=_metadata(), timeout=10)
        assert not answer.replayed
        assert _spent(engine)[0] == 4


def test_malformed_requests_count_against_the_rate(limited_node) -> None:
    """Undecodable bytes are INVALID_ARGUMENT, and a flood of them is rate limited too."""
    node, engine, _ = limited_node
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        raw = channel.unary_unary("/fedaudit.wire.v1.AuditNode/Query")
        codes = []
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as caught:
                raw(b"\xff\xff\xff", metadata=_metadata(), timeout=10)
            codes.append(caught.value.code())
    assert (
        codes == [grpc.StatusCode.INVALID_ARGUMENT] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    )
    assert _spent(engine) == (0, 0)


def test_oversized_request_is_resource_exhausted_and_free(tmp_path: Path) -> None:
    """A request above MAX_MESSAGE_BYTES never reaches the service: RESOURCE_EXHAUSTED, nothing charged."""
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    import_bundle(engine, FIXTURE)
    node = start_node_server(NodeService(engine, example_policy({REQUESTER: 2.0})))
    try:
        request = _query("huge")
        request.group_by.append("x" * (MAX_MESSAGE_BYTES + 1024))
        with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
            stub = pb_grpc.AuditNodeStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Query(request, metadata=_metadata(), timeout=30)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert _spent(engine) == (0, 0)
            stub.Query(_query("small"), metadata=_metadata(), timeout=10)  # node still serves
        assert _spent(engine)[0] == 1
    finally:
        node.stop(grace=None)
        engine.dispose()


# --- concurrency, on a real gRPC server with a handler that blocks until released ------------


class _Blocking(grpc.GenericRpcHandler):  # type: ignore[misc]
    """`/fedaudit.test.Slow/Call` waits for `release`; counts calls that got through."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.calls = 0

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != "/fedaudit.test.Slow/Call":
            return None

        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls += 1
            self.entered.release()
            self.release.wait(10)
            return b"done"

        return grpc.unary_unary_rpc_method_handler(call)


def test_concurrent_requests_per_requester_are_capped() -> None:
    """With 2 calls in flight a requester's third is RATE_LIMITED at once; others are not; slots come back."""
    handler = _Blocking()
    limiter = RequestLimiter(LimitSettings(max_concurrent=2, rate_per_second=0))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=[limiter])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/fedaudit.test.Slow/Call")
            pending = [call.future(b"", metadata=_metadata(), timeout=10) for _ in range(2)]
            for _ in range(2):
                assert handler.entered.acquire(timeout=5)
            assert limiter.in_flight(REQUESTER) == 2
            with pytest.raises(grpc.RpcError) as caught:
                call(b"", metadata=_metadata(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = _info(caught.value)
            assert info.reason == "RATE_LIMITED"
            assert info.metadata["limit"] == "concurrent_requests"
            assert _retry_after(caught.value) == "100"
            other = call.future(b"", metadata=_metadata("other-auditor"), timeout=10)
            assert handler.entered.acquire(timeout=5)
            handler.release.set()
            assert [f.result() for f in [*pending, other]] == [b"done"] * 3
            assert limiter.in_flight(REQUESTER) == 0
            assert call(b"", metadata=_metadata(), timeout=5) == b"done"
        assert handler.calls == 4
    finally:
        server.stop(None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_concurrent": -1},
        {"rate_per_second": float("nan")},
        {"rate_per_second": -1.0},
        {"burst": 0},
        {"concurrency_retry_ms": 0},
    ],
)
def test_limit_settings_reject_nonsense(kwargs: dict[str, float]) -> None:
    """Negative, NaN or zero limits are configuration errors, not silent no-ops."""
    with pytest.raises(ValueError, match=r"must be"):
        LimitSettings(**kwargs)  # type: ignore[arg-type]
