"""Reaching a node by name through the hub: a `grpc.Channel` that speaks the envelope.

`HubChannel(hub, "M01")` stands in for a channel to node M01, so the ordinary
transports (`GrpcNodeTransport`, `GrpcDedupTransport`, `GrpcReconcileTransport`) and
their error translation work unchanged through the hub: every call becomes one
`Hub.Call` stream of frames signed with the auditor's federation key
(`fedaudit.common.envelope`). The node's frames are checked before anything is
returned: signed by a federation *node* certificate named as the plan names the node,
numbered in order, and bound to this call's header, so a hub that answers for a node,
or replays another call's answer, is caught here and the call fails as UNAUTHENTICATED.
The node's status (code, details, the structured ErrorInfo in the trailers) comes back
as a `grpc.RpcError`, exactly as from a direct call, so coverage and refusals read the
same in both modes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedaudit.common.envelope import (
    AUDITOR_PREFIX,
    ENVELOPE_VERSION,
    NODE_PREFIX,
    TO_AUDITOR,
    TO_NODE,
    CallCipher,
    EnvelopeError,
    FrameReader,
    Verifier,
    auditor_cipher,
    digest,
    metadata_entries,
    metadata_pairs,
    new_call_id,
    seal,
)
from fedaudit.pki.identity import (
    IdentityError,
    NodeIdentity,
    check_certificate,
    common_name,
    verify_statement,
)
from fedaudit.wire.v1 import hub_pb2 as hub_pb
from fedaudit.wire.v1 import hub_pb2_grpc as hub_grpc

HUB_MAX_MESSAGE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class HubAccess:
    """Where the hub is and who the auditor is: what every `HubChannel` needs."""

    address: str
    hub_name: str
    identity: NodeIdentity  # the auditor's certificate and key (any federation role loads)
    ca_pem: bytes
    revoked: Callable[[x509.Certificate], bool] | None = None
    """With the federation CRL: answers signed by a revoked node certificate are refused."""

    @classmethod
    def load(
        cls,
        address: str,
        hub_name: str,
        cert: Path,
        key: Path,
        ca: Path,
        *,
        revoked: Callable[[x509.Certificate], bool] | None = None,
    ) -> HubAccess:
        identity = NodeIdentity.load(cert, key, ca)
        return cls(address, hub_name, identity, ca.read_bytes(), revoked)

    def open(self) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
        return grpc.secure_channel(
            self.address,
            credentials,
            options=[
                ("grpc.ssl_target_name_override", self.hub_name),
                ("grpc.max_receive_message_length", HUB_MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", HUB_MAX_MESSAGE_BYTES),
            ],
        )


def node_verifier(
    identity: NodeIdentity,
    node: str,
    revoked: Callable[[x509.Certificate], bool] | None = None,
) -> Verifier:
    """Accept frames only from a federation node certificate named `node` (and not revoked)."""

    def verify(certificate_pem: bytes, statement: bytes, signature: bytes) -> str:
        try:
            certificate = verify_statement(
                identity.ca, certificate_pem, statement, signature, claimed_name=node, role="node"
            )
        except (IdentityError, ValueError) as exc:
            raise EnvelopeError(f"the answer is not signed by node {node}: {exc}") from exc
        if revoked is not None and revoked(certificate):
            raise EnvelopeError(
                f"node {node}'s certificate (serial {certificate.serial_number}) was revoked "
                "by the federation CA"
            )
        return common_name(certificate)

    return verify


class HubCallError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A node's non-OK status, or a broken envelope, as gRPC would raise it."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailing = trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    def initial_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class HubChannel(grpc.Channel):  # type: ignore[misc]
    """A channel to one node (by name) through the hub; owns its connection to the hub."""

    def __init__(self, access: HubAccess, node: str) -> None:
        self.node = node
        self._access = access
        self._channel = access.open()
        self._stub = hub_grpc.HubStub(self._channel)
        self._verify = node_verifier(access.identity, node, access.revoked)
        self._node_key: ec.EllipticCurvePublicKey | None = None

    def node_key(self, timeout: float | None) -> ec.EllipticCurvePublicKey:
        """The node's public key, from the certificate the hub holds, checked before use.

        The certificate must chain to the federation CA, be a node certificate named as the
        plan names the node, be valid and (with a CRL) not revoked; the hub cannot hand out
        a key it could decrypt with, since it holds no such certificate's private key.
        """
        if self._node_key is None:
            pem = self._stub.Certificate(
                hub_pb.CertificateRequest(node=self.node), timeout=timeout
            ).certificate_pem
            access = self._access
            try:
                certificate = check_certificate(
                    access.identity.ca, pem, claimed_name=self.node, role="node"
                )
            except IdentityError as exc:
                raise HubCallError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"the hub's certificate for node {self.node} is not usable: {exc}",
                ) from exc
            if access.revoked is not None and access.revoked(certificate):
                raise HubCallError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"node {self.node}'s certificate (serial {certificate.serial_number}) was "
                    "revoked by the federation CA",
                )
            key = certificate.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise HubCallError(
                    grpc.StatusCode.UNAUTHENTICATED, f"node {self.node}'s key is not an EC key"
                )
            self._node_key = key
        return self._node_key

    # -- the multi-callables the generated stubs ask for
    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _MultiCallable(
            self,
            method,
            request_serializer,
            response_deserializer,
            streaming_requests=False,
            streaming_responses=False,
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _MultiCallable(
            self,
            method,
            request_serializer,
            response_deserializer,
            streaming_requests=False,
            streaming_responses=True,
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _MultiCallable(
            self,
            method,
            request_serializer,
            response_deserializer,
            streaming_requests=True,
            streaming_responses=False,
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _MultiCallable(
            self,
            method,
            request_serializer,
            response_deserializer,
            streaming_requests=True,
            streaming_responses=True,
        )

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> HubChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one relayed call
    def invoke(
        self,
        method: str,
        requests: Iterator[bytes],
        *,
        streaming_requests: bool,
        timeout: float | None,
        metadata: Any,
    ) -> Iterator[bytes]:
        """Send the call's frames; yield the node's response messages once checked."""
        identity = self._access.identity
        call_id = new_call_id()
        auditor_key, cipher = auditor_cipher(self.node_key(timeout), call_id)
        header = hub_pb.CallHeader(
            envelope_version=ENVELOPE_VERSION,
            call_id=call_id,
            node=self.node,
            method=method,
            issued_at_ms=int(time.time() * 1000),
            timeout_seconds=timeout or 0.0,
            metadata=metadata_entries(metadata or ()),
            auditor_key=auditor_key,
        )
        first = hub_pb.Frame(call_id=call_id, seq=0, header=header)
        if not streaming_requests:
            first.messages.append(cipher.seal(TO_NODE, 0, 0, next(requests)))
            first.end = True
        sealed_first = seal(first, AUDITOR_PREFIX, identity.sign, identity.certificate_pem)
        header_digest = digest(sealed_first.body)

        def frames() -> Iterator[hub_pb.SignedFrame]:
            yield sealed_first
            if not streaming_requests:
                return
            seq = 1
            for raw in requests:
                sealed = cipher.seal(TO_NODE, seq, 0, raw)
                yield seal(
                    hub_pb.Frame(call_id=call_id, seq=seq, messages=[sealed]),
                    AUDITOR_PREFIX,
                    identity.sign,
                )
                seq += 1
            yield seal(
                hub_pb.Frame(call_id=call_id, seq=seq, end=True), AUDITOR_PREFIX, identity.sign
            )

        replies = self._stub.Call(frames(), timeout=timeout)
        return self._answers(replies, header_digest, cipher)

    def _answers(self, replies: Any, header_digest: bytes, cipher: CallCipher) -> Iterator[bytes]:
        reader = FrameReader(NODE_PREFIX, self._verify)
        try:
            for signed in replies:
                try:
                    frame = reader.read(signed)
                except EnvelopeError as exc:
                    raise HubCallError(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from exc
                if frame.request_digest != header_digest:
                    raise HubCallError(
                        grpc.StatusCode.UNAUTHENTICATED,
                        f"node {self.node}'s answer is bound to another call (a replay)",
                    )
                try:
                    opened = [
                        cipher.open(TO_AUDITOR, frame.seq, i, m)
                        for i, m in enumerate(frame.messages)
                    ]
                    status = frame.status
                    if frame.sealed_status:
                        status = hub_pb.CallStatus.FromString(
                            cipher.open(TO_AUDITOR, frame.seq, len(opened), frame.sealed_status)
                        )
                except EnvelopeError as exc:
                    raise HubCallError(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from exc
                yield from opened
                if frame.HasField("status"):
                    if status.code != 0:
                        raise HubCallError(
                            _CODES.get(status.code, grpc.StatusCode.UNKNOWN),
                            status.details,
                            metadata_pairs(status.trailing_metadata),
                        )
                    return
        finally:
            replies.cancel()  # no-op after a complete call; ends an abandoned one at the hub
        raise HubCallError(
            grpc.StatusCode.UNAVAILABLE,
            f"the hub ended the call to node {self.node} before the node's final status",
        )


class _MultiCallable:
    """What `channel.unary_unary(...)` and friends return: callable like gRPC's."""

    def __init__(
        self,
        channel: HubChannel,
        method: str,
        serialize: Callable[[Any], bytes] | None,
        deserialize: Callable[[bytes], Any] | None,
        *,
        streaming_requests: bool,
        streaming_responses: bool,
    ) -> None:
        self._channel = channel
        self._method = method
        self._serialize = serialize or (lambda m: m)
        self._deserialize = deserialize or (lambda raw: raw)
        self._streaming_requests = streaming_requests
        self._streaming_responses = streaming_responses

    def __call__(  # noqa: PLR0917 - gRPC's multi-callable signature
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        raw = (
            (self._serialize(m) for m in request)
            if self._streaming_requests
            else iter([self._serialize(request)])
        )
        answers = self._channel.invoke(
            self._method,
            raw,
            streaming_requests=self._streaming_requests,
            timeout=timeout,
            metadata=metadata,
        )
        if self._streaming_responses:
            return (self._deserialize(a) for a in answers)
        messages = list(answers)
        if len(messages) != 1:
            raise HubCallError(
                grpc.StatusCode.INTERNAL,
                f"node {self._channel.node} sent {len(messages)} answers to a unary call",
            )
        return self._deserialize(messages[0])
