"""Audits over real gRPC nodes: partial coverage, refusals, timeouts, replays, the demo."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pytest

from fedaudit.audit_reports.render import validate_report
from fedaudit.cli.main import main
from fedaudit.coordinator.planning.checks import planned_queries
from fedaudit.coordinator.planning.default_plan import default_plan_path
from fedaudit.coordinator.planning.plan import AuditPlan, load_plan
from fedaudit.coordinator.running.audit import run_audit
from fedaudit.coordinator.running.transport import GrpcNodeTransport
from fedaudit.node.privacy.policy import example_policy
from fedaudit.synthetic.federation import generate_federation

REQUESTER = "oversight-board"


@pytest.fixture(scope="module", name="small_federation")
def _small_federation(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four small synthetic municipality bundles (generated once per module)."""
    out = tmp_path_factory.mktemp("federation")
    return list(generate_federation(out, municipalities=4, candidates_per_municipality=300).bundles)


def _plan(nodes: dict[str, str], **changes: object) -> AuditPlan:
    plan = load_plan(default_plan_path()).with_nodes(nodes)
    if changes:
        from dataclasses import replace

        plan = replace(plan, **changes)
    return plan


def _transports(nodes: dict[str, str], deadline_retries: int = 0) -> dict[str, GrpcNodeTransport]:
    return {
        n: GrpcNodeTransport(n, a, requester=REQUESTER, retries=deadline_retries)
        for n, a in nodes.items()
    }


def _start(node_factory, bundles: list[Path], tmp_path: Path, policies=None) -> dict[str, str]:
    nodes = {}
    for i, bundle in enumerate(bundles):
        policy = (policies or {}).get(bundle.name)
        node = node_factory(
            f"sqlite:///{tmp_path / (bundle.name + '.db')}", policy=policy, bundle=bundle
        )
        nodes[bundle.name] = f"127.0.0.1:{node.port}"
        assert i < 10
    return nodes


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_audit_with_a_node_down_is_partial_and_says_so(
    node_factory, small_federation, tmp_path
) -> None:
    """A dead node is listed as unavailable; the others are evaluated; the report validates."""
    nodes = _start(node_factory, small_federation[:3], tmp_path)
    nodes["M04"] = f"127.0.0.1:{_closed_port()}"
    plan = _plan(nodes, deadline_seconds=10.0)
    report = run_audit(plan, _transports(nodes), run_id="down-1")
    validate_report(report)
    status = {n["node"]: n["status"] for n in report["coverage"]["nodes"]}
    assert status == {"M01": "answered", "M02": "answered", "M03": "answered", "M04": "unavailable"}
    assert report["audit"]["status"] == "partial"
    assert "M04" in report["audit"]["status_reason"]
    assert report["metrics"], "the answering nodes are still evaluated"
    assert {n["node"]: n["rho"] for n in report["privacy"]["nodes"]}["M04"] == 0


def test_a_hanging_node_times_out_without_hanging_the_audit(
    node_factory, small_federation, tmp_path
) -> None:
    """A node that accepts connections but never answers is reported as timed out."""
    nodes = _start(node_factory, small_federation[:3], tmp_path)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        nodes["M04"] = f"127.0.0.1:{silent.getsockname()[1]}"
        plan = _plan(nodes, deadline_seconds=3.0)
        report = run_audit(plan, _transports(nodes), run_id="hang-1")
    status = {n["node"]: n["status"] for n in report["coverage"]["nodes"]}
    assert status["M04"] in ("timed_out", "unavailable")
    assert [s for n, s in status.items() if n != "M04"] == ["answered"] * 3


def test_a_node_without_budget_is_skipped_before_anything_is_charged(
    node_factory, small_federation, tmp_path
) -> None:
    """Preflight shows the audit does not fit; the node is refused in coverage and charged nothing."""
    poor = example_policy({REQUESTER: 0.1}, max_rho_per_request=0.1)
    nodes = _start(node_factory, small_federation[:4], tmp_path, policies={"M04": poor})
    report = run_audit(_plan(nodes), _transports(nodes), run_id="poor-1")
    validate_report(report)
    m04 = next(n for n in report["coverage"]["nodes"] if n["node"] == "M04")
    assert m04["status"] == "refused"
    assert m04["reason"] == "BUDGET_EXHAUSTED"
    privacy = {n["node"]: n for n in report["privacy"]["nodes"]}
    assert privacy["M04"]["rho"] == 0
    assert privacy["M04"]["requester_rho_remaining"] == pytest.approx(0.1)
    assert report["audit"]["status"] == "partial"


