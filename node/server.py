"""The node's gRPC boundary: wire messages in, domain calls, status codes out.

This is the only place where node errors become gRPC status codes. Every refusal
carries a `google.rpc.ErrorInfo` detail (domain `fedaudit.org`, reason = the
RefusalReason name, metadata with specifics such as the remaining budget) so a
client in any language can act on it. Standard health checking (SERVING only
with data loaded) and server reflection are registered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from fedaudit import PROTOCOL_METADATA_KEY, PROTOCOL_VERSION, __version__
from fedaudit.common.serde import (
    WireFormatError,
    answer_to_pb,
    budget_to_pb,
    mechanism_to_pb,
    preflight_to_pb,
    spec_from_pb,
)
from fedaudit.node.domain import Capabilities, QuerySpec
from fedaudit.node.errors import (
    InvalidParametersError,
    RefusedError,
    VersionMismatchError,
)
from fedaudit.node.evidence.querylog import (
    FAILED,
    INTERNAL,
    REFUSED,
    LogEvent,
    QueryLog,
    head_details,
    was_logged,
)
from fedaudit.node.query.service import NodeService
from fedaudit.node.rpc.ports import EXCLUSIVE_PORT_OPTIONS, bind
from fedaudit.node.rpc.status import SERVICE_NAME, refusal_status, requester_identity
from fedaudit.wire.v1 import node_pb2 as pb
from fedaudit.wire.v1 import node_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from fedaudit.node.ring.reconcile import ReconcileService
    from fedaudit.node.ring.service import DedupService

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class _Aborted(Exception):
    """Raised after context.abort in code paths typed as returning a value."""


class AuditNodeServicer(pb_grpc.AuditNodeServicer):
    """Translates AuditNode calls to `NodeService` calls."""

    def __init__(self, service: NodeService) -> None:
        self._service = service

    def GetCapabilities(
        self, request: pb.CapabilitiesRequest, context: grpc.ServicerContext
    ) -> pb.Capabilities:
        with _boundary(context, "GetCapabilities", self._service.query_log) as requester:
            return capabilities_to_pb(self._service.capabilities(requester))
        raise _Aborted  # pragma: no cover - _boundary aborts on every error

    def Preflight(
        self, request: pb.QueryRequest, context: grpc.ServicerContext
    ) -> pb.PreflightResponse:
        with _boundary(context, "Preflight", self._service.query_log) as requester:
            return preflight_to_pb(
                self._service.preflight(requester, _spec(request), request.request_id)
            )
        raise _Aborted  # pragma: no cover

    def Query(self, request: pb.QueryRequest, context: grpc.ServicerContext) -> pb.QueryResponse:
        with _boundary(context, "Query", self._service.query_log) as requester:
            answer = self._service.query(requester, request.request_id, _spec(request))
            budget = self._service.ledger.status(requester, self._service.clock())
            return answer_to_pb(answer, budget)
        raise _Aborted  # pragma: no cover


def _spec(request: pb.QueryRequest) -> QuerySpec:
    try:
        return spec_from_pb(request)
    except WireFormatError as exc:
        raise InvalidParametersError(str(exc)) from exc


_LOG_METHODS = {"GetCapabilities": "capabilities", "Preflight": "preflight", "Query": "query"}


@contextmanager
def _boundary(
    context: grpc.ServicerContext, method: str, query_log: QueryLog | None = None
) -> Iterator[str]:
    """Check protocol version, yield the requester, map domain errors to statuses.

    Refusals and failures the service did not log itself (a protocol version
    mismatch, a malformed message, an error after the service returned) are appended
    to `query_log` here, so the log holds every request that reached the node.
    """
    metadata = dict(context.invocation_metadata())
    try:
        version = metadata.get(PROTOCOL_METADATA_KEY, "")
        if version != PROTOCOL_VERSION:
            shown = version[:64]  # never echo an unbounded header back
            raise VersionMismatchError(
                f"protocol version mismatch: client sent '{shown or '(none)'}', "
                f"this node speaks '{PROTOCOL_VERSION}'",
                {"client_version": shown, "node_version": PROTOCOL_VERSION},
            )
        requester = requester_identity(context, metadata)
        yield requester
    except RefusedError as exc:
        log.info("request_refused", method=method, reason=exc.reason.value)
        _log_unlogged(query_log, context, metadata, method, exc)
        context.abort_with_status(rpc_status.to_status(refusal_status(exc)))
    except Exception as exc:
        log.exception("request_failed", method=method)
        _log_unlogged(query_log, context, metadata, method, exc)
        context.abort(grpc.StatusCode.INTERNAL, "internal error in the node; see its log")


def _log_unlogged(
    query_log: QueryLog | None,
    context: grpc.ServicerContext,
    metadata: dict[str, str],
    method: str,
    exc: Exception,
) -> None:
    """Append a refusal or failure raised outside the service (which logs its own)."""
    if query_log is None or was_logged(exc) or method not in _LOG_METHODS:
        return
    refused = isinstance(exc, RefusedError)
    event = LogEvent(
        requester=requester_identity(context, metadata),
        method=_LOG_METHODS[method],
        status=REFUSED if refused else FAILED,
        reason=exc.reason.value if isinstance(exc, RefusedError) else INTERNAL,
        message=exc.message
        if isinstance(exc, RefusedError)
        else f"internal error ({type(exc).__name__})",
    )
    try:
        row = query_log.append(event)
    except Exception as append_exc:
        log.error("querylog.append_failed", method=method, error=type(append_exc).__name__)
        return
    if isinstance(exc, RefusedError):
        exc.details.update(head_details(row))


def capabilities_to_pb(caps: Capabilities) -> pb.Capabilities:
    return pb.Capabilities(
        protocol_version=PROTOCOL_VERSION,
        municipality_code=caps.municipality_code,
        municipality_name=caps.municipality_name,
        country=caps.country,
        catalogue_version=caps.catalogue_version,
        data_version=caps.data_version,
        dimensions=[
            pb.Dimension(
                name=name, description=caps.dimension_descriptions.get(name, ""), keys=list(keys)
            )
            for name, keys in caps.dimensions.items()
        ],
        templates=[
            pb.Template(
                name=t.name,
                version=t.version,
                description=t.description,
                dimensions=list(t.dimensions),
                categories=list(t.categories),
                params=[
                    pb.ParamSpec(
                        name=n, description=d, minimum=lo, maximum=hi, default_value=default
                    )
                    for n, d, lo, hi, default in t.params
                ],
                max_records_per_person=t.max_records_per_person,
            )
            for t in caps.templates
        ],
        mechanisms=[mechanism_to_pb(m) for m in caps.mechanisms],
        budget=budget_to_pb(caps.budget),
        suppression_threshold=caps.suppression_threshold,
        requester=caps.requester,
        software_version=__version__,
    )


@dataclass
class RunningNode:
    """A started node server; `port` is the bound port (useful with port 0)."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service: NodeService

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def start_node_server(
    service: NodeService,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_workers: int = 8,
    server_credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    dedup: DedupService | None = None,
    reconcile: ReconcileService | None = None,
) -> RunningNode:
    """Start serving `service`. Without credentials only a loopback address is allowed.

    Raises `PortError` (a RuntimeError) when the address cannot be bound, taken ports included.
    """
    if server_credentials is None and not is_loopback(host):
        raise ValueError(
            f"refusing to serve without TLS on non-loopback address {host!r}: "
            "insecure mode is for local development on 127.0.0.1 only"
        )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fedaudit-node"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *EXCLUSIVE_PORT_OPTIONS,  # a second node on the same port must fail, not share
        ],
        maximum_concurrent_rpcs=max_workers * 4,
        interceptors=list(interceptors),
    )
    pb_grpc.add_AuditNodeServicer_to_server(AuditNodeServicer(service), server)
    services = [SERVICE_NAME]
    if dedup is not None:
        # Imported here: the dedup servicer reuses this module's refusal mapping.
        from fedaudit.node.ring.server import SERVICE_NAME as DEDUP_SERVICE_NAME
        from fedaudit.node.ring.server import add_dedup_servicer

        add_dedup_servicer(server, dedup)
        services.append(DEDUP_SERVICE_NAME)
    if reconcile is not None:
        from fedaudit.node.ring.reconcile_server import SERVICE_NAME as RECONCILE_SERVICE_NAME
        from fedaudit.node.ring.reconcile_server import add_reconcile_servicer

        add_reconcile_servicer(server, reconcile)
        services.append(RECONCILE_SERVICE_NAME)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *services,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    bound = bind(server, host, port, credentials=server_credentials)  # PortError if taken
    server.start()
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if service.ready()
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    health_servicer.set("", status)
    for name in services:
        health_servicer.set(name, status)
    log.info(
        "node_serving",
        address=f"{host}:{bound}",
        ready=status == health_pb2.HealthCheckResponse.SERVING,
    )
    return RunningNode(server=server, port=bound, health=health_servicer, service=service)
