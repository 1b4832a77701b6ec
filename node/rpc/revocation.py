"""Refuse callers whose certificate the federation CA has revoked (`node serve --tls-crl`).

gRPC's TLS stack checks the chain and the validity period but not revocation, so a
stolen auditor key would keep working until its certificate expires. This interceptor
reads the caller's certificate from the TLS session and refuses it, before any servicer
runs, when its serial is on the CA's CRL. The CRL file is re-read when it changes, so
publishing a new one takes effect without a restart; a CRL that cannot be trusted any
more (bad signature, past its next update) refuses every call rather than fail open.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography import x509

from fedaudit.pki.authority import PkiError
from fedaudit.pki.enrolment import RevocationList, load_crl

log = structlog.get_logger(__name__)


class RevocationGuard(grpc.ServerInterceptor):  # type: ignore[misc]
    """A `grpc.ServerInterceptor` enforcing the federation CA's CRL on every call."""

    def __init__(
        self,
        crl_path: Path,
        ca_path: Path,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._crl_path = crl_path
        self._ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        self._clock = clock
        self._lock = threading.Lock()
        self._mtime = -1.0
        self._list: RevocationList | None = None
        self._problem = ""
        self.current()  # fail at start-up on an unreadable CRL, not at the first call
        if self._list is None:
            raise PkiError(self._problem)

    def current(self) -> RevocationList | None:
        """The CRL in force (re-read when the file changed); None when it cannot be trusted."""
        with self._lock:
            try:
                mtime = self._crl_path.stat().st_mtime
            except OSError as exc:
                self._list, self._problem = None, f"{self._crl_path}: {exc.strerror}"
                return None
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    self._list, self._problem = load_crl(self._crl_path, self._ca), ""
                    log.info("crl_loaded", revoked=len(self._list.serials))
                except PkiError as exc:
                    self._list, self._problem = None, str(exc)
                    log.error("crl_unusable", problem=str(exc))
            if self._list is not None and self._clock() > self._list.next_update:
                self._problem = f"{self._crl_path}: expired; the CA must publish a new one"
                return None
            return self._list

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        kind = next(
            k
            for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
            if getattr(handler, k) is not None
        )
        behavior = getattr(handler, kind)
        streaming_response = kind.endswith("_stream")

        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            self._check(context)
            return behavior(request, context)

        def checked_stream(request: Any, context: grpc.ServicerContext) -> Any:
            self._check(context)
            yield from behavior(request, context)

        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(
            checked_stream if streaming_response else checked,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _check(self, context: grpc.ServicerContext) -> None:
        revoked = self.current()
        if revoked is None:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "this node cannot check certificate revocation (its CRL is unusable); "
                "it answers nobody until the operator installs a current CRL",
            )
        auth = context.auth_context() or {}
        pems = auth.get("x509_pem_cert") or []
        if not pems:
            return  # plaintext (loopback development): nothing to check
        certificate = x509.load_pem_x509_certificate(pems[0])
        if revoked.is_revoked(certificate):
            log.warning("revoked_certificate_refused", serial=str(certificate.serial_number))
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "your certificate has been revoked by the federation CA",
            )
