"""The hub's envelope: signed frames that carry one gRPC call between an auditor and a node.

Both ends must agree on it bit for bit, and the hub between them is not trusted
(docs/hub.md), so what each side signs is defined here once. A call is the auditor's
frames (frame 0 holds the header: call id, node, method, time, metadata) and the node's
frames (response messages, then the final status). Each frame is a serialized `Frame`
signed with the sender's federation key over a prefix naming the sender's role, so an
auditor frame can never be passed off as a node frame or the other way round. Frame 0
of each side carries the signer's certificate; later frames are checked against the
key of that certificate. Frames are numbered, so the hub cannot reorder, repeat or
splice frames of another call without the receiver noticing; it can only drop them,
which the receiver sees as a call that never ends (the deadline ends it).

The messages inside the frames (requests, responses, the node's full status) are
encrypted end to end (`CallCipher`): the auditor makes an ephemeral P-256 key per call and
puts its public half in the signed header; both ends derive the call key from ECDH of that
key with the node certificate's key (HKDF-SHA256 bound to the call id and the ephemeral
key) and seal each message with AES-256-GCM under a nonce unique per direction, frame and
message. The hub, holding neither private key, sees sizes and timing, not content.

The certificate checks themselves (chain to the federation CA, role, validity) are the
PKI's (`fedaudit.pki.identity.verify_statement`); callers pass them in as a `Verifier`.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedaudit.wire.v1 import hub_pb2 as hub_pb

ENVELOPE_VERSION = 1
"""Bumped on any change a receiver of the previous version would misread."""

AUDITOR_PREFIX = b"fedaudit hub frame v1 / auditor\x00"
NODE_PREFIX = b"fedaudit hub frame v1 / node\x00"
HELLO_PREFIX = b"fedaudit hub hello v1\x00"

DEFAULT_MAX_SKEW_SECONDS = 120.0
"""How far an auditor's clock may be from the node's; also how long call ids are kept."""

Signer = Callable[[bytes], bytes]
"""Signs a statement with the sender's federation key (`NodeIdentity.sign`)."""


class Verifier(Protocol):
    """Checks a certificate and a signature; returns the signer's certificate name."""

    def __call__(self, certificate_pem: bytes, statement: bytes, signature: bytes) -> str: ...


class EnvelopeError(Exception):
    """A frame does not prove what it claims, or arrives out of order, late or twice."""


def new_call_id() -> str:
    return secrets.token_hex(16)


def digest(body: bytes) -> bytes:
    """What a node's frames name to bind them to the header they answer."""
    return hashlib.sha256(body).digest()


def seal(
    frame: hub_pb.Frame, prefix: bytes, sign: Signer, certificate_pem: bytes = b""
) -> hub_pb.SignedFrame:
    """Serialize and sign `frame` (with the certificate on frame 0)."""
    body = frame.SerializeToString()
    return hub_pb.SignedFrame(
        body=body, signature=sign(prefix + body), certificate_pem=certificate_pem
    )


def hello_statement(nonce: bytes) -> bytes:
    """What a node signs to prove its identity to the hub on one connection."""
    return HELLO_PREFIX + nonce


