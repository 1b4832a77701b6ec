"""Shared fixtures: node databases on SQLite and PostgreSQL.

PostgreSQL tests use the server named by FEDAUDIT_TEST_PG_URL (default: the local
trust-auth server, database `test`). Each test gets its own schema, dropped
afterwards. Without a reachable server the tests skip with the reason, unless
FEDAUDIT_REQUIRE_PG=1 (CI sets it), in which case they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts and ends with structlog's defaults (the CLI configures it globally)."""
    import structlog

    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def _pg_base_url() -> str:
    return os.environ.get("FEDAUDIT_TEST_PG_URL", DEFAULT_PG_URL)


def _pg_unavailable_reason() -> str | None:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the machine
        return "psycopg is not installed (it is a dependency of fedaudit: pip install -e .)"
    try:
        with psycopg.connect(_pg_base_url(), connect_timeout=3):
            return None
    except Exception as exc:  # any connection failure means: no server to test against
        return f"PostgreSQL not reachable at {_pg_base_url()}: {exc.__class__.__name__}"


@pytest.fixture(scope="session", name="pg_available")
def _pg_available() -> str | None:
    """None when PostgreSQL is usable, else the reason it is not."""
    return _pg_unavailable_reason()


@pytest.fixture(name="pg_url")
def _pg_url(pg_available: str | None) -> Iterator[str]:
    """A SQLAlchemy URL for a fresh, empty PostgreSQL schema (dropped after the test)."""
    if pg_available is not None:
        if os.environ.get("FEDAUDIT_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL is required here (FEDAUDIT_REQUIRE_PG=1): {pg_available}")
        pytest.skip(pg_available)
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    base = _pg_base_url()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    url = base.replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{url}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(name="sqlite_url")
def _sqlite_url(tmp_path: Path) -> str:
    """A SQLAlchemy URL for a new SQLite file in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'node.db'}"


@pytest.fixture(
    name="db_url", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def _db_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


# --- nodes --------------------------------------------------------------------------------

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
REQUESTER = "oversight-board"


@pytest.fixture(name="node_factory")
def _node_factory() -> Iterator[object]:
    """Start real gRPC node servers on loopback (port 0); all are stopped after the test.

    Call it with a database URL (and optionally a policy and a bundle); it imports the
    bundle and returns the RunningNode.
    """
    from fedaudit.node.ingest.bundle import import_bundle
    from fedaudit.node.privacy.policy import example_policy
    from fedaudit.node.query.service import NodeService
    from fedaudit.node.server import start_node_server
    from fedaudit.node.store.db import make_engine

    started = []
    engines = []

    def start(db_url: str, *, policy=None, bundle: Path | None = FIXTURE_BUNDLE, clock=None):
        engine = make_engine(db_url)
        engines.append(engine)
        if bundle is not None:
            import_bundle(engine, bundle)
        else:
            from fedaudit.node.store.db import create_schema

            create_schema(engine)
        policy = policy or example_policy({REQUESTER: 2.0, "other-auditor": 1.0})
        kwargs = {"clock": clock} if clock is not None else {}
        node = start_node_server(NodeService(engine, policy, **kwargs), host="127.0.0.1", port=0)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop(grace=None)
    for engine in engines:
        engine.dispose()


# --- two auditors over mTLS (requester isolation, canonical queries) ------------------------

MTLS_AUDITORS = ("oversight-board", "other-auditor")
"""The two auditor certificates of the `mtls_pki`: the board, and a second requester."""


@pytest.fixture(scope="module", name="mtls_pki")
def _mtls_pki(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A throw-away federation PKI: node M01 and both `MTLS_AUDITORS`, all in its policy."""
    from fedaudit.pki.authority import PkiPaths, create_throwaway_pki, issue_auditor_certificate

    board, other = MTLS_AUDITORS
    paths = create_throwaway_pki(tmp_path_factory.mktemp("pki"), ["M01"], board)
    second = issue_auditor_certificate(paths.directory, other, days=2)
    return PkiPaths(paths.directory, paths.ca, paths.nodes, {**paths.auditors, other: second})


@pytest.fixture(name="mtls_node")
def _mtls_node(mtls_pki, tmp_path: Path) -> Iterator[object]:
    """Node M01 over mTLS on loopback; the board's share of the node's 6.0 is 4.0, the other's 2.0."""
    from fedaudit.node.ingest.bundle import import_bundle
    from fedaudit.node.privacy.policy import example_policy
    from fedaudit.node.query.service import NodeService
    from fedaudit.node.server import start_node_server
    from fedaudit.node.store.db import make_engine
    from fedaudit.pki.identity import NodeIdentity
    from fedaudit.pki.tls import TlsFiles, server_credentials

    board, other = MTLS_AUDITORS
    policy = example_policy({board: 2.0, other: 1.0}, node_rho_total=6.0, max_rho_per_request=1.0)
    engine = make_engine(str(tmp_path / "mtls-node.db"))
    import_bundle(engine, FIXTURE_BUNDLE)
    cert = mtls_pki.nodes["M01"]
    running = start_node_server(
        NodeService(
            engine,
            policy,
            identity=NodeIdentity.load(cert.cert, cert.key, mtls_pki.ca.cert),  # signs log heads
        ),
        host="127.0.0.1",
        port=0,
        server_credentials=server_credentials(TlsFiles(cert.cert, cert.key, mtls_pki.ca.cert)),
    )
    yield running
    running.stop(grace=None)
    engine.dispose()


@pytest.fixture(name="connect")
def _connect(mtls_pki, mtls_node) -> Iterator[object]:
    """connect(auditor) -> a GrpcNodeTransport to M01 authenticated by that auditor's certificate.

    Every transport claims the board in its requester header: only the certificate counts.
    """
    from fedaudit.coordinator.running.transport import GrpcNodeTransport
    from fedaudit.pki.tls import TlsFiles, channel_credentials, pinned_channel_options

    opened = []

    def open_as(auditor: str) -> GrpcNodeTransport:
        files = mtls_pki.auditors[auditor]
        transport = GrpcNodeTransport(
            "M01",
            f"127.0.0.1:{mtls_node.port}",
            requester=MTLS_AUDITORS[0],
            credentials=channel_credentials(TlsFiles(files.cert, files.key, mtls_pki.ca.cert)),
            channel_options=pinned_channel_options("M01"),
            retries=0,
        )
        opened.append(transport)
        return transport

    yield open_as
    for transport in opened:
        transport.close()
