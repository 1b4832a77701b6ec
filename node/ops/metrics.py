"""Prometheus metrics and request ids for a node's gRPC server, as one server interceptor.

Why an interceptor: it sees every call, including refusals raised by later
interceptors (rate limits) and by the servicer, without the servicer knowing about
metrics. Each node instance owns its own `CollectorRegistry`, so several nodes can
run in one process (tests, the demo) without their counters mixing.

Every call gets a request id: the caller's `fedaudit-request-id` metadata when it is
well formed (so a coordinator can correlate its log with the node's), else a fresh
one. It is bound to structlog's context variables for the duration of the call, so
every log line the call produces carries it, and it is returned to the caller in the
trailing metadata `fedaudit-request-id`, refusals included. In logs its key is
`grpc_request_id`, because `request_id` already names the ledger's idempotency key
of a QueryRequest.

Labels carry only method names, status codes, refusal reasons and requester names
from the node's policy (organisations, never persons); nothing from a request body.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fedaudit.wire.v1 import node_pb2 as pb

log = structlog.get_logger(__name__)

REQUEST_ID_METADATA_KEY = "fedaudit-request-id"
"""Metadata key of the per-call request id (sent by a client, always returned as a trailer)."""

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_ERROR_DOMAIN = "fedaudit.org"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds; a capabilities call takes milliseconds, a query over a large registry seconds."""


class NodeMetrics:
    """The node's metric families, registered in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.handled = Counter(
            "fedaudit_node_grpc_handled",
            "gRPC calls completed, by service, method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.refusals = Counter(
            "fedaudit_node_refusals",
            "Requests refused by the node, by method and ErrorInfo reason.",
            ["grpc_method", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "fedaudit_node_grpc_handling_seconds",
            "Time from receiving a call to its last response, by service and method.",
            ["grpc_service", "grpc_method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requester_rho_remaining = Gauge(
            "fedaudit_node_requester_rho_remaining",
            "Privacy budget (rho) a requester may still spend this period, as last reported.",
            ["requester"],
            registry=r,
        )
        self.node_rho_remaining = Gauge(
            "fedaudit_node_rho_remaining",
            "Privacy budget (rho) the requester may still spend of its share of the node's "
            "never-renewed total, as last reported to it.",
            ["requester"],
            registry=r,
        )
        self.ready = Gauge(
            "fedaudit_node_ready",
            "1 when the node is ready to answer (database reachable, data and catalogue loaded).",
            registry=r,
        )

    def observe_budget(self, requester: str, budget: pb.Budget) -> None:
        """Record the budget a response reported; called for answers and capabilities."""
        if requester:
            self.requester_rho_remaining.labels(requester=requester).set(
                budget.requester_rho_remaining
            )
            self.node_rho_remaining.labels(requester=requester).set(budget.node_rho_remaining)


def refusal_reason(trailing_metadata: Any) -> str:
    """The fedaudit ErrorInfo reason in a call's trailers, or "" when there is none."""
    for key, value in trailing_metadata or ():
        if key != _STATUS_DETAILS_KEY:
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a malformed detail is not ours to interpret
            return ""
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == _ERROR_DOMAIN:
                return info.reason
    return ""


def new_request_id(metadata: Any) -> str:
    """The caller's request id when it is safe to log, else a fresh random one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_METADATA_KEY and isinstance(value, str):
            if _CLIENT_REQUEST_ID.match(value):
                return value
            break
    return uuid.uuid4().hex


def _split_method(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts calls and refusals, times them, tracks budgets and attaches request ids.

    Unary-unary methods (the whole AuditNode service and health checks) are
    instrumented; streaming methods (health Watch, reflection) pass through untouched.
    Put it first in the interceptor list so it also sees refusals of later interceptors.
    """

    def __init__(
        self,
        metrics: NodeMetrics,
        *,
        requester_of: Callable[[grpc.ServicerContext], str] | None = None,
    ) -> None:
        self._metrics = metrics
        self._requester_of = requester_of or _requester_of

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        behaviour = handler.unary_unary
        metrics = self._metrics
        requester_of = self._requester_of

        def instrumented(request: Any, context: grpc.ServicerContext) -> Any:
            request_id = new_request_id(context.invocation_metadata())
            started = time.perf_counter()
            with structlog.contextvars.bound_contextvars(grpc_request_id=request_id):
                try:
                    response = behaviour(request, context)
                except BaseException:
                    _finish(context, request_id, failed=True)
                    raise
                else:
                    _finish(context, request_id, failed=False)
                    budget = _budget_of(response)
                    if budget is not None:
                        metrics.observe_budget(requester_of(context), budget)
                    return response
                finally:
                    _record(metrics, context, service, method, time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            instrumented,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _finish(context: grpc.ServicerContext, request_id: str, *, failed: bool) -> None:
    """Add the request id to whatever trailers the call set (an abort sets its own)."""
    trailers = tuple(context.trailing_metadata() or ())
    context.set_trailing_metadata((*trailers, (REQUEST_ID_METADATA_KEY, request_id)))
    if failed and context.code() is None:
        # An exception without abort: grpc reports UNKNOWN; say so for the metrics.
        context.set_code(grpc.StatusCode.UNKNOWN)


def _record(
    metrics: NodeMetrics,
    context: grpc.ServicerContext,
    service: str,
    method: str,
    seconds: float,
) -> None:
    code = context.code() or grpc.StatusCode.OK
    reason = refusal_reason(context.trailing_metadata()) if code != grpc.StatusCode.OK else ""
    metrics.handled.labels(grpc_service=service, grpc_method=method, grpc_code=code.name).inc()
    metrics.latency.labels(grpc_service=service, grpc_method=method).observe(seconds)
    if reason:
        metrics.refusals.labels(grpc_method=method, reason=reason).inc()
    log.info(
        "rpc_finished",
        grpc_method=f"{service}/{method}",
        grpc_code=code.name,
        reason=reason or None,
        duration_ms=round(seconds * 1000, 2),
    )


def _budget_of(response: Any) -> pb.Budget | None:
    if isinstance(response, pb.QueryResponse | pb.Capabilities) and response.HasField("budget"):
        return response.budget
    return None


def _requester_of(context: grpc.ServicerContext) -> str:
    from fedaudit.node.rpc.status import requester_identity

    return requester_identity(context, dict(context.invocation_metadata()))


@dataclass
class MetricsServer:
    """A running Prometheus HTTP endpoint (`/metrics`); `port` is the bound port."""

    host: str
    port: int
    _server: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(
    port: int, host: str = "127.0.0.1", *, registry: CollectorRegistry
) -> MetricsServer:
    """Serve `registry` over plain HTTP for Prometheus to scrape.

    Loopback by default: metrics name requesters and budgets, so exposing them on a
    network is a decision (a NetworkPolicy or firewall should then limit who scrapes).
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address[1]
    log.info("metrics_serving", address=f"{host}:{bound}")
    return MetricsServer(host=host, port=bound, _server=server, _thread=thread)