@dataclass
class FrameReader:
    """Checks one call's frames from one sender, in order.

    The first frame must carry a certificate that `verify` accepts; every later frame
    must be signed by that certificate's key and carry the next number and the same
    call id. `signer` is the name in the first frame's certificate.
    """

    prefix: bytes
    verify: Verifier
    signer: str = ""
    call_id: str = ""
    _key: ec.EllipticCurvePublicKey | None = None
    _next: int = 0

    def read(self, signed: hub_pb.SignedFrame) -> hub_pb.Frame:
        statement = self.prefix + signed.body
        if self._key is None:
            if not signed.certificate_pem:
                raise EnvelopeError("the first frame of a call carries no certificate")
            self.signer = self.verify(signed.certificate_pem, statement, signed.signature)
            key = x509.load_pem_x509_certificate(signed.certificate_pem).public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey)  # verify() checked it
            self._key = key
        else:
            try:
                self._key.verify(signed.signature, statement, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature as exc:
                raise EnvelopeError(
                    f"frame {self._next} of call {self.call_id} is not signed by {self.signer}"
                ) from exc
        frame = hub_pb.Frame()
        try:
            frame.ParseFromString(signed.body)
        except Exception as exc:  # DecodeError: signed garbage is still garbage
            raise EnvelopeError("a signed frame does not parse") from exc
        if self._next == 0:
            self.call_id = frame.call_id
        elif frame.call_id != self.call_id:
            raise EnvelopeError(f"a frame of call {frame.call_id} arrived in call {self.call_id}")
        if frame.seq != self._next:
            raise EnvelopeError(
                f"frame {frame.seq} of call {self.call_id} arrived where frame {self._next} was due"
            )
        self._next += 1
        return frame


class ReplayGuard:
    """Refuses a call header that is stale, from the future, or seen before.

    Call ids are remembered for twice the allowed skew; a header older than the skew is
    refused anyway, so a forgotten id can never be replayed.
    """

    def __init__(
        self,
        max_skew_seconds: float = DEFAULT_MAX_SKEW_SECONDS,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._skew = max_skew_seconds
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, header: hub_pb.CallHeader) -> None:
        now = self._clock()
        issued = header.issued_at_ms / 1000.0
        if abs(now - issued) > self._skew:
            raise EnvelopeError(
                f"call {header.call_id} was issued {now - issued:+.0f} s from this node's clock "
                f"(at most {self._skew:g} s allowed): stale, replayed or a clock out of sync"
            )
        if len(header.call_id) != 32:
            raise EnvelopeError("the call id is not 128 bits of hex")
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - 2 * self._skew:
                self._seen.popitem(last=False)
            if header.call_id in self._seen:
                raise EnvelopeError(f"call {header.call_id} was already received: a replay")
            self._seen[header.call_id] = now


E2E_INFO = b"fedaudit hub e2e v1\x00"
TO_NODE = b"\x01"
TO_AUDITOR = b"\x02"


class CallCipher:
    """One call's AES-256-GCM key; a nonce is (direction, frame number, message index)."""

    def __init__(self, key: bytes, call_id: str) -> None:
        self._aead = AESGCM(key)
        self._aad = call_id.encode()

    def seal(self, direction: bytes, seq: int, index: int, plaintext: bytes) -> bytes:
        return self._aead.encrypt(_nonce(direction, seq, index), plaintext, self._aad)

    def open(self, direction: bytes, seq: int, index: int, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(_nonce(direction, seq, index), ciphertext, self._aad)
        except InvalidTag as exc:
            raise EnvelopeError(
                f"message {index} of frame {seq} does not decrypt (tampered or misplaced)"
            ) from exc


def _nonce(direction: bytes, seq: int, index: int) -> bytes:
    return direction + seq.to_bytes(4, "big") + index.to_bytes(4, "big") + b"\x00\x00\x00"


def _call_key(shared: bytes, call_id: str, auditor_key: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=E2E_INFO + call_id.encode() + auditor_key,
    ).derive(shared)


def auditor_cipher(node_key: ec.EllipticCurvePublicKey, call_id: str) -> tuple[bytes, CallCipher]:
    """The auditor's side: (the ephemeral public key for the header, the call's cipher)."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    public = ephemeral.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    shared = ephemeral.exchange(ec.ECDH(), node_key)
    return public, CallCipher(_call_key(shared, call_id, public), call_id)


def node_cipher(
    node_key: ec.EllipticCurvePrivateKey, call_id: str, auditor_key: bytes
) -> CallCipher:
    """The node's side, from the header's ephemeral auditor key."""
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), auditor_key)
    except ValueError as exc:
        raise EnvelopeError("the call's ephemeral key is not a P-256 point") from exc
    shared = node_key.exchange(ec.ECDH(), peer)
    return CallCipher(_call_key(shared, call_id, auditor_key), call_id)


def metadata_entries(pairs: Iterable[tuple[str, str | bytes]]) -> list[hub_pb.MetadataEntry]:
    return [
        hub_pb.MetadataEntry(key=k, value=v if isinstance(v, bytes) else v.encode())
        for k, v in pairs
    ]


def metadata_pairs(entries: Iterable[hub_pb.MetadataEntry]) -> tuple[tuple[str, str | bytes], ...]:
    """gRPC metadata: values of `-bin` keys stay bytes, the others are text."""
    return tuple(
        (e.key, e.value if e.key.endswith("-bin") else e.value.decode("utf-8", "replace"))
        for e in entries
    )