def test_rerunning_a_run_replays_answers_without_new_charges(
    node_factory, small_federation, tmp_path
) -> None:
    """The same run id (e.g. after a coordinator crash) costs nothing the second time."""
    nodes = _start(node_factory, small_federation[:3], tmp_path)
    first = run_audit(_plan(nodes), _transports(nodes), run_id="again-1")
    second = run_audit(_plan(nodes), _transports(nodes), run_id="again-1")
    assert all(n["rho"] > 0 for n in first["privacy"]["nodes"])
    assert all(n["rho"] == 0 for n in second["privacy"]["nodes"])
    assert all(
        n["replayed"] == n2["queries"]
        for n, n2 in zip(second["privacy"]["nodes"], first["privacy"]["nodes"], strict=True)
    )
    assert [m["estimate"] for m in second["metrics"]] == [m["estimate"] for m in first["metrics"]]


def test_too_few_answering_nodes_fail_the_audit_cleanly(
    node_factory, small_federation, tmp_path
) -> None:
    """Below min_answering_nodes there is no regional comparison, and the report says why."""
    nodes = _start(node_factory, small_federation[:2], tmp_path)
    nodes["M03"] = f"127.0.0.1:{_closed_port()}"
    report = run_audit(
        _plan(nodes, min_answering_nodes=3, deadline_seconds=5.0),
        _transports(nodes),
        run_id="few-1",
    )
    validate_report(report)
    assert report["audit"]["status"] == "failed"
    assert "at least 3" in report["audit"]["status_reason"]
    assert report["findings"] == []


@pytest.mark.slow
def test_demo_finds_the_planted_anomalies_and_spares_the_clean_town(tmp_path, capsys) -> None:
    """`fedaudit demo` end to end: every planted gap is a finding, M01 has none, exit 0."""
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.html").stat().st_size > 10_000
    # Fresh nodes, one audit (queries and the ring): what is left is the cap minus this audit.
    for node in report["privacy"]["nodes"]:
        left = node["requester_rho_cap"] - node["rho"]
        assert node["requester_rho_remaining"] == pytest.approx(left, abs=1e-9), node["node"]
    found = {
        (f["kind"], f["subject"]["municipality"], f["subject"].get("provider_id"))
        for f in report["findings"]
    }
    assert ("employment_gap", "M02", None) in found
    assert ("credential_inflation", "M03", "M03-P4") in found
    assert ("recognition_delay", "M04", None) in found
    assert any(k == "outcome_disparity" and m == "M05" for k, m, _ in found)
    # M01 has no quality gap planted; planted duplicates join random pairs of municipalities
    # (M01 among them), so a duplicates finding naming M01 is a true one, not a false alarm.
    assert not [
        f
        for f in report["findings"]
        if f["subject"]["municipality"] == "M01" and f["kind"] != "cross_municipality_duplicates"
    ]
    out = capsys.readouterr().out
    assert "nothing flagged" in out
    # Revocation reconciliation: every planted case is on its recogniser's own list, exactly.
    assert report["reconciliation"]["status"] == "complete"
    assert "5 of 5 planted revoked-but-recognised" in " ".join(out.split())
    assert "(5 listed in all)" in " ".join(out.split())


def test_rerun_after_the_budget_is_spent_replays_instead_of_skipping(
    node_factory, small_federation, tmp_path
) -> None:
    """A node whose budget the first run used up still answers the same run again, for free."""
    # What the catalogue queries cost (no ring here: the test gives no dedup transports).
    plan_cost = math.fsum(q.spec.rho for q in planned_queries(load_plan(default_plan_path())))
    tight = example_policy({REQUESTER: plan_cost + 0.01}, max_rho_per_request=0.2)
    policies = {b.name: tight for b in small_federation[:3]}
    nodes = _start(node_factory, small_federation[:3], tmp_path, policies=policies)
    first = run_audit(_plan(nodes), _transports(nodes), run_id="tight-1")
    assert {n["status"] for n in first["coverage"]["nodes"]} == {"answered"}
    assert all(n["requester_rho_remaining"] < plan_cost for n in first["privacy"]["nodes"])
    again = run_audit(_plan(nodes), _transports(nodes), run_id="tight-1")
    assert {n["status"] for n in again["coverage"]["nodes"]} == {"answered"}
    assert all(n["rho"] == 0 for n in again["privacy"]["nodes"])
