"""What a dial-out node checks and signs: the auditor's signature, and its own replies.

Split from `node.dialout` (the connection and dispatch) so each module keeps one job:
`auditor_verifier` accepts a call only if a federation auditor certificate signed it;
`Replies` numbers, binds, encrypts and signs the node's frames of one call.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import grpc

from fedaudit.common.envelope import (
    NODE_PREFIX,
    TO_AUDITOR,
    CallCipher,
    EnvelopeError,
    Verifier,
    metadata_entries,
    seal,
)
from fedaudit.pki.identity import IdentityError, NodeIdentity, common_name, verify_statement
from fedaudit.wire.v1 import hub_pb2 as hub_pb


def auditor_verifier(identity: NodeIdentity) -> Verifier:
    """Accept a call only if a federation *auditor* certificate signed it."""

    def verify(certificate_pem: bytes, statement: bytes, signature: bytes) -> str:
        from cryptography import x509

        try:
            name = common_name(x509.load_pem_x509_certificate(certificate_pem))
            verify_statement(
                identity.ca,
                certificate_pem,
                statement,
                signature,
                claimed_name=name,
                role="auditor",
            )
        except (IdentityError, ValueError) as exc:
            raise EnvelopeError(f"the call is not signed by a federation auditor: {exc}") from exc
        return name

    return verify


class Replies:
    """The node's signed frames for one call: numbered, bound to the call's header."""

    def __init__(self, identity: NodeIdentity, request_digest: bytes, outgoing: queue.Queue[Any]):
        self._identity = identity
        self._digest = request_digest
        self._outgoing = outgoing
        self._seq = 0
        self._lock = threading.Lock()
        self.cipher: CallCipher | None = None
        """Set once the call's header is accepted; refusals before that go unencrypted."""

    def message(self, call_id: str, raw: bytes) -> None:
        self._send(hub_pb.Frame(call_id=call_id), [raw])

    def finish(
        self,
        call_id: str,
        code: grpc.StatusCode,
        details: str,
        trailing: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        status = hub_pb.CallStatus(
            code=code.value[0], details=details, trailing_metadata=metadata_entries(trailing)
        )
        if self.cipher is None:  # refused before the call key existed: nothing of the call's
            self._send(hub_pb.Frame(call_id=call_id, status=status), [])
            return
        frame = hub_pb.Frame(call_id=call_id, status=hub_pb.CallStatus(code=status.code))
        self._send(frame, [], sealed_status=status.SerializeToString())

    def _send(
        self, frame: hub_pb.Frame, messages: list[bytes], *, sealed_status: bytes | None = None
    ) -> None:
        with self._lock:
            frame.seq = self._seq
            frame.request_digest = self._digest
            if self.cipher is not None:
                messages = [
                    self.cipher.seal(TO_AUDITOR, frame.seq, i, m) for i, m in enumerate(messages)
                ]
                if sealed_status is not None:
                    frame.sealed_status = self.cipher.seal(
                        TO_AUDITOR, frame.seq, len(messages), sealed_status
                    )
            frame.messages.extend(messages)
            certificate = self._identity.certificate_pem if self._seq == 0 else b""
            self._seq += 1
            signed = seal(frame, NODE_PREFIX, self._identity.sign, certificate)
        self._outgoing.put(hub_pb.NodeToHub(frame=signed))
