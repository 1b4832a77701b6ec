"""Audits over real nodes in both modes (direct, and dialling out to a hub), SQLite and PostgreSQL.

The same tests, the same plan and the same coverage: a node that is not there (down
directly, not connected to the hub), a node without budget, replay of a run id at no
charge, too few nodes, the blinding ring and revocation reconciliation. Only how the
coordinator reaches a node differs (by address, or by name through the hub).
"""

from __future__ import annotations

import math
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from fedaudit.audit_reports.render import validate_report
from fedaudit.coordinator.planning.checks import planned_queries
from fedaudit.coordinator.planning.default_plan import default_plan_path
from fedaudit.coordinator.planning.plan import AuditPlan, load_plan
from fedaudit.coordinator.running.audit import run_audit
from fedaudit.node.privacy.policy import example_policy
from fedaudit.synthetic.federation import generate_federation
from tests.hub_support import (  # noqa: F401 - fixtures
    OTHER,
    REQUESTER,
    Federation,
    _backend,
    _federation,
    _federation_pki,
    _mode,
)


@pytest.fixture(scope="module", name="small_federation")
def _small_federation(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("federation")
    return list(generate_federation(out, municipalities=4, candidates_per_municipality=300).bundles)


def _plan(nodes: dict[str, str], **changes: object) -> AuditPlan:
    plan = load_plan(default_plan_path()).with_nodes(nodes)
    return replace(plan, **changes) if changes else plan


def _start(fed: Federation, new_db, bundles: list[Path], policies=None) -> dict[str, str]:
    for bundle in bundles:
        policy = (policies or {}).get(bundle.name)
        fed.start(bundle.name, new_db(bundle.name), policy=policy, bundle=bundle, ring=False)
    return fed.plan_nodes()


def _absent(fed: Federation) -> str:
    """Where a node that is not there is addressed: a closed port, or a name not connected."""
    if fed.mode == "hub":
        return ""  # named in the plan, never connected
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_audit_with_a_node_absent_is_partial_and_says_so(
    backend, federation, small_federation
) -> None:
    """An absent node is listed as unavailable; the others are evaluated; the report validates."""
    nodes = _start(federation, backend, small_federation[:3])
    nodes["M04"] = _absent(federation)
    report = run_audit(
        _plan(nodes, deadline_seconds=10.0),
        {n: federation.transport(n, a) for n, a in nodes.items()},
        run_id="down-1",
    )
    validate_report(report)
    status = {n["node"]: n["status"] for n in report["coverage"]["nodes"]}
    assert status == {"M01": "answered", "M02": "answered", "M03": "answered", "M04": "unavailable"}
    assert report["audit"]["status"] == "partial"
    assert "M04" in report["audit"]["status_reason"]
    if federation.mode == "hub":
        reason = next(n for n in report["coverage"]["nodes"] if n["node"] == "M04")
        assert "not connected to the hub" in str(reason)
    assert {n["node"]: n["rho"] for n in report["privacy"]["nodes"]}["M04"] == 0


def test_a_node_without_budget_is_refused_before_anything_is_charged(
    backend, federation, small_federation
) -> None:
    """Preflight shows the audit does not fit; the node is refused in coverage and charged nothing."""
    poor = example_policy({REQUESTER: 0.1}, max_rho_per_request=0.1)
    nodes = _start(federation, backend, small_federation[:4], policies={"M04": poor})
    report = run_audit(_plan(nodes), federation.transports(), run_id="poor-1")
    validate_report(report)
    m04 = next(n for n in report["coverage"]["nodes"] if n["node"] == "M04")
    assert m04["status"] == "refused"
    assert m04["reason"] == "BUDGET_EXHAUSTED"
    privacy = {n["node"]: n for n in report["privacy"]["nodes"]}
    assert privacy["M04"]["rho"] == 0
    assert privacy["M04"]["requester_rho_remaining"] == pytest.approx(0.1)
    assert report["audit"]["status"] == "partial"


def test_rerunning_a_run_replays_answers_without_new_charges(
    backend, federation, small_federation
) -> None:
    """The same run id costs nothing the second time, and gives the same estimates."""
    nodes = _start(federation, backend, small_federation[:3])
    first = run_audit(_plan(nodes), federation.transports(), run_id="again-1")
    second = run_audit(_plan(nodes), federation.transports(), run_id="again-1")
    assert {n["status"] for n in first["coverage"]["nodes"]} == {"answered"}
    assert all(n["rho"] > 0 for n in first["privacy"]["nodes"])
    assert all(n["rho"] == 0 for n in second["privacy"]["nodes"])
    assert all(
        n["replayed"] == n2["queries"]
        for n, n2 in zip(second["privacy"]["nodes"], first["privacy"]["nodes"], strict=True)
    )
    assert [m["estimate"] for m in second["metrics"]] == [m["estimate"] for m in first["metrics"]]


def test_the_node_sees_the_auditor_not_the_hub(backend, federation, small_federation) -> None:
    """Each auditor is charged on its own share: the requester is the signer, never the relay."""
    nodes = _start(federation, backend, small_federation[:3])
    run_audit(_plan(nodes), federation.transports(auditor=OTHER), run_id="other-1")
    for node in federation.nodes.values():
        now = node.service.clock()
        assert node.service.ledger.status(OTHER, now).requester_rho_spent > 0
        assert node.service.ledger.status(REQUESTER, now).requester_rho_spent == 0
        requesters = {row.requester for row in node.service.query_log.rows()}
        assert requesters == {OTHER}


def test_too_few_answering_nodes_fail_the_audit_cleanly(
    backend, federation, small_federation
) -> None:
    nodes = _start(federation, backend, small_federation[:2])
    nodes["M03"] = _absent(federation)
    report = run_audit(
        _plan(nodes, min_answering_nodes=3, deadline_seconds=5.0),
        {n: federation.transport(n, a) for n, a in nodes.items()},
        run_id="few-1",
    )
    validate_report(report)
    assert report["audit"]["status"] == "failed"
    assert "at least 3" in report["audit"]["status_reason"]
    assert report["findings"] == []


def test_rerun_after_the_budget_is_spent_replays_instead_of_skipping(
    backend, federation, small_federation
) -> None:
    plan_cost = math.fsum(q.spec.rho for q in planned_queries(load_plan(default_plan_path())))
    tight = example_policy({REQUESTER: plan_cost + 0.01}, max_rho_per_request=0.2)
    policies = {b.name: tight for b in small_federation[:3]}
    nodes = _start(federation, backend, small_federation[:3], policies=policies)
    first = run_audit(_plan(nodes), federation.transports(), run_id="tight-1")
    assert {n["status"] for n in first["coverage"]["nodes"]} == {"answered"}
    again = run_audit(_plan(nodes), federation.transports(), run_id="tight-1")
    assert {n["status"] for n in again["coverage"]["nodes"]} == {"answered"}
    assert all(n["rho"] == 0 for n in again["privacy"]["nodes"])


@pytest.fixture(scope="module", name="ring_federation")
def _ring_federation(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("ring-federation")
    return list(generate_federation(out, municipalities=4, candidates_per_municipality=300).bundles)


@pytest.mark.slow
def test_the_ring_and_reconciliation_run_in_either_mode(
    backend, federation, ring_federation
) -> None:
    """The blinding ring and revocation reconciliation complete through the hub as directly."""
    policy = example_policy({REQUESTER: 5.0}, max_rho_per_request=1.0, reconciliation=True)
    for bundle in ring_federation:
        federation.start(bundle.name, backend(bundle.name), policy=policy, bundle=bundle)
    report = run_audit(
        _plan(federation.plan_nodes()),
        federation.transports(),
        run_id="ring-1",
        dedup_transports=federation.dedup_transports(),
        reconcile_transports=federation.reconcile_transports(),
    )
    validate_report(report)
    assert {n["status"] for n in report["coverage"]["nodes"]} == {"answered"}
    assert report["duplicates"]["status"] == "complete", report["duplicates"].get("reason")
    assert report["reconciliation"]["status"] == "complete", report["reconciliation"]
    assert report["audit"]["status"] == "complete"
