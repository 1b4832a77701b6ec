"""The node's outbound edge: dial the hub, serve the calls it relays, never listen.

`fedaudit node connect --hub HOST:PORT` runs this instead of `server.py`. It opens one
long-lived gRPC stream to the hub (TLS, the hub's certificate checked against the
federation CA and the hub's name), proves the node's federation identity by signing
the hub's per-connection challenge with the node key, and then answers the calls the
hub sends. Each call is an envelope (`fedaudit.common.envelope`): the node checks the
auditor's signature against the federation CA (role auditor), that the call names this
node, is fresh and is not a replay, then runs it through the same handlers and
interceptors as a served node (`node.rpc.relayed`), with the auditor's certificate
name as the requester. Every frame back is signed with the node key and names the
header it answers, so the hub can neither answer for the node nor move an answer to
another call.

When the stream breaks (hub restart, network), calls in flight are cancelled and the
node reconnects with jittered exponential backoff ("full jitter": a random wait up to
min(cap, base * 2^attempt)), so a federation of nodes does not reconnect in lockstep.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2

from fedaudit import __version__
from fedaudit.common.envelope import (
    AUDITOR_PREFIX,
    ENVELOPE_VERSION,
    TO_NODE,
    CallCipher,
    EnvelopeError,
    FrameReader,
    ReplayGuard,
    digest,
    hello_statement,
    metadata_pairs,
    node_cipher,
)
from fedaudit.node.query.service import NodeService
from fedaudit.node.rpc.relayed import HandlerTable, RelayedContext, run_handler
from fedaudit.node.rpc.replies import Replies, auditor_verifier
from fedaudit.node.server import MAX_MESSAGE_BYTES, AuditNodeServicer
from fedaudit.pki.identity import NodeIdentity
from fedaudit.wire.v1 import hub_pb2 as hub_pb
from fedaudit.wire.v1 import hub_pb2_grpc as hub_grpc
from fedaudit.wire.v1 import node_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)

HUB_HEALTH_SERVICE = "hub"
"""gRPC health service name that is SERVING while the node is connected to the hub."""

_END = object()
_CANCEL = object()


@dataclass(frozen=True)
class Backoff:
    """Reconnect waits: uniform in [0, min(cap, base * 2**attempt)] seconds."""

    base: float = 0.5
    cap: float = 30.0

    def wait(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap, self.base * (2 ** min(attempt, 30))))


@dataclass
class _Inbound:
    """One relayed call in progress at this node."""

    reader: FrameReader
    context: RelayedContext | None = None
    cipher: CallCipher | None = None
    requests: queue.Queue[Any] = field(default_factory=queue.Queue)


class DialoutNode:
    """A node that dials the hub and serves what it relays; `start()`, then `stop()`.

    `service`, `health` mirror `RunningNode`, so the same observability (`attach`:
    readiness, health and metrics on loopback) works for both modes.
    """

    def __init__(
        self,
        service: NodeService,
        *,
        hub: str,
        hub_name: str,
        identity: NodeIdentity,
        credentials: grpc.ChannelCredentials,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        dedup: Any = None,
        reconcile: Any = None,
        max_workers: int = 8,
        backoff: Backoff = Backoff(),
        max_skew_seconds: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.service = service
        self.hub = hub
        self.identity = identity
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self._credentials = credentials
        self._options = [
            ("grpc.ssl_target_name_override", hub_name),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        self._table = HandlerTable(interceptors)
        pb_grpc.add_AuditNodeServicer_to_server(AuditNodeServicer(service), self._table)
        if dedup is not None:
            from fedaudit.node.ring.server import add_dedup_servicer

            add_dedup_servicer(self._table, dedup)  # type: ignore[arg-type]
        if reconcile is not None:
            from fedaudit.node.ring.reconcile_server import add_reconcile_servicer

            add_reconcile_servicer(self._table, reconcile)  # type: ignore[arg-type]
        self._verify = auditor_verifier(identity)
        self._replays = ReplayGuard() if max_skew_seconds is None else ReplayGuard(max_skew_seconds)
        self._pool = futures.ThreadPoolExecutor(max_workers, thread_name_prefix="fedaudit-dialout")
        self._backoff = backoff
        self._rng = rng or random.SystemRandom()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self.connections = 0
        """Successful connections so far (tests and the log read it)."""
        self.last_error = ""

    # -- life cycle
    def start(self) -> DialoutNode:
        self._set_health()
        self._thread = threading.Thread(target=self._run, name="fedaudit-dialout", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, grace: float | None = 1.0) -> None:
        self._stop.set()
        self.health.enter_graceful_shutdown()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread is not None:
            self._thread.join(timeout=grace if grace is not None else 5.0)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _set_health(self) -> None:
        """Health service "hub": SERVING while connected (readiness "" is the database's)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self._connected.is_set()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set(HUB_HEALTH_SERVICE, status)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self._session()
                attempt = 0  # the connection was up: start the backoff afresh
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                details = exc.details() if hasattr(exc, "details") else str(exc)
                self.last_error = f"{code.name if code else 'ERROR'}: {details}"
                if not self._stop.is_set():
                    log.warning("hub_connection_failed", hub=self.hub, error=self.last_error)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("hub_session_failed", hub=self.hub)
            if self._stop.is_set():
                break
            wait = self._backoff.wait(attempt, self._rng)
            attempt += 1
            log.info("hub_reconnect_wait", hub=self.hub, seconds=round(wait, 2), attempt=attempt)
            self._stop.wait(wait)

    # -- one connection
    def _session(self) -> None:
        outgoing: queue.Queue[Any] = queue.Queue()

        def to_hub() -> Iterator[hub_pb.NodeToHub]:
            while True:
                item = outgoing.get()
                if item is _END:
                    return
                yield item

        calls: dict[str, _Inbound] = {}
        lock = threading.Lock()
        channel = grpc.secure_channel(self.hub, self._credentials, options=self._options)
        try:
            stream = hub_grpc.HubStub(channel).Connect(to_hub())
            self._stream = stream
            if self._stop.is_set():
                stream.cancel()
            first = next(stream)
            if first.WhichOneof("kind") != "challenge":
                raise EnvelopeError("the hub did not open with a challenge")
            if first.challenge.envelope_version != ENVELOPE_VERSION:
                raise EnvelopeError(
                    f"the hub speaks envelope version {first.challenge.envelope_version}, "
                    f"this node {ENVELOPE_VERSION}"
                )
            outgoing.put(
                hub_pb.NodeToHub(
                    hello=hub_pb.NodeHello(
                        envelope_version=ENVELOPE_VERSION,
                        name=self.identity.name,
                        certificate_pem=self.identity.certificate_pem,
                        signature=self.identity.sign(hello_statement(first.challenge.nonce)),
                        software_version=__version__,
                    )
                )
            )
            for message in stream:
                kind = message.WhichOneof("kind")
                if kind == "frame":
                    self._on_frame(message.frame, calls, lock, outgoing)
                elif kind == "cancel":
                    self._cancel(calls.get(message.cancel.call_id))
                elif kind == "welcome":
                    self._on_connected()
        finally:
            self._stream = None
            outgoing.put(_END)
            was_connected = self._connected.is_set()
            self._connected.clear()
            self._set_health()
            with lock:
                for call in calls.values():
                    self._cancel(call)
                calls.clear()
            channel.close()
            if was_connected:
                log.warning("hub_disconnected", hub=self.hub)

    def _on_connected(self) -> None:
        self.connections += 1
        self._connected.set()
        self._set_health()
        log.info("hub_connected", hub=self.hub, node=self.identity.name)

    @staticmethod
    def _cancel(call: _Inbound | None) -> None:
        if call is None:
            return
        if call.context is not None:
            call.context.cancel()
        call.requests.put(_CANCEL)

    def _on_frame(
        self,
        signed: hub_pb.SignedFrame,
        calls: dict[str, _Inbound],
        lock: threading.Lock,
        outgoing: queue.Queue[Any],
    ) -> None:
        try:
            call_id = hub_pb.Frame.FromString(signed.body).call_id
        except Exception:
            log.warning("hub_frame_unreadable")
            return
        with lock:
            call = calls.get(call_id)
            new = call is None
            if call is None:
                call = _Inbound(FrameReader(AUDITOR_PREFIX, self._verify))
                calls[call_id] = call
        if new:
            self._begin(call, call_id, signed, calls=calls, lock=lock, outgoing=outgoing)
            return
        try:
            frame = call.reader.read(signed)
            if call.cipher is None:
                raise EnvelopeError("a frame arrived for a call that was refused")
            opened = [
                call.cipher.open(TO_NODE, frame.seq, i, m) for i, m in enumerate(frame.messages)
            ]
        except EnvelopeError as exc:
            log.warning("hub_frame_refused", call_id=call_id, problem=str(exc))
            self._cancel(call)
            return
        for raw in opened:
            call.requests.put(raw)
        if frame.end:
            call.requests.put(_END)

    def _begin(
        self,
        call: _Inbound,
        call_id: str,
        signed: hub_pb.SignedFrame,
        *,
        calls: dict[str, _Inbound],
        lock: threading.Lock,
        outgoing: queue.Queue[Any],
    ) -> None:
        """Check a call's first frame; refuse it signed, or start serving it.

        `call_id` was read from the frame before its signature was checked: it only
        routes the refusal back, it grants nothing.
        """
        request_digest = digest(signed.body)
        replies = Replies(self.identity, request_digest, outgoing)
        try:
            frame = call.reader.read(signed)
            header = frame.header
            if not frame.HasField("header"):
                raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, "the call has no header")
            if header.envelope_version != ENVELOPE_VERSION:
                raise _Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"envelope version {header.envelope_version} is not this node's "
                    f"({ENVELOPE_VERSION})",
                )
            if header.node != self.identity.name:
                raise _Refusal(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"the call is addressed to {header.node!r}, this node is "
                    f"{self.identity.name!r}",
                )
            self._replays.admit(header)
            if not header.auditor_key:
                raise _Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "the call is not encrypted to this node; a dial-out node answers only "
                    "end-to-end encrypted calls",
                )
            call.cipher = node_cipher(self.identity.key, call_id, header.auditor_key)
            replies.cipher = call.cipher
            opened = [
                call.cipher.open(TO_NODE, frame.seq, i, m) for i, m in enumerate(frame.messages)
            ]
            metadata = metadata_pairs(header.metadata)
            handler = self._table.lookup(header.method, metadata)
            if handler is None:
                raise _Refusal(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {header.method}")
        except EnvelopeError as exc:
            log.warning("relayed_call_refused", problem=str(exc))
            replies.finish(call_id, grpc.StatusCode.UNAUTHENTICATED, str(exc))
            self._forget(calls, lock, call_id)
            return
        except _Refusal as exc:
            log.warning("relayed_call_refused", problem=exc.details)
            replies.finish(call_id, exc.code, exc.details)
            self._forget(calls, lock, call_id)
            return
        call.context = RelayedContext(
            metadata=metadata,
            requester=call.reader.signer,
            certificate_pem=signed.certificate_pem,
            timeout=header.timeout_seconds,
            peer=f"hub:{self.hub}",
        )
        for raw in opened:
            call.requests.put(raw)
        if frame.end:
            call.requests.put(_END)

        def serve() -> None:
            assert call.context is not None
            outcome = run_handler(
                handler,
                call.context,
                _requests(call),
                lambda raw: replies.message(call_id, raw),
            )
            replies.finish(call_id, outcome.code, outcome.details, outcome.trailing)
            self._forget(calls, lock, call_id)

        self._pool.submit(serve)

    @staticmethod
    def _forget(calls: dict[str, _Inbound], lock: threading.Lock, call_id: str) -> None:
        with lock:
            calls.pop(call_id, None)


class _Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _requests(call: _Inbound) -> Iterator[bytes]:
    """The call's request messages as they arrive; ends at the auditor's end frame."""
    assert call.context is not None
    while True:
        remaining = call.context.time_remaining()
        try:
            item = call.requests.get(timeout=remaining if remaining is not None else None)
        except queue.Empty:
            call.context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed")
            return
        if item is _END:
            return
        if item is _CANCEL:
            call.context.abort(grpc.StatusCode.CANCELLED, "the auditor cancelled the call")
            return
        yield item


def start_dialout_node(service: NodeService, **kwargs: Any) -> DialoutNode:
    """Build and start a `DialoutNode` (the keyword arguments of its constructor)."""
    return DialoutNode(service, **kwargs).start()
