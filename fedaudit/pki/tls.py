"""gRPC mTLS credentials from PEM files, checked before gRPC ever sees them.

gRPC reports a bad certificate only as a failed handshake ("Socket closed") at the
peer, long after start-up. So the files are checked here first and every problem
is a `TlsError` naming the file: missing or unreadable, not PEM, key not matching
the certificate, certificate not issued by the federation CA, not yet valid or
expired, or the wrong role (a node needs a serverAuth certificate, an auditor a
clientAuth one; see fedaudit.pki.authority).

How the coordinator pins node identities: it dials the address in the plan, but
with the channel option `grpc.ssl_target_name_override` set to the node's *name*
in the plan (`pinned_channel_options`). gRPC then checks that name, not the host,
against the DNS SANs of the certificate the node presents, after verifying the
chain to the federation CA. A node certificate carries its node name as a DNS
SAN, so a server presenting another node's certificate (say the plan says M01 and
the address answers with M02's certificate) fails the handshake, even though both
certificates are valid, issued by the same CA and may list the same host.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

Role = Literal["node", "auditor"]

_USAGE = {"node": ExtendedKeyUsageOID.SERVER_AUTH, "auditor": ExtendedKeyUsageOID.CLIENT_AUTH}
_USAGE_NAME = {"node": "serverAuth", "auditor": "clientAuth"}


class TlsError(ValueError):
    """The TLS files cannot work; the message names the file and the problem."""


@dataclass(frozen=True)
class TlsFiles:
    """One party's certificate and private key, and the federation CA it trusts."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class CheckedTls:
    """The PEM bytes of `TlsFiles` after `check_tls_files` accepted them."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    certificate: x509.Certificate


def check_tls_files(files: TlsFiles, role: Role, *, now: dt.datetime | None = None) -> CheckedTls:
    """Read and check `files` for a `role` ("node" or "auditor"); raise TlsError if unusable."""
    now = now or dt.datetime.now(dt.UTC)
    ca_pem, cert_pem, key_pem = (
        _read(files.ca, "CA certificate"),
        _read(files.cert, "certificate"),
        _read(files.key, "private key"),
    )
    cas = _load_cas(files.ca, ca_pem)
    cert = _load_cert(files.cert, cert_pem, "certificate")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsError(
            f"{files.key}: the private key is encrypted; gRPC needs it unencrypted "
            "(protect it with file permissions, 0600)"
        ) from None
    except ValueError as exc:
        raise TlsError(f"{files.key}: not a PEM private key ({exc})") from exc

    for ca in cas:
        if not _is_ca(ca):
            raise TlsError(
                f"{files.ca}: {ca.subject.rfc4514_string()!r} is not a CA certificate "
                "(basicConstraints CA:TRUE missing)"
            )
    if key.public_key() != cert.public_key():
        raise TlsError(f"{files.key}: this private key does not belong to {files.cert}")
    issuer = next((ca for ca in cas if _issued_by(cert, ca)), None)
    if issuer is None:
        raise TlsError(
            f"{files.cert}: not issued by the federation CA in {files.ca} "
            f"(issuer {cert.issuer.rfc4514_string()!r}); peers would reject it"
        )
    _check_validity(files.ca, issuer, now, "the federation CA")
    _check_validity(files.cert, cert, now, "the certificate")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and _USAGE[role] not in usages:
        other = "auditor" if role == "node" else "node"
        a = "an" if role == "auditor" else "a"
        raise TlsError(
            f"{files.cert}: {a} {role} needs {a} {role} certificate ({_USAGE_NAME[role]}); this one "
            f"is not (is it a {other} certificate?); issue one with `fedaudit pki issue-{role}`"
        )
    return CheckedTls(cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca_pem, certificate=cert)


def server_credentials(
    files: TlsFiles, *, now: dt.datetime | None = None
) -> grpc.ServerCredentials:
    """Credentials for a node: its certificate, and clients must present one the CA signed."""
    tls = check_tls_files(files, "node", now=now)
    return grpc.ssl_server_credentials(
        [(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem, require_client_auth=True
    )


def channel_credentials(
    files: TlsFiles, *, now: dt.datetime | None = None
) -> grpc.ChannelCredentials:
    """Credentials for the coordinator: the auditor certificate, trusting only the federation CA."""
    tls = check_tls_files(files, "auditor", now=now)
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem, private_key=tls.key_pem, certificate_chain=tls.cert_pem
    )


def pinned_channel_options(node_name: str) -> list[tuple[str, object]]:
    """Channel options that make gRPC accept only a certificate naming `node_name` (a DNS SAN)."""
    return [("grpc.ssl_target_name_override", node_name)]


def peer_certificate_names(address: str, files: TlsFiles, *, timeout: float = 3.0) -> list[str]:
    """The DNS names of the certificate served at `address`, verified against the federation CA.

    A diagnosis only: when the pinned handshake fails because the node at an address
    is not the one the plan names, this reads whose certificate answered there (a
    separate TLS connection that presents the auditor certificate and sends nothing).
    Returns [] when the certificate cannot be read or does not chain to the CA.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=Path(files.ca).read_text(encoding="ascii"))
        context.load_cert_chain(str(files.cert), str(files.key))
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return []
    if not der:
        return []
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.DNSName))


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise TlsError(f"{path}: is a directory, expected the {what} (PEM file)") from None
    except OSError as exc:
        raise TlsError(f"{path}: cannot read the {what}: {exc.strerror}") from exc


def _load_cert(path: Path, data: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise TlsError(f"{path}: not a PEM {what} ({exc})") from exc


def _load_cas(path: Path, data: bytes) -> list[x509.Certificate]:
    """The CA file may be a bundle (old and new CA during a CA rotation)."""
    try:
        cas = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsError(f"{path}: not a PEM CA certificate ({exc})") from exc
    return cas


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_validity(path: Path, cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise TlsError(
            f"{path}: {what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
            "(check this machine's clock)"
        )
    if now >= cert.not_valid_after_utc:
        raise TlsError(
            f"{path}: {what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "peers reject it, issue a new one"
        )


def peer_certificate(
    address: str, files: TlsFiles, server_name: str, *, timeout: float = 10.0
) -> x509.Certificate:
    """The certificate a node presents at `address`, by one mTLS handshake under `files`.

    gRPC's Python client does not expose the server's certificate, and its TLS stack
    does not check revocation; the coordinator asks this way before it talks to a node.
    The handshake verifies the chain against the federation CA and the node name.
    """
    import socket
    import ssl

    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise TlsError(f"{address}: presented no certificate")
    return x509.load_der_x509_certificate(der)
