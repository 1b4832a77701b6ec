"""Readiness: re-check, while the node runs, that it can really answer, and tell gRPC health.

The server sets its health status once at start. A database can go away later (a
PostgreSQL failover, a lost volume), and a load balancer or Kubernetes should then
stop sending audits to this node until it is back. `ReadinessWatcher` re-checks
periodically and sets the status of the overall service ("") and of the AuditNode
service to SERVING or NOT_SERVING.

Ready means: a *new* connection to the database succeeds (pooled connections can
hide a database that is gone: a SQLite file handle outlives its directory), a data
version and the municipality are present, the query catalogue is loaded, and the
service can load its data state. The probe opens its own connection without a
pool and only reads.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from grpc_health.v1 import health, health_pb2
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.pool import NullPool

from fedaudit.node.query import catalogue
from fedaudit.node.rpc.status import SERVICE_NAME
from fedaudit.node.store.models import DataVersion, Municipality

if TYPE_CHECKING:  # only a type here; importing it loads OpenDP, which `--help` need not pay
    from fedaudit.node.query.service import NodeService

log = structlog.get_logger(__name__)

DEFAULT_INTERVAL = 10.0
"""Seconds between checks; well inside a Kubernetes probe period of 10 s x 3 failures."""

PROBE_TIMEOUT = 3
"""Seconds a probe may wait for a connection (PostgreSQL) or a lock (SQLite)."""

LIVENESS_SERVICE = "liveness"
"""Health service name that is SERVING while the process answers at all (for liveness probes:
a database outage must make a node unready, not get it restarted)."""


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str  # empty when ready; a short reason without personal data otherwise


def probe_engine(engine: Engine) -> Engine:
    """An unpooled, read-only engine to the same database as `engine`."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path in ("", ":memory:"):
            return engine  # an in-memory database cannot disappear separately from the node
        uri = f"file:{urllib.parse.quote(path)}?mode=ro"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, timeout=PROBE_TIMEOUT, check_same_thread=False)

        return create_engine("sqlite://", creator=connect, poolclass=NullPool)
    return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": PROBE_TIMEOUT})


def check_readiness(service: NodeService, probe: Engine) -> Readiness:
    """One readiness check (see the module docstring for what is checked)."""
    try:
        with probe.connect() as conn:
            version = conn.execute(
                select(DataVersion.version).order_by(DataVersion.id.desc()).limit(1)
            ).scalar()
            municipality = conn.execute(select(Municipality.municipality_code).limit(1)).scalar()
    except Exception as exc:
        return Readiness(False, f"database check failed ({type(exc).__name__})")
    if version is None or municipality is None:
        return Readiness(False, "no data version imported")
    if not catalogue.TEMPLATES:
        return Readiness(False, "query catalogue is empty")
    if not service.ready():
        return Readiness(False, "data state could not be loaded")
    return Readiness(True, "")


class ReadinessWatcher:
    """Re-checks readiness every `interval` seconds and sets the gRPC health status.

    `start()` checks once synchronously (so the status is right before the first
    probe arrives) and then in a daemon thread; `stop()` ends the thread and waits
    for it. `on_change(ready)` is called on every transition (e.g. a metrics gauge).
    """

    def __init__(
        self,
        service: NodeService,
        health_servicer: health.HealthServicer,
        engine: Engine,
        *,
        interval: float = DEFAULT_INTERVAL,
        services: Sequence[str] = ("", SERVICE_NAME),
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("the readiness interval must be positive")
        self._service = service
        self._health = health_servicer
        self._probe = probe_engine(engine)
        self._owns_probe = self._probe is not engine
        self._interval = interval
        self._services = tuple(services)
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: Readiness | None = None

    @property
    def last(self) -> Readiness | None:
        """The result of the latest check (None before the first)."""
        return self._last

    def check_now(self) -> Readiness:
        """Check once and update the health status; returns the result."""
        result = check_readiness(self._service, self._probe)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if result.ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._services:
            self._health.set(name, status)
        if self._last is None or self._last.ready != result.ready:
            if result.ready:
                log.info("node_ready")
            else:
                log.warning("node_not_ready", reason=result.reason)
            if self._on_change is not None:
                self._on_change(result.ready)
        self._last = result
        return result

    def start(self) -> ReadinessWatcher:
        if self._thread is not None:
            raise RuntimeError("the readiness watcher is already running")
        self._health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.check_now()
        self._thread = threading.Thread(target=self._run, name="fedaudit-readiness", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._owns_probe:
            self._probe.dispose()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check_now()
            except Exception:  # a bug in a check must not kill the watcher silently
                log.exception("readiness_check_failed")
