"""Two auditors over mTLS at one node: neither can block, read or spend the other's budget.

Regression tests for the adversarial review's attacks 1 and 2 (issue 10): a requester
pre-claiming the oversight board's deterministic request ids, a requester learning
from preflight (and getting for free) what another asked, and a budget status that
showed other requesters' spending. Real nodes, real certificates, real gRPC.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedaudit.coordinator.errors import NodeRefusedError
from fedaudit.coordinator.planning.checks import planned_queries
from fedaudit.coordinator.planning.default_plan import default_plan_path
from fedaudit.coordinator.planning.plan import load_plan
from fedaudit.coordinator.running.audit import request_id_for, run_audit
from fedaudit.node.domain import Mechanism, QuerySpec

BOARD, OTHER = "oversight-board", "other-auditor"  # conftest's MTLS_AUDITORS


def test_a_squatter_cannot_block_the_boards_audit(mtls_node, connect) -> None:
    """Attack 1: another requester pre-claims every request id the board's run will use.

    Before, the board's audit got a refusal per query ("already used for a different
    query"); now ids are per requester and the board's audit is answered in full.
    """
    plan = replace(load_plan(default_plan_path()), min_answering_nodes=1)
    plan = plan.with_nodes({"M01": f"127.0.0.1:{mtls_node.port}"})
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
    ledger = mtls_node.service.ledger
    for q in queries:
        rid = request_id_for(run_id, "M01", q.key)
        mine = ledger.find_by_request_id(rid, requester=BOARD)
        theirs = ledger.find_by_request_id(rid, requester=OTHER)
        assert mine is not None
        assert theirs is not None
        assert mine.id != theirs.id
        assert mine.query_hash != theirs.query_hash  # each has its own question


def test_preflight_and_replay_show_only_the_callers_own_history(mtls_node, connect) -> None:
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
    assert mtls_node.service.ledger.status(
        BOARD, mtls_node.service.clock()
    ).requester_rho_spent == (pytest.approx(0.05))
    # A's id still replays A's answer for A, untouched by B's use of the same id.
    again, _ = board.query(spec, "a-1", timeout=10)
    assert again.replayed
    assert again.cells == answer_a.cells


def test_budget_status_does_not_show_other_requesters_spending(mtls_node, connect) -> None:
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


@pytest.mark.parametrize(
    "spec",
    [
        QuerySpec("assessment_results", rho=1e-6),
        QuerySpec("assessment_results", rho=0.000999),
        QuerySpec("assessment_results", mechanism=Mechanism.DISCRETE_LAPLACE, epsilon=0.04),
    ],
)
def test_near_free_probes_are_refused_as_invalid(mtls_node, connect, spec) -> None:
    """The squatter's 1e-6 rho queries: below the policy's least charge, refused, nothing spent."""
    other = connect(OTHER)
    for call in (other.preflight, other.query):
        with pytest.raises(NodeRefusedError) as refused:
            call(spec, "probe-1", timeout=10)
        assert refused.value.reason == "INVALID_PARAMETERS"
        assert "budget.min_rho_per_query" in refused.value.message
    status = mtls_node.service.ledger.status(OTHER, mtls_node.service.clock())
    assert status.requester_rho_spent == 0.0
    assert mtls_node.service.ledger.find_by_request_id("probe-1", requester=OTHER) is None
    # At the minimum it is a query like any other.
    answer, _ = other.query(QuerySpec("assessment_results", rho=0.001), "at-min", timeout=10)
    assert answer.charge.rho == pytest.approx(0.001)
