"""Turn undecodable request bytes into a precise INVALID_ARGUMENT refusal.

grpcio answers bytes that do not parse as the method's request message with
INTERNAL ("Exception deserializing request!"), which tells a client the node is
broken when it was the client's message. This interceptor swaps each handler's
request deserializer for one that catches the parse error and lets the call reach
a behavior that refuses it like any other bad input: INVALID_ARGUMENT with a
`google.rpc.ErrorInfo` (reason INVALID_PARAMETERS, field `request`). Nothing reaches
the service, so nothing is charged or written.

Install it inside the limiter (`interceptors=[RequestLimiter(...), MalformedRequestGuard()]`)
so malformed requests still count against the sender's rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import structlog
from grpc_status import rpc_status

from fedaudit.node.errors import InvalidParametersError
from fedaudit.node.rpc.status import refusal_status

log = structlog.get_logger(__name__)

_MALFORMED = object()
"""What the tolerant deserializer returns for bytes that do not parse."""


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # protobuf raises DecodeError, but any parse failure is the input's
            return _MALFORMED

    return deserialize


def _refuse(context: grpc.ServicerContext, method: str) -> None:
    log.info("request_malformed", method=method)
    error = InvalidParametersError(
        "the request bytes are not a valid message of this method", {"field": "request"}
    )
    context.abort_with_status(rpc_status.to_status(refusal_status(error)))


def _checked(requests: Iterator[Any], context: grpc.ServicerContext, method: str) -> Iterator[Any]:
    for request in requests:
        if request is _MALFORMED:
            _refuse(context, method)
        yield request


class MalformedRequestGuard(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuse undecodable requests with INVALID_ARGUMENT instead of grpcio's INTERNAL."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method or ""
        deserializer = _tolerant(handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary is not None or handler.unary_stream is not None:
            streaming = handler.unary_stream is not None
            inner = handler.unary_stream if streaming else handler.unary_unary

            def unary_in(request: Any, context: grpc.ServicerContext) -> Any:
                if request is _MALFORMED:
                    _refuse(context, method)
                return inner(request, context)

            factory = (
                grpc.unary_stream_rpc_method_handler
                if streaming
                else grpc.unary_unary_rpc_method_handler
            )
            return factory(
                unary_in, request_deserializer=deserializer, response_serializer=serializer
            )
        streaming = handler.stream_stream is not None
        inner_s = handler.stream_stream if streaming else handler.stream_unary

        def stream_in(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return inner_s(_checked(requests, context, method), context)

        factory_s = (
            grpc.stream_stream_rpc_method_handler
            if streaming
            else grpc.stream_unary_rpc_method_handler
        )
        return factory_s(
            stream_in, request_deserializer=deserializer, response_serializer=serializer
        )
