"""The federation's certificate authority: create it, issue node and auditor certificates.

mTLS is how a node knows who is asking (the auditor certificate's common name is the
requester its policy names) and how the coordinator knows it reached the node the plan
names (the node certificate's DNS SAN is the node name). So roles are kept apart in
the certificates themselves, and the TLS handshake enforces them:

- the CA: basicConstraints CA:TRUE pathlen 0, keyUsage keyCertSign + cRLSign;
- a node: CN and a DNS SAN = the node name (plus the hosts it is reached at),
  extendedKeyUsage serverAuth only, so it cannot act as a client (requester);
- an auditor: CN = the requester name, extendedKeyUsage clientAuth only, no SAN, so it
  cannot pose as a node.

Keys are EC P-256 (ECDSA), which every gRPC build accepts. Private keys are written
0600 and no file is ever overwritten unless the caller asks for it.

Layout of a PKI directory:

    DIR/ca.pem, DIR/ca.key
    DIR/nodes/NAME.pem, DIR/nodes/NAME.key
    DIR/auditors/NAME.pem, DIR/auditors/NAME.key
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = structlog.get_logger(__name__)

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
NODES_DIR = "nodes"
AUDITORS_DIR = "auditors"

DEFAULT_CA_DAYS = 3650
DEFAULT_LEAF_DAYS = 397
"""Leaf certificates live about a year (the CA/Browser limit) so rotation stays routine."""

EXPIRY_WARNING_DAYS = 30

_NODE_NAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
"""A node name becomes a DNS SAN, so it must be a DNS name (the plan allows a superset)."""

_REQUESTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
"""The policy's requester syntax, capped at 64 characters (the X.509 limit of a CN)."""

_BACKDATE = dt.timedelta(minutes=5)
"""notBefore is set a little in the past so a peer whose clock lags still accepts it."""


class PkiError(Exception):
    """A PKI input or file problem; the message names the file and what is wrong."""


@dataclass(frozen=True)
class CertKeyPaths:
    """Where one certificate and its private key were written."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class PkiPaths:
    """A whole PKI directory: the CA and the certificates issued from it."""

    directory: Path
    ca: CertKeyPaths
    nodes: dict[str, CertKeyPaths] = field(default_factory=dict)
    auditors: dict[str, CertKeyPaths] = field(default_factory=dict)


@dataclass(frozen=True)
class CertificateInfo:
    """What `fedaudit pki show` prints about one certificate."""

    path: Path | None
    subject: str
    common_name: str | None
    issuer: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    is_ca: bool
    extended_key_usage: tuple[str, ...]
    sha256_fingerprint: str

    @property
    def role(self) -> str:
        """ca, node (serverAuth), auditor (clientAuth) or other."""
        if self.is_ca:
            return "ca"
        if self.extended_key_usage == ("serverAuth",):
            return "node"
        if self.extended_key_usage == ("clientAuth",):
            return "auditor"
        return "other"


@dataclass(frozen=True)
class ExpiryWarning:
    """A certificate that has expired or expires within the warning window."""

    path: Path
    common_name: str | None
    not_after: dt.datetime
    days_left: int

    @property
    def expired(self) -> bool:
        return self.days_left < 0

    @property
    def message(self) -> str:
        who = f" ({self.common_name})" if self.common_name else ""
        when = self.not_after.strftime("%Y-%m-%d %H:%M UTC")
        if self.expired:
            return f"{self.path}{who}: EXPIRED on {when}; peers reject it, issue a new one"
        return (
            f"{self.path}{who}: expires in {self.days_left} day(s), on {when}; "
            "issue a new certificate before then"
        )


# --- issuing -------------------------------------------------------------------------------


def init_ca(
    directory: Path,
    *,
    name: str = "fedaudit federation CA",
    days: int = DEFAULT_CA_DAYS,
    overwrite: bool = False,
    now: dt.datetime | None = None,
) -> CertKeyPaths:
    """Create the federation CA in `directory` (ca.pem, ca.key 0600).

    Refuses to replace an existing CA unless `overwrite`: a new CA invalidates every
    certificate the federation has issued, which must never happen by accident.
    """
    _check_days(days)
    if not name or len(name) > 64:
        raise PkiError(f"CA name must be 1 to 64 characters (got {len(name)})")
    paths = CertKeyPaths(directory / CA_CERT, directory / CA_KEY)
    _refuse_existing(paths, overwrite)
    now = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write(paths, cert, key, overwrite=overwrite)
    log.info("pki_ca_created", cert=str(paths.cert), not_after=cert.not_valid_after_utc.isoformat())
    return paths


def issue_node_certificate(
    directory: Path,
    name: str,
    *,
    hosts: Sequence[str] = (),
    days: int = DEFAULT_LEAF_DAYS,
    overwrite: bool = False,
    now: dt.datetime | None = None,
    public_key: ec.EllipticCurvePublicKey | None = None,
) -> CertKeyPaths:
    """Issue a node (server) certificate: CN and DNS SAN = `name`, plus `hosts` as SANs.

    With `public_key` (from a signing request) no key is generated or written: the
    node made its own and it never leaves the node.

    `hosts` are the DNS names or IP addresses the node is reached at. The coordinator
    checks the node name, not the host (see fedaudit.pki.tls), but listing the hosts lets
    ordinary TLS clients such as grpcurl verify the node too.
    """
    if not _NODE_NAME.fullmatch(name):
        raise PkiError(
            f"node name {name!r}: must be a DNS name (letters, digits, '-', labels separated "
            "by '.'), because it is the certificate's DNS SAN the coordinator checks"
        )
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    for host in hosts:
        san = host_san(host)
        if san not in sans:
            sans.append(san)
    _check_identity_collisions(directory, name, sans)
    return _issue_leaf(
        directory,
        directory / NODES_DIR,
        name,
        sans=sans,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        days=days,
        overwrite=overwrite,
        now=now,
        public_key=public_key,
    )


def issue_auditor_certificate(
    directory: Path,
    name: str,
    *,
    days: int = DEFAULT_LEAF_DAYS,
    overwrite: bool = False,
    now: dt.datetime | None = None,
    public_key: ec.EllipticCurvePublicKey | None = None,
) -> CertKeyPaths:
    """Issue an auditor (client) certificate whose CN is the requester name nodes' policies list."""
    if not _REQUESTER_NAME.fullmatch(name):
        raise PkiError(
            f"auditor name {name!r}: must be 1 to 64 letters, digits, '.', '_', '@' or '-' "
            "starting with a letter or digit (the requester name in the nodes' policies)"
        )
    return _issue_leaf(
        directory,
        directory / AUDITORS_DIR,
        name,
        sans=[],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        days=days,
        overwrite=overwrite,
        now=now,
        public_key=public_key,
    )


