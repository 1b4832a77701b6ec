"""How the coordinator reaches a node: one small interface and its gRPC version.

Audit logic depends only on `NodeTransport`, so it runs against real gRPC nodes
in production and integration tests, and against `NodeService` objects directly
in unit tests (httpx's MockTransport idea; see `fedaudit.inprocess`). gRPC failures are translated into the
coordinator's errors here and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn, Protocol, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from fedaudit import PROTOCOL_METADATA_KEY, PROTOCOL_VERSION, REQUESTER_METADATA_KEY
from fedaudit.common.serde import (
    answer_from_pb,
    budget_from_pb,
    preflight_from_pb,
    spec_to_pb,
)
from fedaudit.coordinator.errors import (
    NodeRefusedError,
    NodeTimeoutError,
    NodeUnavailableError,
)
from fedaudit.coordinator.running.failures import PeerNames, plain_failure
from fedaudit.node.domain import Answer, BudgetStatus, Preflight, QuerySpec
from fedaudit.node.errors import RefusedError
from fedaudit.wire.v1 import node_pb2 as pb
from fedaudit.wire.v1 import node_pb2_grpc as pb_grpc

T = TypeVar("T")


@dataclass(frozen=True)
class NodeInfo:
    """What the coordinator needs from a node's capabilities."""

    municipality_code: str
    municipality_name: str
    data_version: str
    catalogue_version: str
    budget: BudgetStatus
    templates: tuple[str, ...]


class NodeTransport(Protocol):
    """A connection to one node on behalf of one requester."""

    name: str
    address: str

    def info(self, *, timeout: float) -> NodeInfo: ...

    def preflight(self, spec: QuerySpec, request_id: str, *, timeout: float) -> Preflight: ...

    def query(
        self, spec: QuerySpec, request_id: str, *, timeout: float
    ) -> tuple[Answer, BudgetStatus | None]: ...

    def close(self) -> None: ...


# --- gRPC -----------------------------------------------------------------------------------


def open_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    channel_options: list[tuple[str, object]] | None = None,
) -> grpc.Channel:
    """A channel to a node: mTLS when credentials are given, the node's message cap."""
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024), *(channel_options or [])]
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)


def call_metadata(requester: str) -> tuple[tuple[str, str], ...]:
    """The metadata every call carries: protocol version and (without mTLS) the requester."""
    return ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, requester))


class GrpcNodeTransport:
    """Talks to a node over gRPC; retries transient failures with the same request id.

    Retrying a Query with the same request id is safe: the node returns the stored
    answer at no cost if the first attempt got through.
    """

    def __init__(
        self,
        name: str,
        address: str,
        *,
        requester: str,
        credentials: grpc.ChannelCredentials | None = None,
        retries: int = 2,
        retry_backoff: float = 0.2,
        channel_options: list[tuple[str, object]] | None = None,
        channel: grpc.Channel | None = None,
        peer_names: PeerNames | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self._peer_names = peer_names
        self._channel = (
            channel if channel is not None else open_channel(address, credentials, channel_options)
        )
        self._stub = pb_grpc.AuditNodeStub(self._channel)
        self._metadata = call_metadata(requester)
        self._retries = retries
        self._backoff = retry_backoff

    def info(self, *, timeout: float) -> NodeInfo:
        caps = self._call(
            lambda t: self._stub.GetCapabilities(
                pb.CapabilitiesRequest(), timeout=t, metadata=self._metadata
            ),
            timeout,
        )
        return NodeInfo(
            municipality_code=caps.municipality_code,
            municipality_name=caps.municipality_name,
            data_version=caps.data_version,
            catalogue_version=caps.catalogue_version,
            budget=budget_from_pb(caps.budget),
            templates=tuple(t.name for t in caps.templates),
        )

    def preflight(self, spec: QuerySpec, request_id: str, *, timeout: float) -> Preflight:
        msg = spec_to_pb(spec, request_id)
        return preflight_from_pb(
            self._call(
                lambda t: self._stub.Preflight(msg, timeout=t, metadata=self._metadata), timeout
            )
        )

    def query(
        self, spec: QuerySpec, request_id: str, *, timeout: float
    ) -> tuple[Answer, BudgetStatus | None]:
        msg = spec_to_pb(spec, request_id)
        resp = self._call(
            lambda t: self._stub.Query(msg, timeout=t, metadata=self._metadata), timeout
        )
        budget = budget_from_pb(resp.budget) if resp.HasField("budget") else None
        return answer_from_pb(resp), budget

    def close(self) -> None:
        self._channel.close()

    def _call(self, fn: Callable[[float], T], timeout: float) -> T:
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NodeTimeoutError(self.name, f"no answer within {timeout:.1f} s")
            try:
                with translate_rpc_errors(self.name, self.address, peer_names=self._peer_names):
                    return fn(remaining)
            except NodeUnavailableError:
                attempt += 1
                if attempt > self._retries or deadline - time.monotonic() < self._backoff:
                    raise
                time.sleep(self._backoff * attempt)


@contextmanager
def translate_rpc_errors(
    node: str, address: str = "", *, peer_names: PeerNames | None = None
) -> Iterator[None]:
    """Turn gRPC failures into the coordinator's errors; the only place that reads status codes.

    Connection and TLS failures become one plain sentence (`failures.plain_failure`):
    with `address` it names where the node was dialled, with `peer_names` whose
    certificate answered there.
    """
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        code_name = code.name if code else ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise NodeTimeoutError(
                node, plain_failure(node, address, code_name, details or "")
            ) from exc
        if code == grpc.StatusCode.UNAVAILABLE:
            raise NodeUnavailableError(
                node, plain_failure(node, address, code_name, details, peer_names=peer_names)
            ) from exc
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    raise NodeRefusedError(
                        node, info.reason, status.message, dict(info.metadata)
                    ) from exc
        raise NodeUnavailableError(
            node, plain_failure(node, address, code_name, details, peer_names=peer_names)
        ) from exc


@contextmanager
def translate_refusals(node: str) -> Iterator[None]:
    """Turn a node's domain refusal into the coordinator's, for transports without gRPC."""
    try:
        yield
    except RefusedError as exc:
        raise NodeRefusedError(node, exc.reason.value, exc.message, exc.details) from exc


class UnavailableTransport:
    """A node the coordinator will not talk to (its certificate was revoked, say).

    Every call fails as unavailable with the reason, so the audit's coverage names the
    node and why, exactly as for a node that is down.
    """

    def __init__(self, name: str, address: str, reason: str) -> None:
        self.name = name
        self.address = address
        self._reason = reason

    def _refuse(self, *_: object, **__: object) -> NoReturn:
        raise NodeUnavailableError(self.name, self._reason)

    info = preflight = query = _refuse

    def close(self) -> None:
        return None
