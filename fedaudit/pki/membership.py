"""Federation membership proofs: a node vouches for its per-run ring keys with its X.509 node key.

A blinding-ring roster is assembled by the coordinator, which the threat model treats
as untrusted: it could add a member of its own (whose batch it can then open) or
list one node twice. So every roster entry carries the member's federation node
certificate and an ECDSA signature, made with that certificate's private key, over
a statement binding the run, the member's name and its per-run ring keys. A peer
accepts the entry only when

- the certificate chains directly to the federation CA it trusts (the CA file of its
  own TLS set-up, a bundle during a CA rotation) and is valid now;
- it is a node certificate: not a CA, extendedKeyUsage serverAuth (auditor
  certificates are clientAuth only, see `fedaudit.pki.authority`);
- its name (common name, and a DNS SAN) equals the roster entry's municipality code;
- the signature over the statement verifies with the certificate's public key.

The same checks serve nodes and coordinators; nothing here touches gRPC.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedaudit.pki.tls import TlsFiles, check_tls_files

MAX_CERTIFICATE_BYTES = 16 * 1024
"""A node certificate is about 700 bytes of PEM; a larger one is refused unread."""


class MembershipError(Exception):
    """A membership proof does not hold; the message says which check failed."""


@dataclass(frozen=True)
class NodeCredential:
    """A node's federation identity for the ring: its certificate, key and trusted CA(s)."""

    name: str
    certificate_pem: bytes
    private_key: ec.EllipticCurvePrivateKey
    trusted_cas: tuple[x509.Certificate, ...]

    @classmethod
    def from_files(cls, files: TlsFiles, *, now: dt.datetime | None = None) -> NodeCredential:
        """Load and check the node's TLS files (`fedaudit.pki.tls.TlsError` if unusable)."""
        checked = check_tls_files(files, "node", now=now)
        key = serialization.load_pem_private_key(checked.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise MembershipError(f"{files.key}: the ring needs an EC node key")
        return cls(
            name=certificate_name(checked.certificate),
            certificate_pem=checked.cert_pem,
            private_key=key,
            trusted_cas=tuple(x509.load_pem_x509_certificates(checked.ca_pem)),
        )

    def sign(self, statement: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 over `statement` with the node certificate's key."""
        return self.private_key.sign(statement, ec.ECDSA(hashes.SHA256()))


def certificate_name(cert: x509.Certificate) -> str:
    """The node name a certificate carries (its common name)."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        raise MembershipError("the certificate has no common name")
    return str(cns[0].value)


def verify_membership(
    certificate_pem: bytes,
    signature: bytes,
    statement: bytes,
    *,
    name: str,
    trusted_cas: tuple[x509.Certificate, ...],
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Check that a federation node named `name` signed `statement`; return its certificate.

    Raises `MembershipError` naming the failed check.
    """
    now = now or dt.datetime.now(dt.UTC)
    if not certificate_pem or len(certificate_pem) > MAX_CERTIFICATE_BYTES:
        raise MembershipError(f"{name}: no node certificate (or an oversized one)")
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError as exc:
        raise MembershipError(f"{name}: the certificate is not PEM") from exc
    if not any(_issued_by(cert, ca) and _valid(ca, now) for ca in trusted_cas):
        raise MembershipError(f"{name}: the certificate is not issued by the federation CA")
    if not _valid(cert, now):
        raise MembershipError(f"{name}: the certificate is not valid now (expired?)")
    if _is_ca(cert):
        raise MembershipError(f"{name}: a CA certificate cannot be a ring member")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        raise MembershipError(f"{name}: not a node certificate (serverAuth missing)")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = set(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns_names = set()
    if certificate_name(cert) != name or name not in dns_names:
        raise MembershipError(
            f"{name}: the certificate names {certificate_name(cert)!r}, not this roster member"
        )
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise MembershipError(f"{name}: the certificate key is not an EC key")
    try:
        public.verify(signature, statement, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise MembershipError(f"{name}: the ring keys are not signed by its node key") from exc
    return cert


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return _is_ca(ca)


def _valid(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
