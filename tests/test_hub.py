"""The hub as an attacker sees it, and the hub failing: identity end to end, revocation, restarts.

A curious or malicious hub holds a real federation certificate (its own, serverAuth)
and sees every frame. These tests run real hub servers (some with a servicer changed
the way an attacker would change it) and real dial-out nodes, and check that the hub
cannot answer for a node, replay or redirect a call or an answer, or ask a node as
anyone but an auditor who signed; that revoked certificates are refused at the hub and
at the node; and that a hub killed mid-audit gives a partial report, the nodes come
back, and the re-run with the same run id completes without charging twice.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedaudit.common.envelope import (
    AUDITOR_PREFIX,
    ENVELOPE_VERSION,
    NODE_PREFIX,
    ReplayGuard,
    metadata_entries,
    new_call_id,
    seal,
)
from fedaudit.coordinator.errors import CoordinatorError
from fedaudit.coordinator.planning.checks import planned_queries
from fedaudit.coordinator.planning.default_plan import default_plan_path
from fedaudit.coordinator.planning.plan import load_plan
from fedaudit.coordinator.running.audit import run_audit
from fedaudit.coordinator.running.hub_channel import HubAccess
from fedaudit.coordinator.running.transport import call_metadata
from fedaudit.hub.admission import Admission
from fedaudit.hub.relay import HubServicer, NodeSession
from fedaudit.node.dialout import Backoff
from fedaudit.node.privacy.policy import example_policy
from fedaudit.pki.authority import create_throwaway_pki
from fedaudit.pki.enrolment import revoke
from fedaudit.pki.identity import NodeIdentity
from fedaudit.synthetic.federation import generate_federation
from fedaudit.wire.v1 import hub_pb2 as hub_pb
from fedaudit.wire.v1 import hub_pb2_grpc as hub_grpc
from tests.conftest import FIXTURE_BUNDLE
from tests.hub_support import HUB_NAME, OTHER, REQUESTER, Federation, make_pki

CAPABILITIES = "/fedaudit.wire.v1.AuditNode/GetCapabilities"


@pytest.fixture(name="pki")
def _pki(tmp_path: Path) -> Any:
    """A PKI of this test alone (revocation tests change its CRL)."""
    return make_pki(tmp_path / "pki")


@pytest.fixture(name="fed")
def _fed(pki) -> Iterator[Federation]:
    fed = Federation("hub", pki)
    yield fed
    fed.close()


def _serve(servicer: HubServicer, pki: Any) -> tuple[grpc.Server, int]:
    """A hub server around `servicer` (an attacker's, in these tests)."""
    files = pki.nodes[HUB_NAME]
    server = grpc.server(futures.ThreadPoolExecutor(32))
    hub_grpc.add_HubServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(files.key.read_bytes(), files.cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _identity(pki: Any, name: str, *, auditor: bool = False) -> NodeIdentity:
    files = (pki.auditors if auditor else pki.nodes)[name]
    return NodeIdentity.load(files.cert, files.key, pki.ca.cert)


def _start_node(fed: Federation, tmp_path: Path, name: str = "M01", **kwargs: Any) -> Any:
    return fed.start(
        name, f"sqlite:///{tmp_path / (name + '.db')}", bundle=FIXTURE_BUNDLE, **kwargs
    )


# --- the hub cannot answer for a node ---------------------------------------------------------


class AnsweringHub(HubServicer):
    """A hub that answers calls itself, signing with a federation key it holds."""

    def __init__(self, admission: Admission, signer: NodeIdentity, node_pem: bytes) -> None:
        super().__init__(admission)
        self._signer = signer
        self._node_pem = node_pem

    def Certificate(self, request, context):
        return hub_pb.CertificateResponse(certificate_pem=self._node_pem)  # the real, public one

    def Call(self, request_iterator, context):
        first = next(request_iterator)
        frame = hub_pb.Frame.FromString(first.body)
        from fedaudit.common.envelope import digest
        from fedaudit.wire.v1 import node_pb2

        fake = node_pb2.Capabilities(municipality_code="M01", municipality_name="Forged")
        answer = hub_pb.Frame(
            call_id=frame.call_id,
            seq=0,
            messages=[fake.SerializeToString()],
            status=hub_pb.CallStatus(code=0),
            request_digest=digest(first.body),
        )
        yield seal(answer, NODE_PREFIX, self._signer.sign, self._signer.certificate_pem)


@pytest.mark.parametrize("signer", [HUB_NAME, "M02"])
def test_a_hub_cannot_answer_for_a_node(pki, fed, signer: str) -> None:
    """An answer signed by the hub's own key, or another node's, is refused by the auditor."""
    servicer = AnsweringHub(
        Admission(_identity(pki, HUB_NAME).ca),
        _identity(pki, signer),
        pki.nodes["M01"].cert.read_bytes(),
    )
    server, port = _serve(servicer, pki)
    try:
        fed.hub_port = port
        with pytest.raises(CoordinatorError, match="not signed by node M01"):
            fed.transport("M01", "").info(timeout=10)
    finally:
        server.stop(None)


class ReplayingHub(HubServicer):
    """A hub that relays the first call honestly and answers later ones with its frames."""

    def __init__(self, admission: Admission) -> None:
        super().__init__(admission)
        self.recorded: list[hub_pb.SignedFrame] = []

    def Call(self, request_iterator, context):
        if not self.recorded:
            for item in super().Call(request_iterator, context):
                self.recorded.append(item)
                yield item
            return
        next(request_iterator)
        yield from self.recorded


def test_a_hub_cannot_replay_a_node_answer_to_another_call(pki, fed, tmp_path) -> None:
    servicer = ReplayingHub(Admission(_identity(pki, HUB_NAME).ca))
    server, port = _serve(servicer, pki)
    try:
        fed.hub_port = port
        _start_node(fed, tmp_path)
        transport = fed.transport("M01", "")
        assert transport.info(timeout=10).municipality_code == "T01"
        assert servicer.recorded, "the first call went through the hub"
        with pytest.raises(CoordinatorError, match="bound to another call"):
            transport.info(timeout=10)
    finally:
        server.stop(None)


# --- the node sees the auditor, checked by the node itself --------------------------------------


class Trusting(Admission):
    """A hub that lets any caller through (the node must still refuse)."""

    def auditor(self, first: hub_pb.SignedFrame) -> str:
        return "whoever"


class MisroutingHub(HubServicer):
    """A hub that sends every call to M01, whatever node it names."""

    def session_for(self, node: str) -> NodeSession | None:
        return super().session_for("M01")


def _raw_call(port: int, frames: list[hub_pb.SignedFrame]) -> hub_pb.CallStatus:
    """Send signed frames through the hub as they are; the node's final status, unverified."""
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(_CA[0]),
        options=[("grpc.ssl_target_name_override", HUB_NAME)],
    )
    try:
        for signed in hub_grpc.HubStub(channel).Call(iter(frames), timeout=10):
            frame = hub_pb.Frame.FromString(signed.body)
            if frame.HasField("status"):
                return frame.status
    finally:
        channel.close()
    raise AssertionError("no final status")


_CA: list[bytes] = []
_NODE_PEM: list[bytes] = []


def _signed_call(
    signer: NodeIdentity, node: str = "M01", *, issued_at_ms: int | None = None
) -> hub_pb.SignedFrame:
    """A capabilities call, encrypted to M01's key (of the PKI in `_NODE_PEM`) and signed."""
    from cryptography import x509

    from fedaudit.common.envelope import TO_NODE, auditor_cipher
    from fedaudit.wire.v1 import node_pb2

    call_id = new_call_id()
    node_key = x509.load_pem_x509_certificate(_NODE_PEM[0]).public_key()
    auditor_key, cipher = auditor_cipher(node_key, call_id)
    header = hub_pb.CallHeader(
        envelope_version=ENVELOPE_VERSION,
        call_id=call_id,
        node=node,
        method=CAPABILITIES,
        issued_at_ms=issued_at_ms if issued_at_ms is not None else int(time.time() * 1000),
        timeout_seconds=10,
        metadata=metadata_entries(call_metadata(REQUESTER)),
        auditor_key=auditor_key,
    )
    request = node_pb2.CapabilitiesRequest().SerializeToString()
    frame = hub_pb.Frame(
        call_id=call_id,
        seq=0,
        header=header,
        messages=[cipher.seal(TO_NODE, 0, 0, request)],
        end=True,
    )
    return seal(frame, AUDITOR_PREFIX, signer.sign, signer.certificate_pem)


def test_the_node_refuses_calls_no_federation_auditor_signed(pki, fed, tmp_path) -> None:
    """Through a hub that admits anyone: the hub's key, a node's key, a foreign CA's auditor."""
    _CA[:] = [pki.ca.cert.read_bytes()]
    _NODE_PEM[:] = [pki.nodes["M01"].cert.read_bytes()]
    server, port = _serve(HubServicer(Trusting(_identity(pki, HUB_NAME).ca)), pki)
    foreign = create_throwaway_pki(tmp_path / "foreign", ["M01"], REQUESTER)
    impostors = {
        "the hub": _identity(pki, HUB_NAME),
        "another node": _identity(pki, "M02"),
        "a foreign auditor": NodeIdentity.load(
            foreign.auditors[REQUESTER].cert, foreign.auditors[REQUESTER].key, foreign.ca.cert
        ),
    }
    try:
        fed.hub_port = port
        node = _start_node(fed, tmp_path)
        for who, identity in impostors.items():
            status = _raw_call(port, [_signed_call(identity)])
            assert status.code == grpc.StatusCode.UNAUTHENTICATED.value[0], who
            assert "not signed by a federation auditor" in status.details, who
        genuine = _raw_call(port, [_signed_call(_identity(pki, REQUESTER, auditor=True))])
        assert genuine.code == 0
        assert {r.requester for r in node.service.query_log.rows()} == {REQUESTER}
    finally:
        server.stop(None)


def test_the_node_refuses_replayed_stale_and_misdirected_calls(pki, fed, tmp_path) -> None:
    _CA[:] = [pki.ca.cert.read_bytes()]
    _NODE_PEM[:] = [pki.nodes["M01"].cert.read_bytes()]
    server, port = _serve(MisroutingHub(Admission(_identity(pki, HUB_NAME).ca)), pki)
    auditor = _identity(pki, REQUESTER, auditor=True)
    try:
        fed.hub_port = port
        node = _start_node(fed, tmp_path)
        call = _signed_call(auditor)
        assert _raw_call(port, [call]).code == 0
        replayed = _raw_call(port, [call])
        assert replayed.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert "replay" in replayed.details
        stale = _raw_call(
            port, [_signed_call(auditor, issued_at_ms=int(time.time() * 1000) - 600_000)]
        )
        assert stale.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert "stale" in stale.details
        elsewhere = _raw_call(port, [_signed_call(auditor, node="M02")])
        assert elsewhere.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert "addressed to 'M02'" in elsewhere.details
        assert len(node.service.query_log.rows()) == 1, "only the genuine call reached the service"
    finally:
        server.stop(None)


def test_replay_guard_forgets_only_what_it_would_refuse_as_stale() -> None:
    now = [1_000_000.0]
    guard = ReplayGuard(60, clock=lambda: now[0])
    header = hub_pb.CallHeader(call_id=new_call_id(), issued_at_ms=int(now[0] * 1000))
    guard.admit(header)
    now[0] += 59
    with pytest.raises(Exception, match="replay"):
        guard.admit(header)
    now[0] += 200
    with pytest.raises(Exception, match="stale"):
        guard.admit(header)


# --- revocation ---------------------------------------------------------------------------------


def test_a_revoked_auditor_is_refused_at_the_hub(pki, fed, tmp_path) -> None:
    fed.start_hub()
    _start_node(fed, tmp_path)
    assert fed.transport("M01", auditor=OTHER).info(timeout=10)
    revoke(pki.directory, OTHER, role="auditor")
    with pytest.raises(CoordinatorError, match="revoked") as caught:
        fed.transport("M01", auditor=OTHER).info(timeout=10)
    assert "hub" in str(caught.value)
    assert fed.transport("M01").info(timeout=10), "the other auditor still works"


def test_a_revoked_auditor_is_refused_at_the_node_even_if_the_hub_lets_it_pass(
    pki, tmp_path
) -> None:
    fed = Federation("hub", pki, hub_crl=False)  # a hub that checks no CRL
    try:
        fed.start_hub()
        node = _start_node(fed, tmp_path)
        revoke(pki.directory, OTHER, role="auditor")
        with pytest.raises(CoordinatorError, match="revoked"):
            fed.transport("M01", auditor=OTHER).info(timeout=10)
        assert not node.service.query_log.rows(requester=OTHER)
    finally:
        fed.close()


def test_a_revoked_node_is_refused_at_the_hub(pki, fed, tmp_path) -> None:
    revoke(pki.directory, "M02", role="node")
    fed.start_hub()
    _start_node(fed, tmp_path, "M01")
    m02 = _start_node(fed, tmp_path, "M02", wait=False)
    assert not m02.handle.wait_connected(1.5)
    assert "revoked" in m02.handle.last_error
    assert fed.hub.servicer.connected() == ["M01"]


# --- reconnecting, and a hub killed mid-audit ----------------------------------------------------


def test_backoff_is_jittered_and_capped() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    rng = random.Random(1)
    waits = [[backoff.wait(attempt, rng) for _ in range(200)] for attempt in range(8)]
    for attempt, sample in enumerate(waits):
        assert min(sample) >= 0
        assert max(sample) <= min(4.0, 0.5 * 2**attempt)
        assert len(set(sample)) == len(sample), "jittered: no two nodes wait alike"
    assert max(waits[7]) > 3.0, "the cap, not the exponent, bounds late attempts"


@pytest.fixture(scope="module", name="bundles")
def _bundles(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("federation")
    return list(generate_federation(out, municipalities=3, candidates_per_municipality=300).bundles)


def test_hub_killed_mid_audit_gives_a_partial_report_and_the_rerun_charges_nothing_twice(
    pki, fed, bundles, tmp_path
) -> None:
    port = _free_port()
    hub = fed.start_hub_process(port)  # a real process, killed with SIGKILL below
    for bundle in bundles:
        fed.start(bundle.name, f"sqlite:///{tmp_path / bundle.name}.db", bundle=bundle, ring=False)
    plan = load_plan(default_plan_path()).with_nodes(fed.plan_nodes())
    per_node = math.fsum(q.spec.rho for q in planned_queries(plan))
    answers = []

    def kill_after_some(node: str, request_id: str, key: str, answer: Any) -> None:
        answers.append(node)
        if len(answers) == 8:
            hub.kill()  # the hub process dies: every stream breaks at once
            hub.wait()

    started = time.monotonic()
    first = run_audit(plan, fed.transports(), run_id="killed-1", on_answer=kill_after_some)
    assert time.monotonic() - started < 60, "a dead hub must not hang the audit"
    assert first["audit"]["status"] in ("partial", "failed")
    assert {n["status"] for n in first["coverage"]["nodes"]} - {"answered"}, first["coverage"]
    charged_first = {n["node"]: n["rho"] for n in first["privacy"]["nodes"]}
    assert 0 < sum(charged_first.values()) < per_node * len(bundles)

    fed.start_hub_process(port)  # the same port: the nodes find it again by themselves
    for node in fed.nodes.values():
        assert node.handle.wait_connected(30), node.handle.last_error
        assert node.handle.connections == 2
    second = run_audit(plan, fed.transports(), run_id="killed-1")
    assert second["audit"]["status"] == "complete"
    for node in second["privacy"]["nodes"]:
        name = node["node"]
        # An answer lost with the hub was charged at the node but never reported: the
        # re-run replays it free, so the two reports together show at most one charge.
        assert charged_first[name] + node["rho"] <= per_node + 1e-9, name
        service = fed.nodes[name].service
        spent = service.ledger.status(REQUESTER, service.clock()).requester_rho_spent
        assert spent == pytest.approx(per_node), f"{name} was charged twice for a query"


def test_calls_through_the_hub_survive_concurrency(pki, fed, tmp_path) -> None:
    """Many calls in flight to one node interleave on its one stream and each gets its answer."""
    fed.start_hub()
    _start_node(fed, tmp_path, policy=example_policy({REQUESTER: 2.0}))
    transports = [fed.transport("M01") for _ in range(4)]
    results: list[str] = []
    lock = threading.Lock()

    def ask(t: Any) -> None:
        for _ in range(10):
            code = t.info(timeout=10).municipality_code
            with lock:
                results.append(code)

    threads = [threading.Thread(target=ask, args=(t,)) for t in transports]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == ["T01"] * 40


def test_hub_access_needs_the_auditor_key(pki) -> None:
    files = pki.auditors[REQUESTER]
    access = HubAccess.load("127.0.0.1:1", HUB_NAME, files.cert, files.key, pki.ca.cert)
    assert access.identity.name == REQUESTER


@pytest.mark.slow
def test_demo_dial_out_runs_the_whole_audit_through_a_hub(tmp_path: Path) -> None:
    """`fedaudit demo --dial-out`: every node answers through the hub, ring and PSI included."""
    import json

    from fedaudit.cli.main import main

    assert (
        main(["demo", "--dial-out", "--out", str(tmp_path), "--quiet", "--candidates", "1000"]) == 0
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert {n["status"] for n in report["coverage"]["nodes"]} == {"answered"}
    assert report["audit"]["status"] == "complete"
    assert report["duplicates"]["status"] == "complete"
    assert report["reconciliation"]["status"] == "complete"


def test_schedule_run_through_the_hub(pki, fed, tmp_path: Path, capsys) -> None:
    """`schedule check` and `schedule run --once --hub` reach a dial-out node by name."""
    import json

    from fedaudit.cli.main import main
    from tests.test_schedule import PLAN_DOC

    fed.start_hub()
    _start_node(fed, tmp_path)
    plan = tmp_path / "yearly.yaml"
    doc = {
        **PLAN_DOC,
        "schedule": "0 0 1 1 *",
        "min_answering_nodes": 1,
        "nodes": [{"name": "M01"}],
    }
    plan.write_text(json.dumps(doc), encoding="utf-8")
    auditor = pki.auditors[REQUESTER]
    hub = [
        "--hub", f"127.0.0.1:{fed.hub_port}", "--hub-name", HUB_NAME, "--tls-cert",
        str(auditor.cert), "--tls-key", str(auditor.key), "--tls-ca", str(pki.ca.cert),
    ]  # fmt: skip
    assert main(["schedule", "check", str(plan), *hub]) == 0
    archive = tmp_path / "archive"
    assert main(["schedule", "run", str(plan), "--archive", str(archive), "--once", *hub]) == 0
    (run,) = list(archive.glob("*/*/report.json"))
    report = json.loads(run.read_text())
    assert [n["status"] for n in report["coverage"]["nodes"]] == ["answered"]
    assert fed.nodes["M01"].service.query_log.rows(requester=REQUESTER)
    fed.close()  # while the log still goes to this test's captured output


def test_the_auditor_refuses_answers_signed_by_a_revoked_node(pki, tmp_path) -> None:
    """A node revoked while connected to a hub without a CRL: its answers are refused anyway."""
    from cryptography import x509

    from fedaudit.coordinator.running.hub_channel import HubChannel
    from fedaudit.coordinator.running.transport import GrpcNodeTransport
    from fedaudit.pki.enrolment import load_crl

    fed = Federation("hub", pki, hub_crl=False)
    try:
        fed.start_hub()
        _start_node(fed, tmp_path)
        revoke(pki.directory, "M01", role="node")
        crl = load_crl(fed.crl_path, x509.load_pem_x509_certificate(pki.ca.cert.read_bytes()))
        files = pki.auditors[REQUESTER]
        access = HubAccess.load(
            f"127.0.0.1:{fed.hub_port}",
            HUB_NAME,
            files.cert,
            files.key,
            pki.ca.cert,
            revoked=crl.is_revoked,
        )
        transport = GrpcNodeTransport(
            "M01", "", requester=REQUESTER, retries=0, channel=HubChannel(access, "M01")
        )
        with pytest.raises(CoordinatorError, match="revoked"):
            transport.info(timeout=10)
        transport.close()
    finally:
        fed.close()


class SpyingHub(HubServicer):
    """A hub that keeps a copy of every frame it relays."""

    def __init__(self, admission: Admission) -> None:
        super().__init__(admission)
        self.seen: list[bytes] = []

    def Call(self, request_iterator, context):
        def recorded():
            for signed in request_iterator:
                self.seen.append(signed.body)
                yield signed

        for item in super().Call(recorded(), context):
            self.seen.append(item.body)
            yield item


def test_the_hub_sees_no_query_and_no_answer_in_the_clear(pki, fed, tmp_path) -> None:
    """Queries and answers are encrypted between auditor and node: the relay sees neither."""
    servicer = SpyingHub(Admission(_identity(pki, HUB_NAME).ca))
    server, port = _serve(servicer, pki)
    try:
        fed.hub_port = port
        _start_node(fed, tmp_path)
        transport = fed.transport("M01", "")
        info = transport.info(timeout=10)
        spec = planned_queries(load_plan(default_plan_path()))[0].spec
        preflight = transport.preflight(spec, "spy-1", timeout=10)
        answer, _ = transport.query(spec, "spy-1", timeout=10)
    finally:
        server.stop(None)
    assert info.municipality_name == "Testhausen"
    assert preflight.cell_count > 0
    assert answer.cells
    relayed = b"".join(servicer.seen)
    assert len(servicer.seen) >= 6, "three calls, each a request frame and an answer frame"
    for clear in (b"Testhausen", spec.template.encode(), info.data_version.encode()):
        assert clear not in relayed, clear


def test_an_anonymous_connection_that_never_says_hello_is_dropped(pki, fed, monkeypatch) -> None:
    """Before its hello a peer is nobody: it may not hold a hub worker for long."""
    from fedaudit.hub import relay

    monkeypatch.setattr(relay, "FIRST_FRAME_SECONDS", 0.5)
    fed.start_hub()
    silent = threading.Event()

    def nothing() -> Iterator[hub_pb.NodeToHub]:
        silent.wait(30)
        return
        yield

    channel = grpc.secure_channel(
        f"127.0.0.1:{fed.hub_port}",
        grpc.ssl_channel_credentials(pki.ca.cert.read_bytes()),
        options=[("grpc.ssl_target_name_override", HUB_NAME)],
    )
    started = time.monotonic()
    try:
        stream = hub_grpc.HubStub(channel).Connect(nothing(), timeout=20)
        assert next(stream).WhichOneof("kind") == "challenge"
        with pytest.raises(grpc.RpcError) as ended:
            next(stream)
        assert ended.value.code() == grpc.StatusCode.CANCELLED
        assert time.monotonic() - started < 5
    finally:
        silent.set()
        channel.close()


@pytest.mark.slow
def test_hub_killed_before_the_ring_fails_the_ring_cleanly(pki, fed, bundles, tmp_path) -> None:
    """The queries are answered, then the hub dies: the ring and reconciliation report the
    failure, the audit ends promptly, and the re-run completes them without charging twice."""
    policy = example_policy({REQUESTER: 5.0}, max_rho_per_request=1.0, reconciliation=True)
    port = _free_port()
    hub = fed.start_hub_process(port)
    for bundle in bundles:
        fed.start(
            bundle.name, f"sqlite:///{tmp_path / bundle.name}.db", policy=policy, bundle=bundle
        )
    plan = load_plan(default_plan_path()).with_nodes(fed.plan_nodes())
    total = len(bundles) * len(planned_queries(plan))
    assert plan.checks.duplicates is not None
    assert plan.checks.revocation is not None
    ring_and_psi = (
        plan.checks.duplicates.budget.rho
        + policy.ring.padding_rho
        + plan.checks.revocation.budget.rho
    )
    answers = []

    def kill_after_the_queries(*_: Any) -> None:
        answers.append(1)
        if len(answers) == total:
            hub.kill()
            hub.wait()

    started = time.monotonic()
    first = run_audit(
        plan,
        fed.transports(),
        run_id="ring-killed-1",
        on_answer=kill_after_the_queries,
        dedup_transports=fed.dedup_transports(),
        reconcile_transports=fed.reconcile_transports(),
    )
    assert time.monotonic() - started < 120, "a dead hub must not hang the ring"
    assert {n["status"] for n in first["coverage"]["nodes"]} == {"answered"}
    assert first["duplicates"]["status"] != "complete"
    assert first["audit"]["status"] != "complete"

    fed.start_hub_process(port)
    for node in fed.nodes.values():
        assert node.handle.wait_connected(30), node.handle.last_error
    spent_before = {
        n: s.service.ledger.status(REQUESTER, s.service.clock()).requester_rho_spent
        for n, s in fed.nodes.items()
    }
    second = run_audit(
        plan,
        fed.transports(),
        run_id="ring-killed-1",
        dedup_transports=fed.dedup_transports(),
        reconcile_transports=fed.reconcile_transports(),
    )
    assert second["duplicates"]["status"] == "complete", second["duplicates"]
    for node in second["privacy"]["nodes"]:
        assert node["replayed"] == len(planned_queries(plan)), "the queries are replayed free"
    for name, started_node in fed.nodes.items():
        service = started_node.service
        spent = service.ledger.status(REQUESTER, service.clock()).requester_rho_spent
        # Only the ring (its rho and the padding of its batch) and reconciliation were
        # charged again (a failed ring run whose batch was released keeps its charge,
        # docs/dedup.md): the queries were not.
        assert spent - spent_before[name] <= ring_and_psi + 1e-9, name
