"""Enrolment without shipping keys, and revocation: signing requests and a CRL.

`issue-node` makes the key at the CA and the operator must carry it to the node: a
private key of a host that reads personal records, in transit. With a request, each
node or auditor makes its own key (it never leaves the machine) and sends only a
certificate signing request; the CA decides the role and the validity, never the
requester. A compromised or retired identity is revoked: the CA keeps a list and
publishes a CRL it signs, which nodes check on every call (`node serve --tls-crl`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedaudit.pki.authority import (
    AUDITORS_DIR,
    DEFAULT_LEAF_DAYS,
    NODES_DIR,
    CertKeyPaths,
    PkiError,
    host_san,
    issue_auditor_certificate,
    issue_node_certificate,
    load_ca,
    load_certificate,
    write_atomically,
)

ROLES = ("node", "auditor")
REVOKED_LIST = "revoked.json"
CRL_FILE = "crl.pem"
CRL_DAYS = 30
"""A CRL's next update: nodes refuse to trust a list older than this (re-publish monthly)."""


@dataclass(frozen=True)
class RequestPaths:
    key: Path
    request: Path


def create_request(
    directory: Path, name: str, *, hosts: Sequence[str] = (), overwrite: bool = False
) -> RequestPaths:
    """A new EC P-256 key (0600) and a CSR for `name` with `hosts` as SANs, in `directory`."""
    paths = RequestPaths(directory / f"{name}.key", directory / f"{name}.csr.pem")
    if not overwrite:
        existing = [str(p) for p in (paths.key, paths.request) if p.exists()]
        if existing:
            raise PkiError(f"{', '.join(existing)}: already exists; pass --force to replace it")
    sans = [host_san(h) for h in hosts]
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    request = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(paths.key, key_pem, 0o600, overwrite=overwrite)
    write_atomically(
        paths.request, request.public_bytes(serialization.Encoding.PEM), 0o644, overwrite=overwrite
    )
    return paths


def sign_request(
    ca_directory: Path,
    request_path: Path,
    *,
    role: str,
    days: int = DEFAULT_LEAF_DAYS,
    overwrite: bool = False,
    now: dt.datetime | None = None,
) -> Path:
    """Issue the certificate a request asks for, in the role the CA chooses; returns its path.

    Only the CN and, for nodes, the requested hosts are taken from the request, after the
    same checks as `issue-node`/`issue-auditor`; every extension is the CA's own.
    """
    if role not in ROLES:
        raise PkiError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    try:
        request = x509.load_pem_x509_csr(request_path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"{request_path}: no such signing request") from None
    except ValueError as exc:
        raise PkiError(f"{request_path}: not a PEM certificate signing request") from exc
    if not request.is_signature_valid:
        raise PkiError(f"{request_path}: the request's signature does not verify")
    public_key = request.public_key()
    if (
        not isinstance(public_key, ec.EllipticCurvePublicKey)
        or public_key.curve.name != "secp256r1"
    ):
        raise PkiError(
            f"{request_path}: the key must be EC P-256 (as `fedaudit pki request` makes)"
        )
    names = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise PkiError(f"{request_path}: the request must name exactly one common name")
    name = str(names[0].value)
    hosts: list[str] = []
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
            str(v) for v in san.get_values_for_type(x509.IPAddress)
        ]
    except x509.ExtensionNotFound:
        pass
    if role == "node":
        paths: CertKeyPaths = issue_node_certificate(
            ca_directory,
            name,
            hosts=[h for h in hosts if h.lower() != name.lower()],
            days=days,
            overwrite=overwrite,
            now=now,
            public_key=public_key,
        )
    else:
        if hosts:
            raise PkiError(f"{request_path}: an auditor certificate carries no hosts")
        paths = issue_auditor_certificate(
            ca_directory, name, days=days, overwrite=overwrite, now=now, public_key=public_key
        )
    return paths.cert


def revoke(ca_directory: Path, name: str, *, role: str, now: dt.datetime | None = None) -> Path:
    """Add the named certificate to the CA's revoked list and publish a new CRL."""
    if role not in ROLES:
        raise PkiError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    folder = NODES_DIR if role == "node" else AUDITORS_DIR
    cert_path = ca_directory / folder / f"{name}.pem"
    cert = load_certificate(cert_path)
    entries = _revoked_entries(ca_directory)
    moment = now or dt.datetime.now(dt.UTC)
    if not any(e["serial"] == str(cert.serial_number) for e in entries):
        entries.append(
            {
                "serial": str(cert.serial_number),
                "name": name,
                "role": role,
                "revoked_at": moment.isoformat(),
            }
        )
    write_atomically(
        ca_directory / REVOKED_LIST,
        json.dumps(entries, indent=2).encode(),
        0o644,
        overwrite=True,
    )
    return publish_crl(ca_directory, now=moment)


def publish_crl(ca_directory: Path, *, now: dt.datetime | None = None) -> Path:
    """Sign and write `crl.pem` from the revoked list (also to renew it before it lapses)."""
    ca_cert, ca_key = load_ca(ca_directory)
    moment = now or dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(moment - dt.timedelta(minutes=5))
        .next_update(moment + dt.timedelta(days=CRL_DAYS))
    )
    for entry in _revoked_entries(ca_directory):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(entry["serial"]))
            .revocation_date(dt.datetime.fromisoformat(entry["revoked_at"]))
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    path = ca_directory / CRL_FILE
    write_atomically(path, crl.public_bytes(serialization.Encoding.PEM), 0o644, overwrite=True)
    return path


def _revoked_entries(ca_directory: Path) -> list[dict[str, str]]:
    path = ca_directory / REVOKED_LIST
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path}: unreadable revoked list ({exc})") from exc
    if not isinstance(data, list):
        raise PkiError(f"{path}: expected a JSON list of revoked certificates")
    return data


@dataclass(frozen=True)
class RevocationList:
    """The serial numbers a CA has revoked, from a CRL whose signature was checked."""

    serials: frozenset[int]
    next_update: dt.datetime

    def is_revoked(self, certificate: x509.Certificate) -> bool:
        return certificate.serial_number in self.serials


def load_crl(
    crl_path: Path, ca_certificate: x509.Certificate, *, now: dt.datetime | None = None
) -> RevocationList:
    """Read a CRL, refusing one not signed by the CA or past its next update."""
    try:
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"{crl_path}: no such CRL file") from None
    except ValueError as exc:
        raise PkiError(f"{crl_path}: not a PEM certificate revocation list") from exc
    public = ca_certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public):
        raise PkiError(f"{crl_path}: not signed by the federation CA")
    next_update = crl.next_update_utc
    if next_update is None:
        raise PkiError(f"{crl_path}: the CRL has no next update")
    if (now or dt.datetime.now(dt.UTC)) > next_update:
        raise PkiError(
            f"{crl_path}: expired on {next_update:%Y-%m-%d}; the CA must publish a new one "
            "(fedaudit pki crl)"
        )
    return RevocationList(frozenset(r.serial_number for r in crl), next_update)
