"""mTLS between real gRPC nodes and clients on loopback: who may connect, who is asking, who answers."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from fedaudit import PROTOCOL_METADATA_KEY, PROTOCOL_VERSION, REQUESTER_METADATA_KEY
from fedaudit.coordinator.errors import NodeUnavailableError
from fedaudit.coordinator.running.transport import GrpcNodeTransport
from fedaudit.node.domain import QuerySpec
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query.service import NodeService, utcnow
from fedaudit.node.server import RunningNode, start_node_server
from fedaudit.pki.authority import (
    CertKeyPaths,
    PkiPaths,
    create_throwaway_pki,
    issue_auditor_certificate,
    issue_node_certificate,
)
from fedaudit.pki.tls import (
    TlsFiles,
    channel_credentials,
    pinned_channel_options,
    server_credentials,
)
from fedaudit.wire.v1 import node_pb2 as pb
from fedaudit.wire.v1 import node_pb2_grpc as pb_grpc

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
REQUESTER = "oversight-board"
POLICY = example_policy({REQUESTER: 2.0, "other-auditor": 1.0})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    """The federation's PKI: nodes M01 and M02, the oversight board and an unlisted auditor."""
    paths = create_throwaway_pki(tmp_path_factory.mktemp("pki"), ["M01", "M02"], REQUESTER)
    stranger = issue_auditor_certificate(paths.directory, "stranger", days=2)
    return PkiPaths(
        paths.directory, paths.ca, paths.nodes, {**paths.auditors, "stranger": stranger}
    )


@pytest.fixture(scope="module")
def bad_clients(pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertKeyPaths]:
    """Client identities named like the oversight board that a node must not accept."""
    other = create_throwaway_pki(tmp_path_factory.mktemp("other-ca"), [], REQUESTER)
    # Same CA, same name, but expired: issued in a copy of the CA directory.
    same_ca = tmp_path_factory.mktemp("same-ca")
    shutil.copy(pki.ca.cert, same_ca / "ca.pem")
    shutil.copy(pki.ca.key, same_ca / "ca.key")
    expired = issue_auditor_certificate(
        same_ca, REQUESTER, days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    )
    return {
        "other CA": other.auditors[REQUESTER],
        "self-signed": _self_signed(tmp_path_factory.mktemp("self"), REQUESTER),
        "expired": expired,
        "node certificate": pki.nodes["M02"],
    }


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One imported node database shared by the module's servers (they only read and charge)."""
    from fedaudit.node.ingest.bundle import import_bundle
    from fedaudit.node.store.db import make_engine

    eng = make_engine(str(tmp_path_factory.mktemp("db") / "node.db"))
    import_bundle(eng, FIXTURE_BUNDLE)
    yield eng
    eng.dispose()


@pytest.fixture
def serve(engine, pki: PkiPaths) -> Iterator[Callable[..., RunningNode]]:
    """Start an mTLS node presenting the named node certificate (or given raw credentials)."""
    started: list[RunningNode] = []

    def start(name: str = "M01", credentials: grpc.ServerCredentials | None = None) -> RunningNode:
        if credentials is None:
            node = pki.nodes[name]
            credentials = server_credentials(TlsFiles(node.cert, node.key, pki.ca.cert))
        running = start_node_server(
            NodeService(engine, POLICY), host="127.0.0.1", port=0, server_credentials=credentials
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop(grace=None)


def _channel(port: int, ca: Path, client: CertKeyPaths | None, name: str = "M01") -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, pinned_channel_options(name))


def _capabilities(channel: grpc.Channel, header_requester: str = REQUESTER) -> pb.Capabilities:
    metadata = (
        (PROTOCOL_METADATA_KEY, PROTOCOL_VERSION),
        (REQUESTER_METADATA_KEY, header_requester),
    )
    return pb_grpc.AuditNodeStub(channel).GetCapabilities(
        pb.CapabilitiesRequest(), metadata=metadata, timeout=5
    )


def _transport(pki: PkiPaths, node: RunningNode, name: str, requester: str = REQUESTER):
    auditor = pki.auditors[REQUESTER]
    return GrpcNodeTransport(
        name,
        f"127.0.0.1:{node.port}",
        requester=requester,
        credentials=channel_credentials(TlsFiles(auditor.cert, auditor.key, pki.ca.cert)),
        channel_options=pinned_channel_options(name),
        retries=0,
    )


def test_requester_is_the_certificate_identity_not_the_header(serve, pki) -> None:
    """A header claiming 'other-auditor' is ignored: the node answers and charges the certificate's CN."""
    node = serve("M01")
    with _channel(node.port, pki.ca.cert, pki.auditors[REQUESTER]) as channel:
        caps = _capabilities(channel, header_requester="other-auditor")
    assert caps.requester == REQUESTER
    assert caps.budget.requester_rho_cap == pytest.approx(2.0)  # other-auditor's cap is 1.0

    transport = _transport(pki, node, "M01", requester="other-auditor")
    try:
        transport.query(QuerySpec("assessment_results", rho=0.01), "mtls-q1", timeout=10)
    finally:
        transport.close()
    ledger = node.service.ledger
    assert ledger.status(REQUESTER, utcnow()).requester_rho_spent == pytest.approx(0.01)
    assert ledger.status("other-auditor", utcnow()).requester_rho_spent == 0


