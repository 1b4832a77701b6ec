"""The hub's relay: connected nodes by name, and calls forwarded to them frame by frame.

The hub holds no key that could sign for a node or an auditor and never answers a call
itself: it forwards the auditor's signed frames to the node named in the call header
and the node's signed frames back, and ends a call itself only with its own gRPC
status when it cannot relay (node not connected, node gone mid-call, deadline). It
reads no message inside the frames; it parses a frame only to route it (call id) and
to see that the node's last frame has arrived.
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog

from fedaudit.common.envelope import ENVELOPE_VERSION
from fedaudit.hub.admission import Admission, AdmissionError
from fedaudit.wire.v1 import hub_pb2 as hub_pb
from fedaudit.wire.v1 import hub_pb2_grpc as hub_grpc

log = structlog.get_logger(__name__)

_GONE = object()
"""Put in a call's queue when its node disconnects."""

FIRST_FRAME_SECONDS = 10.0
"""How long a peer may take to send its hello or its call's first frame.

Before that frame the peer is anonymous; without a limit, idle connections from anyone
who reaches the port would hold the hub's workers."""

MAX_CALLS_PER_NODE = 256
"""Calls in flight to one node at most; more are refused (RESOURCE_EXHAUSTED)."""


@dataclass
class NodeSession:
    """One connected node: what to send it, and the calls waiting for its frames."""

    name: str
    certificate_pem: bytes = b""  # what the node's hello proved it holds the key of
    outgoing: queue.Queue[Any] = field(default_factory=queue.Queue)
    pending: dict[str, queue.Queue[Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: threading.Event = field(default_factory=threading.Event)

    def open_call(self, call_id: str) -> queue.Queue[Any]:
        with self.lock:
            if self.closed.is_set():
                raise _Unavailable(f"node {self.name} disconnected from the hub")
            if call_id in self.pending:
                raise _Refused(grpc.StatusCode.ALREADY_EXISTS, f"call {call_id} is in flight")
            if len(self.pending) >= MAX_CALLS_PER_NODE:
                raise _Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"node {self.name} has {MAX_CALLS_PER_NODE} calls in flight through the hub",
                )
            replies: queue.Queue[Any] = queue.Queue()
            self.pending[call_id] = replies
            return replies

    def close_call(self, call_id: str) -> None:
        with self.lock:
            self.pending.pop(call_id, None)

    def deliver(self, signed: hub_pb.SignedFrame) -> None:
        try:
            call_id = hub_pb.Frame.FromString(signed.body).call_id
        except Exception:
            log.warning("hub_node_frame_unreadable", node=self.name)
            return
        with self.lock:
            replies = self.pending.get(call_id)
        if replies is not None:
            replies.put(signed)

    def close(self) -> None:
        with self.lock:
            self.closed.set()
            pending = list(self.pending.values())
            self.pending.clear()
        for replies in pending:
            replies.put(_GONE)
        self.outgoing.put(None)


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Unavailable(_Refused):
    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, details)


