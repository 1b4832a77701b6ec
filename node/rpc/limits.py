"""Per-requester limits at the node's gRPC boundary: concurrent requests and request rate.

A careless or adversarial auditor must not be able to starve the others (DESIGN §3),
so each requester gets at most `max_concurrent` requests in flight and a token bucket
of `burst` requests refilled at `rate_per_second`. A request over either limit is
refused before it reaches the service, so it is never logged as answered and never
charged: RESOURCE_EXHAUSTED with a `google.rpc.ErrorInfo` (reason RATE_LIMITED, the
same shape as every other refusal, see `refusal_status`) and a retry hint, both in the
ErrorInfo metadata (`retry_after_ms`) and as the trailing metadata header
`retry-after-ms`, so a client can back off without parsing messages.

The requester is identified the way the servicer does (`requester_identity`: the mTLS
peer's certificate CN, else the `fedaudit-requester` header), so a client cannot dodge
its limits by naming someone else while it holds a certificate. Health checking and
reflection are never limited (load balancers and operators poll them). Message size is
capped by the server itself (`MAX_MESSAGE_BYTES` in `start_node_server`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_status import rpc_status

from fedaudit.node.errors import RateLimitedError
from fedaudit.node.rpc.status import refusal_status, requester_identity

log = structlog.get_logger(__name__)

RETRY_AFTER_METADATA_KEY = "retry-after-ms"
"""Trailing metadata header with the suggested wait in whole milliseconds."""

_MAX_TRACKED_REQUESTERS = 10_000
"""Buckets kept at most; the least recently seen idle ones are forgotten first.