@pytest.mark.parametrize(
    "client", ["no certificate", "other CA", "self-signed", "expired", "node certificate"]
)
def test_handshake_rejects_clients_without_a_valid_auditor_certificate(
    serve, pki, bad_clients, client
) -> None:
    """Only an unexpired clientAuth certificate of the federation CA gets through the handshake."""
    node = serve("M01")
    with _channel(node.port, pki.ca.cert, pki.auditors[REQUESTER]) as channel:
        assert _capabilities(channel).requester == REQUESTER  # the server itself is fine
    with (
        _channel(node.port, pki.ca.cert, bad_clients.get(client)) as channel,
        pytest.raises(grpc.RpcError) as exc,
    ):
        _capabilities(channel)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_cannot_talk_to_an_mtls_node(serve) -> None:
    """A client without TLS gets no answer from an mTLS node."""
    node = serve("M01")
    with (
        grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel,
        pytest.raises(grpc.RpcError) as exc,
    ):
        _capabilities(channel)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_auditor_not_named_in_policy_is_refused(serve, pki) -> None:
    """A valid CA certificate whose CN the policy does not list gets REQUESTER_NOT_ALLOWED."""
    node = serve("M01")
    with (
        _channel(node.port, pki.ca.cert, pki.auditors["stranger"]) as channel,
        pytest.raises(grpc.RpcError) as exc,
    ):
        _capabilities(channel, header_requester=REQUESTER)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status = rpc_status.from_call(exc.value)
    info = error_details_pb2.ErrorInfo()
    assert status is not None
    assert status.details[0].Unpack(info)
    assert info.reason == "REQUESTER_NOT_ALLOWED"
    assert "stranger" in status.message


def test_coordinator_pins_the_node_name_from_the_plan(serve, pki) -> None:
    """A server presenting M02's valid certificate is refused when the plan says M01."""
    node = serve("M02")
    impostor = _transport(pki, node, "M01")
    try:
        with pytest.raises(NodeUnavailableError):
            impostor.info(timeout=5)
    finally:
        impostor.close()
    genuine = _transport(pki, node, "M02")
    try:
        assert genuine.info(timeout=5).municipality_code == "T01"
    finally:
        genuine.close()
    # Without the pin, the IP SAN both node certificates share would have let it through.
    with grpc.secure_channel(
        f"127.0.0.1:{node.port}",
        channel_credentials(
            TlsFiles(pki.auditors[REQUESTER].cert, pki.auditors[REQUESTER].key, pki.ca.cert)
        ),
    ) as channel:
        assert _capabilities(channel).requester == REQUESTER


def test_coordinator_rejects_an_expired_node_certificate(serve, pki, tmp_path) -> None:
    """A node serving an expired certificate of the right CA and name fails the handshake."""
    shutil.copy(pki.ca.cert, tmp_path / "ca.pem")
    shutil.copy(pki.ca.key, tmp_path / "ca.key")
    old = issue_node_certificate(
        tmp_path,
        "M01",
        hosts=["127.0.0.1"],
        days=1,
        now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3),
    )
    raw = grpc.ssl_server_credentials(
        [(old.key.read_bytes(), old.cert.read_bytes())],
        root_certificates=pki.ca.cert.read_bytes(),
        require_client_auth=True,
    )
    node = serve(credentials=raw)
    transport = _transport(pki, node, "M01")
    try:
        with pytest.raises(NodeUnavailableError):
            transport.info(timeout=5)
    finally:
        transport.close()


def _self_signed(directory: Path, name: str) -> CertKeyPaths:
    """A certificate that looks like an auditor's but signs itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    paths = CertKeyPaths(directory / "self.pem", directory / "self.key")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_a_node_with_another_identity_is_named_in_plain_words(serve, pki) -> None:
    """The coordinator says which node answered instead of gRPC's C-core text."""
    from fedaudit.pki.tls import peer_certificate_names

    node = serve("M02")
    auditor = pki.auditors[REQUESTER]
    files = TlsFiles(auditor.cert, auditor.key, pki.ca.cert)
    transport = GrpcNodeTransport(
        "M01",
        f"127.0.0.1:{node.port}",
        requester=REQUESTER,
        credentials=channel_credentials(files),
        channel_options=pinned_channel_options("M01"),
        retries=0,
        peer_names=lambda address: peer_certificate_names(address, files),
    )
    try:
        with pytest.raises(NodeUnavailableError) as exc:
            transport.info(timeout=5)
    finally:
        transport.close()
    assert exc.value.message.startswith(
        f"the node at 127.0.0.1:{node.port} is not M01: its certificate names M02"
    )


def test_nothing_listening_is_said_in_plain_words(pki) -> None:
    """Connection refused reads as such, with the address and what to check."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    auditor = pki.auditors[REQUESTER]
    transport = GrpcNodeTransport(
        "M01",
        f"127.0.0.1:{port}",
        requester=REQUESTER,
        credentials=channel_credentials(TlsFiles(auditor.cert, auditor.key, pki.ca.cert)),
        channel_options=pinned_channel_options("M01"),
        retries=0,
    )
    try:
        with pytest.raises(NodeUnavailableError) as exc:
            transport.info(timeout=5)
    finally:
        transport.close()
    assert exc.value.message.startswith(f"nothing is listening at 127.0.0.1:{port}")
