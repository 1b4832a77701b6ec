"""Two auditors over mTLS at one node: neither can block, read or spend the other's budget.

Regression tests for the adversarial review's attacks 1 and 2 (issue 10): a requester
pre-claiming the oversight board's deterministic request ids, a requester learning
from preflight (and getting for free) what another asked, and a budget status that
showed other requesters' spending. Real nodes, real certificates, real gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fedaudit.coordinator.planning.checks import planned_queries
from fedaudit.coordinator.planning.default_plan import default_plan_path
from fedaudit.coordinator.planning.plan import load_plan
from fedaudit.coordinator.running.audit import request_id_for, run_audit
from fedaudit.coordinator.running.transport import GrpcNodeTransport
from fedaudit.node.domain import QuerySpec
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.server import RunningNode, start_node_server
from fedaudit.node.store.db import make_engine
from fedaudit.pki.authority import PkiPaths, create_throwaway_pki, issue_auditor_certificate
from fedaudit.pki.tls import (
    TlsFiles,
    channel_credentials,
    pinned_channel_options,
    server_credentials,
)

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
BOARD = "oversight-board"
OTHER = "other-auditor"
POLICY = example_policy({BOARD: 2.0, OTHER: 1.0}, node_rho_total=6.0, max_rho_per_request=1.0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    """Node M01 and two auditor certificates, both named in the node's policy."""
    paths = create_throwaway_pki(tmp_path_factory.mktemp("pki"), ["M01"], BOARD)
    other = issue_auditor_certificate(paths.directory, OTHER, days=2)
    return PkiPaths(paths.directory, paths.ca, paths.nodes, {**paths.auditors, OTHER: other})


@pytest.fixture
def node(pki: PkiPaths, tmp_path: Path) -> Iterator[RunningNode]:
    engine = make_engine(str(tmp_path / "node.db"))
    import_bundle(engine, FIXTURE_BUNDLE)
    cert = pki.nodes["M01"]
    running = start_node_server(
        NodeService(engine, POLICY),
        host="127.0.0.1",
        port=0,
        server_credentials=server_credentials(TlsFiles(cert.cert, cert.key, pki.ca.cert)),
    )
    yield running
    running.stop(grace=None)
    engine.dispose()


@pytest.fixture
def connect(pki: PkiPaths, node: RunningNode) -> Iterator[Callable[[str], GrpcNodeTransport]]:
    """A transport to M01 that authenticates with the named auditor's certificate."""
    opened: list[GrpcNodeTransport] = []

    def open_as(auditor: str) -> GrpcNodeTransport:
        files = pki.auditors[auditor]
        transport = GrpcNodeTransport(
            "M01",
            f"127.0.0.1:{node.port}",
            # The header claims the board; only the certificate counts.
            requester=BOARD,
            credentials=channel_credentials(TlsFiles(files.cert, files.key, pki.ca.cert)),
            channel_options=pinned_channel_options("M01"),
            retries=0,
        )
        opened.append(transport)
        return transport

    yield open_as
    for transport in opened:
        transport.close()


def test_a_squatter_cannot_block_the_boards_audit(node, connect) -> None:
    """Attack 1: another requester pre-claims every request id the board's run will use.

    Before, the board's audit got a refusal per query ("already used for a different
    query"); now ids are per requester and the board's audit is answered in full.
    """
    plan = replace(load_plan(default_plan_path()), min_answering_nodes=1)
    plan = plan.with_nodes({"M01": f"127.0.0.1:{node.port}"})
    run_id = "default-2026-12-07"
    squatter = connect(OTHER)
    queries = planned_queries(plan)
    for q in queries:
        cheap = QuerySpec(q.spec.template, rho=0.001)
        answer, _ = squatter.query(cheap, request_id_for(run_id, "M01", q.key), timeout=10)
        assert not answer.replayed

    report = run_audit(plan, {"M01": connect(BOARD)}, run_id=run_id)
    (coverage,) = report["coverage"]["nodes"]
    assert coverage["status"] == "answered", coverage
    assert [q["status"] for q in coverage["queries"]] == ["answered"] * len(queries)
    assert not any(q["replayed"] for q in coverage["queries"])
    assert report["privacy"]["nodes"][0]["queries"] == len(queries)
    # The board paid for its own answers; the squatter's stayed its own.
    ledger = node.service.ledger
    for q in queries:
        rid = request_id_for(run_id, "M01", q.key)
        mine = ledger.find_by_request_id(rid, requester=BOARD)
        theirs = ledger.find_by_request_id(rid, requester=OTHER)
        assert mine is not None
        assert theirs is not None
        assert mine.id != theirs.id
        assert mine.query_hash == q.spec.query_hash()


def test_preflight_and_replay_show_only_the_callers_own_history(node, connect) -> None:
    """Attack 2: B learned from preflight that A asked a query, then got A's answer free."""
    board, other = connect(BOARD), connect(OTHER)
    spec = QuerySpec("certificates_issued", group_by=("isco_code",), rho=0.05)
    answer_a, _ = board.query(spec, "a-1", timeout=10)
    assert board.preflight(spec, "a-1", timeout=10).replay  # the board's own history
    assert board.preflight(spec, "a-2", timeout=10).replay  # the identical query, replayed

    for rid in ("a-1", "b-1"):
        pre = other.preflight(spec, rid, timeout=10)
        assert not pre.replay
        assert pre.charge.rho == pytest.approx(0.05)
    answer_b, budget_b = other.query(spec, "a-1", timeout=10)
    assert not answer_b.replayed
    assert answer_b.charge.rho == pytest.approx(0.05)
    assert budget_b is not None
    assert budget_b.requester_rho_spent == pytest.approx(0.05)
    assert node.service.ledger.status(BOARD, node.service.clock()).requester_rho_spent == (
        pytest.approx(0.05)
    )
    # A's id still replays A's answer for A, untouched by B's use of the same id.
    again, _ = board.query(spec, "a-1", timeout=10)
    assert again.replayed
    assert again.cells == answer_a.cells


def test_budget_status_does_not_show_other_requesters_spending(node, connect) -> None:
    """Attack 2b: `node_rho_remaining` moved with everyone's spending; now only the caller's."""
    board, other = connect(BOARD), connect(OTHER)
    before = other.info(timeout=10).budget
    assert before.node_rho_cap == pytest.approx(2.0)  # its share of the node's 6.0
    for i in range(3):
        board.query(QuerySpec("assessment_results", rho=0.25 + i / 100), f"spend-{i}", timeout=10)
    after = other.info(timeout=10).budget
    assert after == before
    board_status = board.info(timeout=10).budget
    assert board_status.node_rho_cap == pytest.approx(4.0)
    assert board_status.node_rho_remaining == pytest.approx(4.0 - 0.78)
    other.query(QuerySpec("assessment_results", rho=0.1), "mine", timeout=10)
    assert other.info(timeout=10).budget.node_rho_remaining == pytest.approx(1.9)
