"""How a node names itself and its refusals on the wire, shared by every servicer and interceptor.

The query servicer, the ring servicer and the interceptors (limits, malformed
requests, metrics) must refuse in one format and agree on who is asking, so the
mapping from domain refusals to gRPC status codes lives here and only here.
"""

from __future__ import annotations

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from fedaudit import PROTOCOL_METADATA_KEY, PROTOCOL_VERSION, REQUESTER_METADATA_KEY
from fedaudit.node.errors import RefusalReason, RefusedError, VersionMismatchError
from fedaudit.wire.v1 import node_pb2 as pb

ERROR_DOMAIN = "fedaudit.org"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AuditNode"].full_name

_STATUS_FOR_REASON: dict[RefusalReason, grpc.StatusCode] = {
    RefusalReason.REQUESTER_NOT_ALLOWED: grpc.StatusCode.PERMISSION_DENIED,
    RefusalReason.TEMPLATE_NOT_ALLOWED: grpc.StatusCode.PERMISSION_DENIED,
    RefusalReason.BUDGET_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RefusalReason.INVALID_PARAMETERS: grpc.StatusCode.INVALID_ARGUMENT,
    RefusalReason.VERSION_MISMATCH: grpc.StatusCode.FAILED_PRECONDITION,
    RefusalReason.DATA_UNAVAILABLE: grpc.StatusCode.FAILED_PRECONDITION,
    RefusalReason.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RefusalReason.ROSTER_REFUSED: grpc.StatusCode.PERMISSION_DENIED,
    RefusalReason.RING_UNAVAILABLE: grpc.StatusCode.FAILED_PRECONDITION,
}


def refusal_status(error: RefusedError) -> status_pb2.Status:
    """A google.rpc.Status carrying the refusal's reason and details."""
    code = _STATUS_FOR_REASON[error.reason]
    info = error_details_pb2.ErrorInfo(
        reason=error.reason.value, domain=ERROR_DOMAIN, metadata=error.details
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=[detail]
    )


def requester_identity(context: grpc.ServicerContext, metadata: dict[str, str]) -> str:
    """Who is asking: the mTLS peer identity when there is one, else the metadata header."""
    auth = context.auth_context()
    names = auth.get("x509_common_name") if auth else None
    if names:
        return names[0].decode()
    return metadata.get(REQUESTER_METADATA_KEY, "")


def checked_requester(context: grpc.ServicerContext) -> str:
    """The caller's identity, after refusing a client that speaks another protocol version."""
    metadata = dict(context.invocation_metadata())
    version = metadata.get(PROTOCOL_METADATA_KEY, "")
    if version != PROTOCOL_VERSION:
        error = VersionMismatchError(
            f"protocol version mismatch: client sent '{version or '(none)'}', "
            f"this node speaks '{PROTOCOL_VERSION}'",
            {"client_version": version, "node_version": PROTOCOL_VERSION},
        )
        context.abort_with_status(rpc_status.to_status(refusal_status(error)))
    return requester_identity(context, metadata)


def abort_with(context: grpc.ServicerContext, event: str, method: str, exc: Exception) -> None:
    """End a call on `exc`: a refusal with its structured reason, anything else INTERNAL.

    The exception's text is never sent for an internal error (it could carry data);
    the node's own log names its type.
    """
    log = structlog.get_logger(__name__)
    if isinstance(exc, RefusedError):
        log.info(f"{event}.refused", method=method, reason=exc.reason.value)
        context.abort_with_status(rpc_status.to_status(refusal_status(exc)))
    log.error(f"{event}.failed", method=method, error=type(exc).__name__)
    context.abort(grpc.StatusCode.INTERNAL, "internal error in the node; see its log")