Unknown requester names cost the attacker nothing to invent, so the table must not
grow without bound; a forgotten requester merely starts again with a full bucket.
"""


@dataclass(frozen=True)
class LimitSettings:
    """How much one requester may ask of this node; the defaults suit an audit fan-out
    (the coordinator sends one request at a time per node; 4 in flight leave a default
    8-worker node room for other requesters).

    `max_concurrent` bounds requests in flight per requester (0 disables the check),
    `rate_per_second` and `burst` define its token bucket (rate 0 disables it), and
    `concurrency_retry_ms` is the hint given when the concurrency limit refuses (a
    request in flight usually finishes within tens of milliseconds).
    """

    max_concurrent: int = 4
    rate_per_second: float = 50.0
    burst: int = 100
    concurrency_retry_ms: int = 100
    limited_prefixes: tuple[str, ...] = ("/fedaudit.",)

    def __post_init__(self) -> None:
        if not isinstance(self.max_concurrent, int) or self.max_concurrent < 0:
            raise ValueError(f"max_concurrent must be an integer >= 0, got {self.max_concurrent!r}")
        if not math.isfinite(self.rate_per_second) or self.rate_per_second < 0:
            raise ValueError(
                f"rate_per_second must be a finite number >= 0, got {self.rate_per_second!r}"
            )
        if not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"burst must be an integer >= 1, got {self.burst!r}")
        if not isinstance(self.concurrency_retry_ms, int) or self.concurrency_retry_ms < 1:
            raise ValueError(
                f"concurrency_retry_ms must be an integer >= 1, got {self.concurrency_retry_ms!r}"
            )


@dataclass
class _State:
    """One requester's bucket and in-flight count (guarded by the limiter's lock)."""

    tokens: float
    updated: float
    in_flight: int = 0


class _Admission:
    """Decides and records admissions; separate from gRPC so its arithmetic is plain."""

    def __init__(self, settings: LimitSettings, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._states: OrderedDict[str, _State] = OrderedDict()

    def admit(self, requester: str) -> RateLimitedError | None:
        """Take a token and a concurrency slot, or return the refusal (nothing taken)."""
        s = self._settings
        now = self._clock()
        with self._lock:
            state = self._states.get(requester)
            if state is None:
                state = _State(tokens=float(s.burst), updated=now)
                self._states[requester] = state
                self._forget_idle()
            self._states.move_to_end(requester)
            if s.rate_per_second > 0:
                elapsed = max(0.0, now - state.updated)
                state.tokens = min(float(s.burst), state.tokens + elapsed * s.rate_per_second)
            state.updated = now
            if s.max_concurrent and state.in_flight >= s.max_concurrent:
                return _refusal(
                    f"at most {s.max_concurrent} concurrent requests per requester; "
                    f"{state.in_flight} are in flight",
                    limit="concurrent_requests",
                    retry_ms=s.concurrency_retry_ms,
                )
            if s.rate_per_second > 0:
                if state.tokens < 1.0:
                    wait_ms = math.ceil((1.0 - state.tokens) / s.rate_per_second * 1000.0)
                    return _refusal(
                        f"at most {s.rate_per_second:g} requests per second per requester "
                        f"(bursts of {s.burst})",
                        limit="request_rate",
                        retry_ms=max(1, wait_ms),
                    )
                state.tokens -= 1.0
            state.in_flight += 1
            return None

    def release(self, requester: str) -> None:
        """Give back the concurrency slot of a finished request."""
        with self._lock:
            state = self._states.get(requester)
            if state is not None and state.in_flight > 0:
                state.in_flight -= 1

    def in_flight(self, requester: str) -> int:
        with self._lock:
            state = self._states.get(requester)
            return 0 if state is None else state.in_flight

    def _forget_idle(self) -> None:
        if len(self._states) <= _MAX_TRACKED_REQUESTERS:
            return
        for name in list(self._states):
            if len(self._states) <= _MAX_TRACKED_REQUESTERS:
                break
            if self._states[name].in_flight == 0:
                del self._states[name]


def _refusal(message: str, *, limit: str, retry_ms: int) -> RateLimitedError:
    return RateLimitedError(
        f"rate limited: {message}; retry after {retry_ms} ms",
        {"limit": limit, "retry_after_ms": str(retry_ms)},
    )


@dataclass(frozen=True)
class _Status(grpc.Status):  # type: ignore[misc]
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _abort(context: grpc.ServicerContext, error: RateLimitedError) -> None:
    """Abort with the refusal's google.rpc.Status plus the retry-after header."""
    status = rpc_status.to_status(refusal_status(error))
    retry = ((RETRY_AFTER_METADATA_KEY, error.details["retry_after_ms"]),)
    context.abort_with_status(
        _Status(status.code, status.details, tuple(status.trailing_metadata) + retry)
    )


class RequestLimiter(grpc.ServerInterceptor):  # type: ignore[misc]
    """A `grpc.ServerInterceptor` enforcing `LimitSettings` per requester.

    Pass it to `start_node_server(..., interceptors=[RequestLimiter(settings)])`.
    `clock` (monotonic seconds) is injectable for tests.
    """

    def __init__(
        self, settings: LimitSettings | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or LimitSettings()
        self._admission = _Admission(self.settings, clock)

    def in_flight(self, requester: str) -> int:
        """Requests of `requester` currently admitted and not finished (for tests, metrics)."""
        return self._admission.in_flight(requester)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or not method.startswith(self.settings.limited_prefixes):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # pragma: no cover - grpc always sets one of the four

    def _enter(self, context: grpc.ServicerContext, method: str) -> str:
        requester = requester_identity(context, dict(context.invocation_metadata()))
        refusal = self._admission.admit(requester)
        if refusal is not None:
            log.info(
                "request_rate_limited",
                method=method,
                limit=refusal.details["limit"],
                retry_after_ms=refusal.details["retry_after_ms"],
            )
            _abort(context, refusal)
        return requester

    def _wrap_unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def limited(request: Any, context: grpc.ServicerContext) -> Any:
            requester = self._enter(context, method)
            try:
                return behavior(request, context)
            finally:
                self._admission.release(requester)

        return limited

    def _wrap_stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def limited(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            requester = self._enter(context, method)
            try:
                yield from behavior(request, context)
            finally:
                self._admission.release(requester)

        return limited
