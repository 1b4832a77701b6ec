"""Statements signed with a federation certificate's key, verified against the CA.

Protocols between nodes pass through a relay (the coordinator, later a hub) that the
threat model does not trust. What one node tells another is therefore signed with its
federation node key and carries its certificate: the receiver checks the certificate
chains to the federation CA, is a node certificate (serverAuth), is valid now, and
names the municipality the statement claims to come from. A relay can drop or delay
such a statement, not forge or redirect it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Role = Literal["node", "auditor"]


class IdentityError(Exception):
    """A signed statement does not prove what it claims (wrong CA, role, name, signature)."""


@dataclass(frozen=True)
class NodeIdentity:
    """A node's federation certificate and key, and the CA it trusts for its peers."""

    name: str
    certificate_pem: bytes
    key: ec.EllipticCurvePrivateKey
    ca: tuple[x509.Certificate, ...]  # a bundle during a CA rotation

    @classmethod
    def load(cls, cert: Path, key: Path, ca: Path) -> NodeIdentity:
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
        private = load_pem_private_key(key.read_bytes(), password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{key}: not an EC private key")
        return cls(
            name=common_name(certificate),
            certificate_pem=certificate.public_bytes(Encoding.PEM),
            key=private,
            ca=tuple(x509.load_pem_x509_certificates(ca.read_bytes())),
        )

    def sign(self, statement: bytes) -> bytes:
        return self.key.sign(statement, ec.ECDSA(hashes.SHA256()))

    def verify_peer(
        self,
        certificate_pem: bytes,
        statement: bytes,
        signature: bytes,
        *,
        claimed_name: str,
        now: dt.datetime | None = None,
    ) -> None:
        """Raise `IdentityError` unless a federation node named `claimed_name` signed this."""
        verify_node_statement(
            self.ca, certificate_pem, statement, signature, claimed_name=claimed_name, now=now
        )


def common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise IdentityError("the certificate has no common name")
    value = names[0].value
    return value.decode() if isinstance(value, bytes) else value


def verify_node_statement(
    ca: x509.Certificate | tuple[x509.Certificate, ...],
    certificate_pem: bytes,
    statement: bytes,
    signature: bytes,
    *,
    claimed_name: str,
    now: dt.datetime | None = None,
) -> None:
    """The checks every receiver makes, in the order that gives the clearest refusal."""
    verify_statement(
        ca, certificate_pem, statement, signature, claimed_name=claimed_name, role="node", now=now
    )


def verify_statement(
    ca: x509.Certificate | tuple[x509.Certificate, ...],
    certificate_pem: bytes,
    statement: bytes,
    signature: bytes,
    *,
    claimed_name: str,
    role: Role,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Raise `IdentityError` unless a federation `role` certificate named `claimed_name`
    signed `statement`; return that certificate (for a revocation check).

    A node certificate carries serverAuth, an auditor's clientAuth (fedaudit.pki.authority),
    so an auditor's key cannot speak for a node and a node's cannot ask as an auditor.
    """
    certificate = check_certificate(
        ca, certificate_pem, claimed_name=claimed_name, role=role, now=now
    )
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise IdentityError("the peer's certificate does not hold an EC key")
    try:
        public.verify(signature, statement, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise IdentityError(f"the signature of {claimed_name} does not verify") from exc
    return certificate


def check_certificate(
    ca: x509.Certificate | tuple[x509.Certificate, ...],
    certificate_pem: bytes,
    *,
    claimed_name: str,
    role: Role,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Every check of `verify_statement` but the signature: CA, not a CA, validity, role, name.

    Used alone before encrypting to a peer's certificate key (nothing is signed then).
    """
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError as exc:
        raise IdentityError("the peer's certificate is not a PEM X.509 certificate") from exc
    authorities = ca if isinstance(ca, tuple) else (ca,)
    if not any(_issued_by(certificate, authority) for authority in authorities):
        raise IdentityError("the peer's certificate was not issued by this federation's CA")
    try:
        if certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise IdentityError("the peer's certificate is a CA certificate, not a party's")
    except x509.ExtensionNotFound:
        pass
    moment = now or dt.datetime.now(dt.UTC)
    if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
        raise IdentityError("the peer's certificate is not valid now")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise IdentityError("the peer's certificate states no role") from exc
    if _ROLE_USAGE[role] not in usage:
        raise IdentityError(f"the peer's certificate is not {_ROLE_ARTICLE[role]} certificate")
    name = common_name(certificate)
    if name != claimed_name:
        raise IdentityError(
            f"the statement claims to come from {claimed_name}, its certificate names {name}"
        )
    return certificate


_ROLE_USAGE = {"node": ExtendedKeyUsageOID.SERVER_AUTH, "auditor": ExtendedKeyUsageOID.CLIENT_AUTH}
_ROLE_ARTICLE = {"node": "a node", "auditor": "an auditor"}


def _issued_by(certificate: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
