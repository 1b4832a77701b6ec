"""Who may use the hub: a federation node (its hello) or auditor (its signed call header).

The hub's TLS is server-authenticated only: a node's certificate is serverAuth-only by
design (so it can never act as a requester), and TLS stacks refuse such a certificate
from a client. Both kinds of peer therefore prove their federation identity in-band,
with the same keys: a node signs the hub's fresh challenge, an auditor signs every call
(which the node checks again itself). Either is refused when its certificate does not
chain to the federation CA, has the wrong role, is not valid now, or is on the CRL.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path

import structlog
from cryptography import x509

from fedaudit.common.envelope import AUDITOR_PREFIX, hello_statement
from fedaudit.pki.authority import PkiError
from fedaudit.pki.enrolment import RevocationList, load_crl
from fedaudit.pki.identity import IdentityError, Role, common_name, verify_statement
from fedaudit.wire.v1 import hub_pb2 as hub_pb

log = structlog.get_logger(__name__)


class AdmissionError(Exception):
    """The peer did not prove a usable federation identity; the message says why."""


class CrlFile:
    """The federation CRL, re-read when the file changes; None when it cannot be trusted."""

    def __init__(
        self,
        path: Path,
        ca: x509.Certificate,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._path = path
        self._ca = ca
        self._clock = clock
        self._lock = threading.Lock()
        self._mtime = -1.0
        self._list: RevocationList | None = None
        self.problem = ""
        if self.current() is None:
            raise PkiError(self.problem)

    def current(self) -> RevocationList | None:
        with self._lock:
            try:
                mtime = self._path.stat().st_mtime
            except OSError as exc:
                self._list, self.problem = None, f"{self._path}: {exc.strerror}"
                return None
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    self._list, self.problem = load_crl(self._path, self._ca), ""
                    log.info("hub_crl_loaded", revoked=len(self._list.serials))
                except PkiError as exc:
                    self._list, self.problem = None, str(exc)
                    log.error("hub_crl_unusable", problem=str(exc))
            if self._list is not None and self._clock() > self._list.next_update:
                self.problem = f"{self._path}: expired; the CA must publish a new one"
                return None
            return self._list


class Admission:
    """The hub's checks of its peers against the federation CA and CRL."""

    def __init__(self, ca: tuple[x509.Certificate, ...], crl: CrlFile | None = None) -> None:
        self._ca = ca
        self._crl = crl

    def node(self, hello: hub_pb.NodeHello, nonce: bytes) -> str:
        """The node's name, if its hello proves it holds that node's federation key."""
        self._verify(
            hello.certificate_pem,
            hello_statement(nonce),
            hello.signature,
            claimed=hello.name,
            role="node",
        )
        return hello.name

    def auditor(self, first: hub_pb.SignedFrame) -> str:
        """The auditor's name, if the call's first frame is signed by a federation auditor."""
        try:
            claimed = common_name(x509.load_pem_x509_certificate(first.certificate_pem))
        except (ValueError, IdentityError) as exc:
            raise AdmissionError(f"the call carries no usable auditor certificate: {exc}") from exc
        self._verify(
            first.certificate_pem,
            AUDITOR_PREFIX + first.body,
            first.signature,
            claimed=claimed,
            role="auditor",
        )
        return claimed

    def _verify(
        self,
        certificate_pem: bytes,
        statement: bytes,
        signature: bytes,
        *,
        claimed: str,
        role: Role,
    ) -> None:
        try:
            certificate = verify_statement(
                self._ca, certificate_pem, statement, signature, claimed_name=claimed, role=role
            )
        except IdentityError as exc:
            raise AdmissionError(str(exc)) from exc
        if self._crl is None:
            return
        revoked = self._crl.current()
        if revoked is None:
            raise AdmissionError(
                f"the hub cannot check revocation ({self._crl.problem}); it admits nobody "
                "until the operator installs a current CRL"
            )
        if revoked.is_revoked(certificate):
            log.warning("hub_revoked_refused", role=role, name=claimed)
            raise AdmissionError(f"the certificate of {role} {claimed} has been revoked")
