"""Revocation reconciliation between real nodes over gRPC with mTLS, as a curious relay sees it."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedaudit.common import psi
from fedaudit.coordinator.errors import NodeRefusedError
from fedaudit.coordinator.ring.reconcile import GrpcReconcileTransport, run_reconciliation
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.ring.reconcile import ReconcileService, query_statement
from fedaudit.node.ring.reconcile_store import stored_matches
from fedaudit.node.server import RunningNode, start_node_server
from fedaudit.node.store.db import make_engine
from fedaudit.pki.authority import create_throwaway_pki
from fedaudit.pki.identity import NodeIdentity
from fedaudit.pki.tls import (
    TlsFiles,
    channel_credentials,
    pinned_channel_options,
    server_credentials,
)
from fedaudit.synthetic.federation import generate_federation
from fedaudit.wire.v1 import reconcile_pb2 as pb
from tests.reconcile_support import add_reciprocity, expected_matches

REQUESTER = "oversight-board"


@pytest.fixture(scope="module", name="bundles")
def _bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    fed = generate_federation(
        tmp_path_factory.mktemp("fed"),
        seed=9,
        municipalities=3,
        candidates_per_municipality=300,
        today=dt.date(2026, 3, 1),
    )
    bundles = dict(zip(fed.municipalities, fed.bundles, strict=True))
    add_reciprocity(bundles, per_pair=40, seed=2)
    return bundles


@pytest.fixture(scope="module", name="pki")
def _pki(tmp_path_factory: pytest.TempPathFactory, bundles: dict[str, Path]):
    return create_throwaway_pki(tmp_path_factory.mktemp("pki"), list(bundles), REQUESTER)


@pytest.fixture(name="nodes")
def _nodes(
    tmp_path: Path, bundles: dict[str, Path], pki, request: pytest.FixtureRequest
) -> Iterator[dict[str, tuple[RunningNode, ReconcileService]]]:
    closed = getattr(request, "param", ())  # nodes whose policy does not opt in
    started: dict[str, tuple[RunningNode, ReconcileService]] = {}
    for code, bundle in bundles.items():
        engine = make_engine(f"sqlite:///{tmp_path / code}.db")
        import_bundle(engine, bundle)
        policy = example_policy({REQUESTER: 2.0}, reconciliation=code not in closed)
        service = NodeService(engine, policy)
        paths = pki.nodes[code]
        reconcile = ReconcileService(
            engine,
            policy,
            identity=NodeIdentity.load(paths.cert, paths.key, pki.ca.cert),
            ledger=service.ledger,
        )
        node = start_node_server(
            service,
            server_credentials=server_credentials(TlsFiles(paths.cert, paths.key, pki.ca.cert)),
            reconcile=reconcile,
        )
        started[code] = (node, reconcile)
    yield started
    for node, _ in started.values():
        node.stop(grace=None)


def _transports(nodes, pki) -> dict[str, GrpcReconcileTransport]:
    auditor = pki.auditors[REQUESTER]
    credentials = channel_credentials(TlsFiles(auditor.cert, auditor.key, pki.ca.cert))
    return {
        code: GrpcReconcileTransport(
            code,
            f"127.0.0.1:{node.port}",
            requester=REQUESTER,
            credentials=credentials,
            channel_options=pinned_channel_options(code),
        )
        for code, (node, _) in nodes.items()
    }


def test_relayed_run_gives_exact_lists_and_dp_counts_only(nodes, pki, bundles) -> None:
    transports = _transports(nodes, pki)
    outcome = run_reconciliation(transports, "grpc-run", rho=0.2, confidence=0.95)
    assert outcome.status == "complete"
    assert set(outcome.counts) == set(bundles)
    expected = expected_matches(bundles)
    for code, (_, service) in nodes.items():
        listed = {
            (m.certificate_id, m.origin_municipality, m.revoked_on.isoformat())
            for m in stored_matches(service._engine, "grpc-run")
        }
        assert listed == expected[code]
    for t in transports.values():
        t.close()


@pytest.mark.parametrize("nodes", [("M02",)], indirect=True)
def test_a_node_that_does_not_opt_in_is_skipped_with_its_reason(nodes, pki) -> None:
    outcome = run_reconciliation(_transports(nodes, pki), "closed-run", rho=0.2, confidence=0.95)
    assert outcome.status == "partial"
    reasons = {(p["recogniser"], p["origin"]): p["reason"] for p in outcome.skipped_pairs}
    assert "does not share its revocations" in reasons[("M01", "M02")]
    assert "does not receive" in reasons[("M02", "M01")]
    assert "M02" not in outcome.counts


def test_the_relay_cannot_ask_an_origin_on_its_own(nodes, pki) -> None:
    """The membership-oracle attack: the coordinator blinds guessed numbers itself."""
    transports = _transports(nodes, pki)
    guesses = psi.blind_references("oracle", "M01", ["M01-2021-00001", "M01-2021-00002"])
    auditor = pki.auditors[REQUESTER]
    auditor_key = NodeIdentity.load(auditor.cert, auditor.key, pki.ca.cert)  # an auditor's key
    forged = pb.ReconcileBatch(
        run_id="oracle",
        sender="M02",
        origin="M01",
        points=guesses.points,
        certificate_pem=auditor_key.certificate_pem,
        signature=auditor_key.sign(query_statement("oracle", "M02", "M01", guesses.points)),
    )
    with pytest.raises(NodeRefusedError, match="certificate") as exc:
        transports["M01"].answer(forged, timeout=10)
    assert exc.value.reason == "INVALID_PARAMETERS"
    # replaying M02's genuine batch under another run is refused too: the signature binds the run
    genuine = transports["M02"].ask("real-run", "M01", timeout=10)
    replayed = pb.ReconcileBatch()
    replayed.CopyFrom(genuine)
    replayed.run_id = "oracle-2"
    with pytest.raises(NodeRefusedError, match="does not verify"):
        transports["M01"].answer(replayed, timeout=10)


def test_origin_logs_and_wire_carry_no_certificate_number(
    nodes, pki, bundles, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    transports = _transports(nodes, pki)
    numbers = set()
    for bundle in bundles.values():
        for line in (bundle / "certificates.csv").read_text().splitlines()[1:]:
            fields = line.split(",")
            numbers.update(f for f in (fields[1], fields[7]) if f)
    with caplog.at_level(logging.DEBUG):
        batch = transports["M02"].ask("wire-run", "M01", timeout=10)
        answer = transports["M01"].answer(batch, timeout=10)
        transports["M02"].resolve(answer, timeout=10)
        released = transports["M02"].release("wire-run", 0.2, 0.95, timeout=10)
    wire = b"".join(m.SerializeToString() for m in (batch, answer, released))
    for number in numbers:
        for form in (number, psi.normalise_certificate_no(number)):
            assert form.encode() not in wire
            assert hashlib.sha256(form.encode()).digest() not in wire
        assert psi.reference_point("wire-run", "M01", number) not in wire
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "reconcile.answered" in logged  # the node did log the exchange
    assert not [n for n in numbers if n in logged]


def test_insecure_node_takes_no_part(tmp_path: Path, bundles) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    import_bundle(engine, bundles["M01"])
    policy = example_policy({REQUESTER: 2.0}, reconciliation=True)
    node = start_node_server(
        NodeService(engine, policy), reconcile=ReconcileService(engine, policy, identity=None)
    )
    try:
        transport = GrpcReconcileTransport("M01", f"127.0.0.1:{node.port}", requester=REQUESTER)
        with pytest.raises(NodeRefusedError, match="no federation certificate"):
            transport.ask("r", "M02", timeout=10)
        transport.close()
    finally:
        node.stop(grace=None)


def test_grpc_status_carries_the_reason(nodes, pki) -> None:
    transports = _transports(nodes, pki)
    with pytest.raises(NodeRefusedError) as exc:
        transports["M01"].ask("self-run", "M01", timeout=10)
    assert exc.value.reason == "INVALID_PARAMETERS"
    assert isinstance(exc.value.__cause__, grpc.RpcError)
