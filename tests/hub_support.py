"""A federation in either mode: nodes served directly, or dialling out to a real hub.

`Federation.start(name, db_url, ...)` starts a node the way the mode says (a gRPC
server on loopback, or a `DialoutNode` connected to a `fedaudit hub` server on
loopback, both with TLS and the federation PKI), and `transports(...)` gives the
coordinator's ordinary transports to them: by address directly, by name through the
hub. Tests written against this run unchanged in both modes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedaudit.coordinator.ring.reconcile import GrpcReconcileTransport
from fedaudit.coordinator.ring.relay import GrpcDedupTransport
from fedaudit.coordinator.running.hub_channel import HubAccess, HubChannel
from fedaudit.coordinator.running.transport import GrpcNodeTransport
from fedaudit.hub.admission import CrlFile
from fedaudit.hub.server import RunningHub, start_hub_server
from fedaudit.node.dialout import Backoff, DialoutNode
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.ring.reconcile import ReconcileService
from fedaudit.node.ring.service import DedupService
from fedaudit.node.rpc.guard import MalformedRequestGuard
from fedaudit.node.rpc.limits import LimitSettings, RequestLimiter
from fedaudit.node.rpc.revocation import RevocationGuard
from fedaudit.node.server import start_node_server
from fedaudit.node.store.db import make_engine
from fedaudit.pki.authority import (
    PkiPaths,
    create_throwaway_pki,
    issue_auditor_certificate,
    issue_node_certificate,
)
from fedaudit.pki.enrolment import publish_crl
from fedaudit.pki.identity import NodeIdentity
from fedaudit.pki.tls import (
    TlsFiles,
    channel_credentials,
    pinned_channel_options,
    server_credentials,
)

REQUESTER = "oversight-board"
OTHER = "other-auditor"
HUB_NAME = "hub"
NODE_NAMES = tuple(f"M{i:02d}" for i in range(1, 9))
MODES = ("direct", "hub")
FAST_BACKOFF = Backoff(base=0.05, cap=0.5)


def make_pki(directory: Path) -> PkiPaths:
    """CA, nodes M01..M08, the hub, and two auditors, with an (empty) CRL."""
    paths = create_throwaway_pki(directory, NODE_NAMES, REQUESTER)
    hub = issue_node_certificate(directory, HUB_NAME, hosts=["127.0.0.1", "localhost"], days=2)
    other = issue_auditor_certificate(directory, OTHER, days=2)
    publish_crl(directory)
    return PkiPaths(
        paths.directory,
        paths.ca,
        {**paths.nodes, HUB_NAME: hub},
        {**paths.auditors, OTHER: other},
    )


@dataclass
class Started:
    """One started node, whichever the mode."""

    name: str
    address: str  # host:port directly; the node's name through the hub
    service: NodeService
    handle: Any  # RunningNode or DialoutNode

    def stop(self) -> None:
        self.handle.stop(grace=None)


@dataclass
class Federation:
    """Nodes in one mode, and transports to them; `close()` stops everything."""

    mode: str
    pki: PkiPaths
    crl: bool = True
    hub_crl: bool = True
    hub: RunningHub | None = None
    hub_port: int = 0
    nodes: dict[str, Started] = field(default_factory=dict)
    hub_process: Any = None
    _engines: list[Any] = field(default_factory=list)
    _transports: list[Any] = field(default_factory=list)

    @property
    def crl_path(self) -> Path:
        return self.pki.directory / "crl.pem"

    def start_hub(self, port: int = 0) -> RunningHub:
        hub = self.pki.nodes[HUB_NAME]
        self.hub = start_hub_server(
            cert_pem=hub.cert.read_bytes(),
            key_pem=hub.key.read_bytes(),
            ca=NodeIdentity.load(hub.cert, hub.key, self.pki.ca.cert).ca,
            crl=CrlFile(self.crl_path, _ca_cert(self.pki)) if self.crl and self.hub_crl else None,
            port=port or self.hub_port,
        )
        self.hub_port = self.hub.port
        return self.hub

    def start_hub_process(self, port: int) -> Any:
        """`fedaudit hub serve` as its own process (so a test can kill it, SIGKILL)."""
        import subprocess
        import sys
        import time

        files = self.pki.nodes[HUB_NAME]
        script = Path(sys.executable).with_name("fedaudit")
        self.hub_process = subprocess.Popen(
            [
                str(script),
                "--log-level",
                "warning",
                "hub",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--tls-cert",
                str(files.cert),
                "--tls-key",
                str(files.key),
                "--tls-ca",
                str(self.pki.ca.cert),
                "--tls-crl",
                str(self.crl_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.hub_port = port
        channel = self.access().open()
        try:
            from fedaudit.wire.v1 import hub_pb2, hub_pb2_grpc

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    hub_pb2_grpc.HubStub(channel).Connected(hub_pb2.ConnectedRequest(), timeout=2)
                    return self.hub_process
                except grpc.RpcError:
                    time.sleep(0.2)
        finally:
            channel.close()
        raise AssertionError("the hub process did not come up")

    def start(
        self,
        name: str,
        db_url: str,
        *,
        policy: Any = None,
        bundle: Path | None = None,
        import_data: bool = True,
        ring: bool = True,
        wait: bool = True,
    ) -> Started:
        engine = make_engine(db_url)
        self._engines.append(engine)
        if import_data and bundle is not None:
            import_bundle(engine, bundle)
        policy = policy or example_policy({REQUESTER: 2.0, OTHER: 1.0})
        files = self.pki.nodes[name]
        identity = NodeIdentity.load(files.cert, files.key, self.pki.ca.cert)
        service = NodeService(engine, policy, identity=identity)
        revocation = [RevocationGuard(self.crl_path, self.pki.ca.cert)] if self.crl else []
        revocations = revocation[0].current if revocation else None
        dedup = (
            DedupService(
                engine,
                policy,
                ledger=service.ledger,
                identity=identity,
                query_log=service.query_log,
                revocations=revocations,
            )
            if ring
            else None
        )
        reconcile = (
            ReconcileService(
                engine, policy, identity=identity, ledger=service.ledger, revocations=revocations
            )
            if ring
            else None
        )
        interceptors = [*revocation, RequestLimiter(LimitSettings()), MalformedRequestGuard()]
        if self.mode == "direct":
            running = start_node_server(
                service,
                host="127.0.0.1",
                port=0,
                server_credentials=server_credentials(
                    TlsFiles(files.cert, files.key, self.pki.ca.cert)
                ),
                interceptors=interceptors,
                dedup=dedup,
                reconcile=reconcile,
            )
            started = Started(name, f"127.0.0.1:{running.port}", service, running)
        else:
            assert self.hub is not None or self.hub_port, "start the hub first"
            node = DialoutNode(
                service,
                hub=f"127.0.0.1:{self.hub_port}",
                hub_name=HUB_NAME,
                identity=identity,
                credentials=grpc.ssl_channel_credentials(self.pki.ca.cert.read_bytes()),
                interceptors=interceptors,
                dedup=dedup,
                reconcile=reconcile,
                backoff=FAST_BACKOFF,
                rng=random.Random(7),
            ).start()
            if wait:
                assert node.wait_connected(10), f"{name} did not connect: {node.last_error}"
            started = Started(name, "", service, node)  # named, not addressed
        self.nodes[name] = started
        return started

    def access(self, auditor: str = REQUESTER) -> HubAccess:
        files = self.pki.auditors[auditor]
        return HubAccess.load(
            f"127.0.0.1:{self.hub_port}", HUB_NAME, files.cert, files.key, self.pki.ca.cert
        )

    def _kwargs(self, name: str, address: str, auditor: str) -> dict[str, Any]:
        if self.mode == "hub":
            return {"channel": HubChannel(self.access(auditor), name)}
        files = self.pki.auditors[auditor]
        return {
            "credentials": channel_credentials(TlsFiles(files.cert, files.key, self.pki.ca.cert)),
            "channel_options": pinned_channel_options(name),
        }

    def transport(
        self, name: str, address: str | None = None, *, auditor: str = REQUESTER, retries: int = 0
    ) -> GrpcNodeTransport:
        address = self.nodes[name].address if address is None else address
        t = GrpcNodeTransport(
            name,
            address,
            requester=auditor,
            retries=retries,
            **self._kwargs(name, address, auditor),
        )
        self._transports.append(t)
        return t

    def transports(self, names: Any = None, **kwargs: Any) -> dict[str, GrpcNodeTransport]:
        names = names if names is not None else self.nodes
        return {n: self.transport(n, **kwargs) for n in names}

    def dedup_transports(self, auditor: str = REQUESTER) -> dict[str, GrpcDedupTransport]:
        out = {}
        for name, node in self.nodes.items():
            out[name] = GrpcDedupTransport(
                name, node.address, requester=auditor, **self._kwargs(name, node.address, auditor)
            )
            self._transports.append(out[name])
        return out

    def reconcile_transports(self, auditor: str = REQUESTER) -> dict[str, GrpcReconcileTransport]:
        out = {}
        for name, node in self.nodes.items():
            out[name] = GrpcReconcileTransport(
                name, node.address, requester=auditor, **self._kwargs(name, node.address, auditor)
            )
            self._transports.append(out[name])
        return out

    def plan_nodes(self) -> dict[str, str]:
        return {name: node.address for name, node in self.nodes.items()}

    def close(self) -> None:
        """Stop everything (again is harmless)."""
        for t in self._transports:
            t.close()
        for node in self.nodes.values():
            node.stop()
        if self.hub is not None:
            self.hub.stop(grace=None)
        if self.hub_process is not None and self.hub_process.poll() is None:
            self.hub_process.kill()
            self.hub_process.wait()
        for engine in self._engines:
            engine.dispose()


def _ca_cert(pki: PkiPaths) -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())


@pytest.fixture(scope="module", name="federation_pki")
def _federation_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return make_pki(tmp_path_factory.mktemp("federation-pki"))


@pytest.fixture(name="mode", params=MODES)
def _mode(request: pytest.FixtureRequest) -> str:
    """Direct (nodes listen) or hub (nodes dial out)."""
    return request.param


@pytest.fixture(name="federation")
def _federation(mode: str, federation_pki: PkiPaths) -> Iterator[Federation]:
    fed = Federation(mode, federation_pki)
    if mode == "hub":
        fed.start_hub()
    yield fed
    fed.close()


@pytest.fixture(
    name="backend", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """new_db(name) -> a fresh node database URL: SQLite files, or PostgreSQL schemas."""
    import os
    import uuid

    schemas: list[str] = []
    if request.param == "sqlite":
        yield lambda name: f"sqlite:///{tmp_path / (name + '.db')}"
        return
    reason = request.getfixturevalue("pg_available")
    if reason is not None:
        if os.environ.get("FEDAUDIT_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL is required here (FEDAUDIT_REQUIRE_PG=1): {reason}")
        pytest.skip(reason)
    import psycopg

    from tests.conftest import _pg_base_url

    base = _pg_base_url()

    def new_db(name: str) -> str:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        schemas.append(schema)
        sep = "&" if "?" in base else "?"
        url = base.replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{url}{sep}options=-csearch_path%3D{schema}"

    yield new_db
    with psycopg.connect(base, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
