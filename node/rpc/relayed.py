"""Serving a call that arrived through the hub with the node's ordinary gRPC handlers.

A dial-out node (`node.dialout`) receives calls as envelopes, not as gRPC calls on a
socket it listens on. To answer them with the very same servicers and interceptors
as `node serve` (policy, ledger, limits, revocation, metrics, the malformed-request
guard: no second implementation of the node), this module holds the handlers the way
a `grpc.Server` would (`HandlerTable`, filled by the ordinary `add_*_to_server`
functions), runs a call through the interceptor pipeline, and gives the handler a
`RelayedContext`: a `grpc.ServicerContext` whose peer identity is the auditor's
certificate, as checked from the call's signature (never the hub's word), so
`requester_identity` and the CRL check see the auditor exactly as over mTLS.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _CallDetails(grpc.HandlerCallDetails):  # type: ignore[misc]
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


class HandlerTable:
    """The node's method handlers behind its server interceptors, without a server.

    The generated `add_XServicer_to_server(servicer, server)` functions only call
    `add_generic_rpc_handlers` and `add_registered_method_handlers`, so they fill this
    table as they would a server.
    """

    def __init__(self, interceptors: Sequence[grpc.ServerInterceptor] = ()) -> None:
        self._interceptors = list(interceptors)
        self._registered: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self._registered[f"/{service}/{name}"] = handler

    def lookup(
        self, method: str, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> grpc.RpcMethodHandler | None:
        """The handler for `method` after every interceptor, as a server would run it."""
        details = _CallDetails(method, metadata)

        def base(call: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            handler = self._registered.get(call.method)
            if handler is not None:
                return handler
            for generic in self._generic:
                handler = generic.service(call)
                if handler is not None:
                    return handler
            return None

        def at(index: int, call: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            if index == len(self._interceptors):
                return base(call)
            return self._interceptors[index].intercept_service(lambda c: at(index + 1, c), call)

        return at(0, details)


class Aborted(Exception):
    """Raised by `RelayedContext.abort`, as grpcio raises from a real context."""


class RelayedContext(grpc.ServicerContext):  # type: ignore[misc]
    """The context of a relayed call: the auditor's verified identity, the call's deadline."""

    def __init__(
        self,
        *,
        metadata: tuple[tuple[str, str | bytes], ...],
        requester: str,
        certificate_pem: bytes,
        timeout: float,
        peer: str,
    ) -> None:
        self._metadata = metadata
        self._requester = requester
        self._certificate_pem = certificate_pem
        self._deadline = time.monotonic() + timeout if timeout > 0 else None
        self._peer = peer
        self._cancelled = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None

    # -- who is calling (what gRPC's TLS layer would report for an mTLS peer)
    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> list[bytes]:
        return [self._requester.encode()]

    def peer_identity_key(self) -> str:
        return "x509_common_name"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {
            "transport_security_type": [b"ssl"],
            "x509_common_name": [self._requester.encode()],
            "x509_pem_cert": [self._certificate_pem],
        }

    # -- the outcome
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details
        raise Aborted(details)

    def abort_with_status(self, status: Any) -> None:
        self.set_trailing_metadata(status.trailing_metadata)
        self.abort(status.code, status.details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata or ())

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    def send_initial_metadata(self, initial_metadata: Any) -> None:
        return None  # nothing of the node's handlers sends any; the envelope has none

    def set_compression(self, compression: Any) -> None:
        return None

    def disable_next_message_compression(self) -> None:
        return None

    # -- life cycle
    def is_active(self) -> bool:
        return not self._cancelled.is_set() and self.time_remaining() != 0

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._callbacks.append(callback)
        return True

    def done(self) -> None:
        """Run the callbacks a server runs when a call ends."""
        for callback in self._callbacks:
            try:
                callback()
            except Exception:
                log.exception("relayed_call.callback_failed")


@dataclass(frozen=True)
class Outcome:
    """How a relayed call ended: grpc status code, details, trailing metadata."""

    code: grpc.StatusCode
    details: str
    trailing: tuple[tuple[str, str | bytes], ...]


def run_handler(
    handler: grpc.RpcMethodHandler,
    context: RelayedContext,
    requests: Iterator[bytes],
    send: Callable[[bytes], None],
) -> Outcome:
    """Run one call: deserialize requests, call the behaviour, serialize each response.

    `requests` yields the raw request messages; `send` receives each raw response. The
    outcome mirrors what grpcio would send: the context's code, details and trailers
    after an abort, UNKNOWN (without the exception's text) after an unexpected error.
    """
    deserialize = handler.request_deserializer or (lambda raw: raw)
    serialize = handler.response_serializer or (lambda message: message)
    try:
        if handler.unary_unary is not None or handler.unary_stream is not None:
            request = _only(requests)
            if handler.unary_unary is not None:
                send(serialize(handler.unary_unary(deserialize(request), context)))
            else:
                for response in handler.unary_stream(deserialize(request), context):
                    send(serialize(response))
        else:
            stream = (deserialize(raw) for raw in requests)
            if handler.stream_unary is not None:
                send(serialize(handler.stream_unary(stream, context)))
            else:
                for response in handler.stream_stream(stream, context):
                    send(serialize(response))
    except Aborted:
        return Outcome(
            context.code() or grpc.StatusCode.UNKNOWN,
            context.details() or "",
            context.trailing_metadata(),
        )
    except _BadStream as exc:
        return Outcome(grpc.StatusCode.INVALID_ARGUMENT, str(exc), ())
    except Exception:
        log.exception("relayed_call.failed")
        return Outcome(grpc.StatusCode.UNKNOWN, "Exception calling application", ())
    finally:
        context.done()
    code = context.code() or grpc.StatusCode.OK
    return Outcome(code, context.details() or "", context.trailing_metadata())


class _BadStream(Exception):
    """A unary call arrived with no request message or with several."""


def _only(requests: Iterator[bytes]) -> bytes:
    first = next(requests, None)
    if first is None:
        raise _BadStream("the call carried no request message")
    if next(requests, None) is not None:
        raise _BadStream("a unary call carried more than one request message")
    return first