class HubServicer(hub_grpc.HubServicer):
    """Connect (nodes), Call (auditors) and Connected (who is here)."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._sessions: dict[str, NodeSession] = {}
        self._lock = threading.Lock()

    def connected(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    def session_for(self, node: str) -> NodeSession | None:
        """The connection of the node a call names (None when it is not connected)."""
        with self._lock:
            return self._sessions.get(node)

    def close_all(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.close()

    def Connected(
        self, request: hub_pb.ConnectedRequest, context: grpc.ServicerContext
    ) -> hub_pb.ConnectedResponse:
        """Names only: who is connected is no secret among the federation's parties."""
        return hub_pb.ConnectedResponse(nodes=self.connected())

    def Certificate(
        self, request: hub_pb.CertificateRequest, context: grpc.ServicerContext
    ) -> hub_pb.CertificateResponse:
        """A connected node's certificate: auditors check it and encrypt their calls to it."""
        session = self.session_for(request.node)
        if session is None:
            context.abort(
                grpc.StatusCode.UNAVAILABLE, f"node {request.node[:64]} is not connected to the hub"
            )
        assert session is not None
        return hub_pb.CertificateResponse(certificate_pem=session.certificate_pem)

    # -- nodes
    def Connect(
        self, request_iterator: Iterator[hub_pb.NodeToHub], context: grpc.ServicerContext
    ) -> Iterator[hub_pb.HubToNode]:
        nonce = secrets.token_bytes(32)
        yield hub_pb.HubToNode(
            challenge=hub_pb.HubChallenge(envelope_version=ENVELOPE_VERSION, nonce=nonce)
        )
        first = _first(request_iterator, context)
        if first is None or first.WhichOneof("kind") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a node must answer with its hello")
        assert first is not None
        if first.hello.envelope_version != ENVELOPE_VERSION:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"envelope version {first.hello.envelope_version}; this hub speaks "
                f"{ENVELOPE_VERSION}",
            )
        try:
            name = self._admission.node(first.hello, nonce)
        except AdmissionError as exc:
            log.warning("hub_node_refused", claimed=first.hello.name[:64], problem=str(exc))
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"node refused by the hub: {exc}")
        session = NodeSession(name, first.hello.certificate_pem)
        with self._lock:
            previous = self._sessions.get(name)
            self._sessions[name] = session
        if previous is not None:
            previous.close()  # the node reconnected: its old stream is dead or stale
        log.info("hub_node_connected", node=name, software=first.hello.software_version[:32])
        reader = threading.Thread(
            target=self._read_node,
            args=(session, request_iterator),
            name=f"hub-node-{name}",
            daemon=True,
        )
        reader.start()
        context.add_callback(session.close)
        try:
            yield hub_pb.HubToNode(welcome=hub_pb.HubWelcome(node=name))
            while True:
                item = session.outgoing.get()
                if item is None:
                    return
                yield item
        finally:
            session.close()
            with self._lock:
                if self._sessions.get(name) is session:
                    del self._sessions[name]
            log.info("hub_node_disconnected", node=name)

    @staticmethod
    def _read_node(session: NodeSession, frames: Iterator[hub_pb.NodeToHub]) -> None:
        try:
            for message in frames:
                if message.WhichOneof("kind") == "frame":
                    session.deliver(message.frame)
        except grpc.RpcError:
            pass  # the stream ended; close() below fails the calls in flight
        except Exception:
            log.exception("hub_node_reader_failed", node=session.name)
        finally:
            session.close()

    # -- auditors
    def Call(
        self, request_iterator: Iterator[hub_pb.SignedFrame], context: grpc.ServicerContext
    ) -> Iterator[hub_pb.SignedFrame]:
        first = _first(request_iterator, context)
        if first is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call sent no frame")
        assert first is not None
        try:
            frame = hub_pb.Frame.FromString(first.body)
        except Exception:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call's first frame does not parse")
        try:
            auditor = self._admission.auditor(first)
        except AdmissionError as exc:
            log.warning("hub_auditor_refused", problem=str(exc))
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"auditor refused by the hub: {exc}")
        node = frame.header.node
        session = self.session_for(node)
        if session is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"node {node} is not connected to the hub")
        assert session is not None
        call_id = frame.call_id
        try:
            replies = session.open_call(call_id)
        except _Refused as exc:
            context.abort(exc.code, exc.details)
        finished = threading.Event()

        def cancelled() -> None:
            if not finished.is_set():
                session.outgoing.put(hub_pb.HubToNode(cancel=hub_pb.CancelCall(call_id=call_id)))

        context.add_callback(cancelled)
        log.info("hub_call", auditor=auditor, node=node, method=frame.header.method)
        session.outgoing.put(hub_pb.HubToNode(frame=first))
        forward = threading.Thread(
            target=_forward,
            args=(request_iterator, session),
            name=f"hub-call-{call_id[:8]}",
            daemon=True,
        )
        forward.start()
        try:
            while True:
                remaining = context.time_remaining()
                try:
                    item = replies.get(timeout=remaining)
                except queue.Empty:
                    context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED, f"node {node} did not answer in time"
                    )
                if item is _GONE:
                    context.abort(
                        grpc.StatusCode.UNAVAILABLE,
                        f"node {node} disconnected from the hub during the call",
                    )
                yield item
                if _is_last(item):
                    finished.set()
                    return
        finally:
            session.close_call(call_id)


def _first(messages: Iterator[Any], context: grpc.ServicerContext) -> Any:
    """The peer's first message, or None; the call is cancelled if it takes too long."""
    timer = threading.Timer(FIRST_FRAME_SECONDS, context.cancel)
    timer.daemon = True
    timer.start()
    try:
        return next(messages, None)
    except grpc.RpcError:
        return None
    finally:
        timer.cancel()


def _forward(frames: Iterator[hub_pb.SignedFrame], session: NodeSession) -> None:
    """The auditor's later frames (streamed requests), to the node as they come."""
    try:
        for signed in frames:
            session.outgoing.put(hub_pb.HubToNode(frame=signed))
    except grpc.RpcError:
        pass  # the auditor went away; the cancel callback tells the node


def _is_last(signed: hub_pb.SignedFrame) -> bool:
    try:
        return hub_pb.Frame.FromString(signed.body).HasField("status")
    except Exception:
        return False
