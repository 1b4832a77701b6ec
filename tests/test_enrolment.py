"""Enrolment without shipping keys (CSR -> CA) and revocation enforced by real nodes over mTLS."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import CertificateSigningRequestBuilder, Name, NameAttribute
from cryptography.x509.oid import NameOID

from fedaudit.coordinator.errors import NodeUnavailableError
from fedaudit.coordinator.running.transport import GrpcNodeTransport
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.rpc.revocation import RevocationGuard
from fedaudit.node.server import start_node_server
from fedaudit.node.store.db import make_engine
from fedaudit.pki.authority import PkiError, create_throwaway_pki, init_ca
from fedaudit.pki.enrolment import create_request, publish_crl, revoke, sign_request
from fedaudit.pki.tls import (
    TlsFiles,
    channel_credentials,
    pinned_channel_options,
    server_credentials,
)

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
REQUESTER = "oversight-board"


@pytest.fixture(name="ca")
def _ca(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    init_ca(directory, days=30)
    return directory


def _enrol(ca: Path, where: Path, name: str, role: str, hosts: tuple[str, ...] = ()) -> TlsFiles:
    paths = create_request(where, name, hosts=hosts)
    cert = sign_request(ca, paths.request, role=role, days=10)
    return TlsFiles(cert=cert, key=paths.key, ca=ca / "ca.pem")


def _node(tmp_path: Path, files: TlsFiles, guard: RevocationGuard | None = None):
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    import_bundle(engine, FIXTURE_BUNDLE)
    service = NodeService(engine, example_policy({REQUESTER: 2.0, "second-auditor": 1.0}))
    return start_node_server(
        service,
        server_credentials=server_credentials(files),
        interceptors=[guard] if guard else [],
    )


def _ask(port: int, name: str, auditor: TlsFiles, requester: str = REQUESTER):
    transport = GrpcNodeTransport(
        name,
        f"127.0.0.1:{port}",
        requester=requester,
        credentials=channel_credentials(auditor),
        channel_options=pinned_channel_options(name),
    )
    try:
        return transport.info(timeout=10)
    finally:
        transport.close()


def test_keys_are_made_where_they_are_used_and_never_at_the_ca(ca: Path, tmp_path: Path) -> None:
    node = _enrol(ca, tmp_path / "node-host", "M07", "node", hosts=("127.0.0.1",))
    auditor = _enrol(ca, tmp_path / "board", REQUESTER, "auditor")
    assert [p.name for p in ca.rglob("*.key")] == ["ca.key"]  # no key of theirs at the CA
    assert os.stat(node.key).st_mode & 0o777 == 0o600
    running = _node(tmp_path, node)
    try:
        assert _ask(running.port, "M07", auditor).municipality_code
    finally:
        running.stop(grace=None)


def test_the_ca_decides_the_role_and_checks_the_request(ca: Path, tmp_path: Path) -> None:
    paths = create_request(tmp_path / "x", "M08", hosts=("m08.example",))
    with pytest.raises(PkiError, match="carries no hosts"):
        sign_request(ca, paths.request, role="auditor")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        CertificateSigningRequestBuilder()
        .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, "M09")]))
        .sign(rsa_key, hashes.SHA256())
    )
    rsa_path = tmp_path / "rsa.csr.pem"
    rsa_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(PkiError, match="EC P-256"):
        sign_request(ca, rsa_path, role="node")
    bad_name = create_request(tmp_path / "y", "M 10")
    with pytest.raises(PkiError, match="node name"):
        sign_request(ca, bad_name.request, role="node")
    # a second node may not claim the first node's name as one of its hosts
    sign_request(ca, paths.request, role="node", days=10)
    thief = create_request(tmp_path / "z", "M11", hosts=("M08",))
    with pytest.raises(PkiError, match="name of another node"):
        sign_request(ca, thief.request, role="node", days=10)


def test_a_revoked_auditor_is_refused_at_once_and_others_are_not(ca: Path, tmp_path: Path) -> None:
    node = _enrol(ca, tmp_path / "node-host", "M07", "node", hosts=("127.0.0.1",))
    board = _enrol(ca, tmp_path / "board", REQUESTER, "auditor")
    second = _enrol(ca, tmp_path / "second", "second-auditor", "auditor")
    crl = publish_crl(ca)
    guard = RevocationGuard(crl, ca / "ca.pem")
    running = _node(tmp_path, node, guard)
    try:
        assert _ask(running.port, "M07", second, "second-auditor").municipality_code
        time.sleep(0.01)  # a new mtime for the re-published file
        revoke(ca, "second-auditor", role="auditor")
        with pytest.raises(NodeUnavailableError, match="revoked"):
            _ask(running.port, "M07", second, "second-auditor")
        assert _ask(running.port, "M07", board).municipality_code
    finally:
        running.stop(grace=None)


def test_an_untrusted_or_stale_crl_fails_closed(ca: Path, tmp_path: Path) -> None:
    other = create_throwaway_pki(tmp_path / "other", [], REQUESTER)
    foreign = publish_crl(other.directory)
    with pytest.raises(PkiError, match="not signed by the federation CA"):
        RevocationGuard(foreign, ca / "ca.pem")
    node = _enrol(ca, tmp_path / "node-host", "M07", "node", hosts=("127.0.0.1",))
    board = _enrol(ca, tmp_path / "board", REQUESTER, "auditor")
    later = [dt.datetime.now(dt.UTC)]
    guard = RevocationGuard(publish_crl(ca), ca / "ca.pem", clock=lambda: later[0])
    running = _node(tmp_path, node, guard)
    try:
        later[0] += dt.timedelta(days=31)
        with pytest.raises(NodeUnavailableError, match="cannot check certificate revocation"):
            _ask(running.port, "M07", board)
    finally:
        running.stop(grace=None)


def test_audit_run_does_not_contact_a_node_whose_certificate_was_revoked(
    ca: Path, tmp_path: Path
) -> None:
    import json

    import yaml

    from fedaudit.cli.main import main

    nodes = {}
    for name in ("M07", "M08"):
        files = _enrol(ca, tmp_path / name, name, "node", hosts=("127.0.0.1",))
        (tmp_path / name / "db").mkdir()
        nodes[name] = _node(tmp_path / name / "db", files)
    board = _enrol(ca, tmp_path / "board", REQUESTER, "auditor")
    revoke(ca, "M08", role="node")
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        yaml.safe_dump(
            {
                "name": "crl-check",
                "requester": REQUESTER,
                "confidence": 0.95,
                "min_answering_nodes": 1,
                "nodes": [{"name": n, "address": f"127.0.0.1:{r.port}"} for n, r in nodes.items()],
                "checks": {"pass_rates": {"rho": 0.1, "tolerance": 0.05}},
            }
        )
    )
    args = ["audit", "run", str(plan), "--out", str(tmp_path / "out"), "--quiet"]
    tls = ["--tls-cert", str(board.cert), "--tls-key", str(board.key), "--tls-ca", str(board.ca)]
    try:
        main([*args, *tls, "--tls-crl", str(ca / "crl.pem")])
    finally:
        for running in nodes.values():
            running.stop(grace=None)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    coverage = {n["node"]: n for n in report["coverage"]["nodes"]}
    assert coverage["M07"]["status"] == "answered"
    assert coverage["M08"]["status"] != "answered"
    assert "revoked by the federation CA" in json.dumps(coverage["M08"])
    assert report["audit"]["status"] == "partial"