def create_throwaway_pki(
    directory: Path,
    node_names: Iterable[str],
    auditor: str,
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    days: int = 2,
) -> PkiPaths:
    """A fresh CA, one certificate per node and one auditor certificate, for the demo and tests.

    Lives `days` days, so a leaked copy is useless soon. Replaces whatever PKI was in
    `directory` (it is throw-away by definition).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = init_ca(directory, name="fedaudit throw-away demo CA", days=days + 1, overwrite=True)
    nodes = {
        name: issue_node_certificate(directory, name, hosts=hosts, days=days, overwrite=True)
        for name in node_names
    }
    auditor_paths = issue_auditor_certificate(directory, auditor, days=days, overwrite=True)
    return PkiPaths(directory=directory, ca=ca, nodes=nodes, auditors={auditor: auditor_paths})


def _issue_leaf(
    directory: Path,
    target: Path,
    name: str,
    *,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
    overwrite: bool,
    now: dt.datetime | None,
    public_key: ec.EllipticCurvePublicKey | None = None,
) -> CertKeyPaths:
    _check_days(days)
    ca_cert, ca_key = load_ca(directory)
    paths = CertKeyPaths(target / f"{name}.pem", target / f"{name}.key")
    if public_key is None:
        _refuse_existing(paths, overwrite)
    else:
        _refuse_existing(CertKeyPaths(paths.cert, paths.cert), overwrite)
    now = _now(now)
    not_after = now + dt.timedelta(days=days)
    if not_after > ca_cert.not_valid_after_utc:
        raise PkiError(
            f"{directory / CA_CERT}: the CA expires on {ca_cert.not_valid_after_utc:%Y-%m-%d}, "
            f"before the requested certificate would ({not_after:%Y-%m-%d}); use fewer --days "
            "or renew the CA"
        )
    key = ec.generate_private_key(ec.SECP256R1()) if public_key is None else None
    subject_key = public_key if key is None else key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    if key is None:
        write_atomically(
            paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite=overwrite
        )
    else:
        _write(paths, cert, key, overwrite=overwrite)
    log.info(
        "pki_certificate_issued",
        name=name,
        role="node" if usage == ExtendedKeyUsageOID.SERVER_AUTH else "auditor",
        cert=str(paths.cert),
        not_after=not_after.isoformat(),
    )
    return paths


def _check_identity_collisions(directory: Path, name: str, sans: list[x509.GeneralName]) -> None:
    """Refuse SANs that would let one node's certificate pass as another node's.

    The coordinator pins a node by its name as a DNS SAN (fedaudit.pki.tls), so a node
    name may appear only on that node's certificate; hosts shared between nodes
    (a machine running two nodes) are fine. DNS names compare case-insensitively.
    """
    mine = {str(san.value).lower() for san in sans if isinstance(san, x509.DNSName)}
    for other_path in sorted((directory / NODES_DIR).glob("*.pem")):
        other = other_path.stem.lower()
        if other == name.lower():
            continue  # re-issuing the same node
        try:
            ext = load_certificate(other_path).extensions
            san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
            theirs = {d.lower() for d in san.get_values_for_type(x509.DNSName)}
        except (PkiError, x509.ExtensionNotFound):
            theirs = set()
        if other in mine:
            raise PkiError(
                f"host {other_path.stem!r} is the name of another node ({other_path}); a node "
                "name may appear only on that node's certificate"
            )
        if name.lower() in theirs:
            raise PkiError(
                f"node name {name!r} is already a host name on {other_path}; that certificate "
                "would pass as this node's, so re-issue it without that host first"
            )


def host_san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not _NODE_NAME.fullmatch(host):
        raise PkiError(f"host {host!r}: not an IP address or a DNS name")
    return x509.DNSName(host)


def _check_days(days: int) -> None:
    if not 1 <= days <= 36500:
        raise PkiError(f"validity must be 1 to 36500 days (got {days})")


# --- loading and inspecting ----------------------------------------------------------------


def load_certificate(path: Path) -> x509.Certificate:
    """Read one PEM certificate; a missing, unreadable or non-PEM file is a PkiError."""
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"{path}: not a PEM certificate ({exc})") from exc


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read one unencrypted PEM EC private key (what this module writes)."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise PkiError(
            f"{path}: the private key is encrypted; fedaudit needs it unencrypted"
        ) from exc
    except ValueError as exc:
        raise PkiError(f"{path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: expected an EC private key, got {type(key).__name__}")
    return key


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key of a PKI directory, checked to belong together."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        raise PkiError(
            f"{directory}: no CA here ({CA_CERT} and {CA_KEY} expected); "
            f"create one with `fedaudit pki init --dir {directory}`"
        )
    cert, key = load_certificate(cert_path), load_private_key(key_path)
    if cert.public_key() != key.public_key():
        raise PkiError(f"{key_path}: this key does not belong to {cert_path}")
    if not _is_ca(cert):
        raise PkiError(f"{cert_path}: not a CA certificate (basicConstraints CA:TRUE missing)")
    if cert.not_valid_after_utc <= _now(None):
        raise PkiError(f"{cert_path}: the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return cert, key


def describe_certificate(cert: x509.Certificate, path: Path | None = None) -> CertificateInfo:
    """The facts about `cert` an operator needs to tell what it is and when it runs out."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usages = tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku)
    except x509.ExtensionNotFound:
        usages = ()
    return CertificateInfo(
        path=path,
        subject=cert.subject.rfc4514_string(),
        common_name=str(cns[0].value) if cns else None,
        issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=dns,
        ip_addresses=ips,
        is_ca=_is_ca(cert),
        extended_key_usage=usages,
        sha256_fingerprint=cert.fingerprint(hashes.SHA256()).hex(":"),
    )


_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}


def days_until_expiry(cert: x509.Certificate, now: dt.datetime | None = None) -> int:
    """Whole days left until notAfter, rounded down; negative once expired."""
    left = cert.not_valid_after_utc - _now(now)
    return math.floor(left.total_seconds() / 86400)


def expiry_warnings(
    paths: Iterable[Path],
    within_days: int = EXPIRY_WARNING_DAYS,
    *,
    now: dt.datetime | None = None,
) -> list[ExpiryWarning]:
    """Certificates among `paths` that have expired or expire within `within_days`.

    Meant to run where it is seen early (node start, audit run, a daily check), so a
    certificate is renewed before handshakes start failing.
    """
    warnings = []
    for path in paths:
        cert = load_certificate(Path(path))
        left = days_until_expiry(cert, now)
        if left < within_days:
            cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            warnings.append(
                ExpiryWarning(
                    path=Path(path),
                    common_name=str(cns[0].value) if cns else None,
                    not_after=cert.not_valid_after_utc,
                    days_left=left,
                )
            )
    return warnings


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


# --- files ---------------------------------------------------------------------------------


def _now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise PkiError(f"{path}: cannot read the {what}: {exc.strerror}") from exc


def _refuse_existing(paths: CertKeyPaths, overwrite: bool) -> None:
    if overwrite:
        return
    existing = [str(p) for p in (paths.cert, paths.key) if p.exists()]
    if existing:
        raise PkiError(
            f"{', '.join(existing)}: already exists; refusing to overwrite "
            "(pass --force to replace it)"
        )


def _write(
    paths: CertKeyPaths,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    *,
    overwrite: bool,
) -> None:
    """Write the key (0600) before the certificate, each atomically via a temporary file."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(paths.key, key_pem, 0o600, overwrite=overwrite)
    write_atomically(
        paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite=overwrite
    )


def write_atomically(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write via a temporary file; without `overwrite`, a file that appeared meanwhile wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; the key stays that way throughout
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if `path` exists: no check-then-write race
            except FileExistsError:
                raise PkiError(f"{path}: already exists; refusing to overwrite") from None
            finally:
                Path(tmp).unlink(missing_ok=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
