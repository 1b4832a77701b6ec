"""What `audit run`, `schedule run` and the demo say and exit with: complete, partial, failed.

Every test runs the real `fedaudit` command in a subprocess against real gRPC nodes on
loopback (mTLS where identity matters), and checks the exit code (DESIGN.md 6.2) and the
words a user reads: an incomplete audit never reads as "no gap found", and the reason a
node is missing is a plain sentence.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedaudit.coordinator.planning.default_plan import default_plan_path
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.server import start_node_server
from fedaudit.pki.authority import create_throwaway_pki
from fedaudit.pki.tls import TlsFiles, server_credentials
from fedaudit.synthetic.federation import generate_federation

REQUESTER = "oversight-board"
FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"


def fedaudit(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it (logs as JSON on stderr, not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "fedaudit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plan_file(path: Path, nodes: dict[str, str], *, ring: bool = False, **changes: Any) -> Path:
    """The default plan with these nodes; without the ring and reconciliation unless asked
    (the test nodes serve neither)."""
    doc = yaml.safe_load(default_plan_path().read_text(encoding="utf-8"))
    if not ring:
        del doc["checks"]["duplicates"]
        doc["checks"].pop("revocation", None)
    doc["nodes"] = [{"name": n, "address": a} for n, a in nodes.items()]
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.fixture(scope="module", name="three_towns")
def _three_towns(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("towns")
    return list(generate_federation(out, municipalities=3, candidates_per_municipality=300).bundles)


@pytest.fixture(name="towns")
def _towns(node_factory, three_towns: list[Path], tmp_path: Path) -> dict[str, str]:
    nodes = {}
    for bundle in three_towns:
        node = node_factory(f"sqlite:///{tmp_path / (bundle.name + '.db')}", bundle=bundle)
        nodes[bundle.name] = f"127.0.0.1:{node.port}"
    return nodes


def test_complete_audit_exits_0_and_says_complete(towns, tmp_path) -> None:
    """All nodes answer: status complete, exit 0 (no --fail-on), the verdict says complete."""
    plan = _plan_file(tmp_path / "plan.yaml", towns)
    run = fedaudit("audit", "run", str(plan), "--insecure", "--quiet", "--out", str(tmp_path / "r"))
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["audit"]["status"] == "complete"
    assert "The audit is complete" in run.stdout
    assert "INCOMPLETE" not in run.stdout
    assert "FAILED" not in run.stdout


def test_partial_audit_exits_3_unless_allowed(towns, tmp_path) -> None:
    """A node down: exit 3 with the reason in words; --allow-partial exits by findings."""
    nodes = {**towns, "M09": f"127.0.0.1:{_closed_port()}"}
    plan = _plan_file(tmp_path / "plan.yaml", nodes, deadline_seconds=10)
    out = tmp_path / "r"
    run = fedaudit("audit", "run", str(plan), "--insecure", "--quiet", "--out", str(out))
    assert run.returncode == 3, run.stderr
    assert "The audit is INCOMPLETE" in run.stdout
    assert "nothing is listening at 127.0.0.1:" in run.stdout
    assert "no gap" not in run.stdout.lower()
    assert json.loads((out / "report.json").read_text())["audit"]["status"] == "partial"
    allowed = fedaudit(
        "audit", "run", str(plan), "--insecure", "--quiet", "--out", str(out), "--allow-partial"
    )
    assert allowed.returncode == 0, allowed.stderr
    with_fail_on = fedaudit(
        "audit",
        "run",
        str(plan),
        "--insecure",
        "--quiet",
        "--out",
        str(out),
        "--allow-partial",
        "--fail-on",
        "info",
    )
    report = json.loads((out / "report.json").read_text())
    assert with_fail_on.returncode == (1 if report["findings"] else 0)


def test_failed_audit_exits_3_and_names_the_wrong_node(tmp_path) -> None:
    """The only node presents another node's certificate: FAILED, why in words, exit 3."""
    pki = create_throwaway_pki(tmp_path / "pki", ["M02", "M05"], REQUESTER)
    from fedaudit.node.ingest.bundle import import_bundle
    from fedaudit.node.store.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'm02.db'}")
    import_bundle(engine, FIXTURE_BUNDLE)
    cert = pki.nodes["M02"]
    node = start_node_server(
        NodeService(engine, example_policy({REQUESTER: 2.0})),
        host="127.0.0.1",
        port=0,
        server_credentials=server_credentials(TlsFiles(cert.cert, cert.key, pki.ca.cert)),
    )
    try:
        address = f"localhost:{node.port}"
        plan = _plan_file(
            tmp_path / "plan.yaml", {"M05": address}, min_answering_nodes=1, deadline_seconds=10
        )
        auditor = pki.auditors[REQUESTER]
        run = fedaudit(
            "audit",
            "run",
            str(plan),
            "--quiet",
            "--fail-on",
            "warning",
            "--out",
            str(tmp_path / "r"),
            "--tls-cert",
            str(auditor.cert),
            "--tls-key",
            str(auditor.key),
            "--tls-ca",
            str(pki.ca.cert),
        )
    finally:
        node.stop(grace=None)
        engine.dispose()
    assert run.returncode == 3, run.stderr
    assert "The audit FAILED and says nothing about gaps" in run.stdout
    flat = " ".join(run.stdout.split())
    assert f"the node at {address} is not M05: its certificate names M02" in flat
    assert "No findings" not in run.stdout
    assert "no gap" not in run.stdout.lower()
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["audit"]["status"] == "failed"
    message = report["coverage"]["nodes"][0]["message"]
    assert "is not M05: its certificate names M02" in message


def test_a_ring_that_cannot_run_makes_the_audit_partial(towns, tmp_path) -> None:
    """Issue 15 item 11: the plan asks for duplicates, the ring cannot run: not complete."""
    plan = _plan_file(tmp_path / "plan.yaml", towns, ring=True)
    out = tmp_path / "r"
    run = fedaudit("audit", "run", str(plan), "--insecure", "--quiet", "--out", str(out))
    assert run.returncode == 3, run.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["audit"]["status"] == "partial"
    assert report["duplicates"]["status"] == "failed"
    assert "duplicate detection could not run" in report["audit"]["status_reason"]
    assert "Duplicate detection failed:" in run.stdout
    assert "duplicate detection could not run" in " ".join(run.stdout.split())


def test_schedule_run_exits_3_for_an_incomplete_run(towns, tmp_path) -> None:
    """`schedule run --once` follows the same rule: a node down is exit 3, named in words."""
    nodes = {**towns, "M09": f"127.0.0.1:{_closed_port()}"}
    plan = _plan_file(tmp_path / "plan.yaml", nodes, schedule="0 6 1 1 *", deadline_seconds=10)
    archive = tmp_path / "archive"
    run = fedaudit("schedule", "run", str(plan), "--archive", str(archive), "--once", "--insecure")
    assert run.returncode == 3, run.stderr
    assert "The audit is INCOMPLETE" in run.stdout
    assert "nothing is listening at" in " ".join(run.stdout.split())


def test_demo_with_one_bundle_is_incomplete_without_the_ring(tmp_path) -> None:
    """Issue 15 item 11 in the demo: one node cannot form a ring, so the audit is partial."""
    plan = _plan_file(tmp_path / "plan.yaml", {}, ring=True, min_answering_nodes=1)
    out = tmp_path / "demo"
    run = fedaudit(
        "demo", "--bundles", str(FIXTURE_BUNDLE), "--plan", str(plan), "--out", str(out), "--quiet"
    )
    assert run.returncode == 3, run.stderr
    assert "The audit is INCOMPLETE" in run.stdout
    flat = " ".join(run.stdout.split())
    assert "duplicate detection could not run (only 1 node(s) joined the ring" in flat
    assert "no gap" not in run.stdout.lower()
    report = json.loads((out / "report.json").read_text())
    assert report["audit"]["status"] == "partial"
    assert report["duplicates"]["status"] == "failed"


def test_demo_with_too_few_bundles_for_the_plan_is_an_input_error(tmp_path) -> None:
    """The default plan needs 3 nodes: one bundle is refused in one line, exit 2."""
    run = fedaudit("demo", "--bundles", str(FIXTURE_BUNDLE), "--out", str(tmp_path), "--quiet")
    assert run.returncode == 2, run.stderr
    assert "min_answering_nodes is 3" in run.stderr
    assert "Traceback" not in run.stderr


def test_absent_outcomes_are_not_assessable_in_terminal_and_json(
    node_factory, three_towns, tmp_path
) -> None:
    """Employment recorded only at 6 months in M03 while the plan asks for 12: the terminal
    and report.json say the check is not assessable there, and why."""
    import csv
    import shutil

    towns = {}
    for bundle in three_towns:
        source = bundle
        if bundle.name == "M03":
            source = tmp_path / "M03"
            shutil.copytree(bundle, source)
            path = source / "employment_outcomes.csv"
            with path.open(encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
            assert any(r["months_after"] == "12" for r in rows)
            with path.open("w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(r for r in rows if r["months_after"] != "12")
        node = node_factory(f"sqlite:///{tmp_path / (bundle.name + '.db')}", bundle=source)
        towns[bundle.name] = f"127.0.0.1:{node.port}"
    plan = _plan_file(tmp_path / "plan.yaml", towns)
    out = tmp_path / "r"
    run = fedaudit("audit", "run", str(plan), "--insecure", "--quiet", "--out", str(out))
    assert run.returncode == 0, run.stderr
    flat = " ".join(run.stdout.split())
    assert "not assessable: employment in M03: no employment outcomes 12 months" in flat
    report = json.loads((out / "report.json").read_text())
    checks = {(n["check"], n["subject"]["municipality"]) for n in report["not_assessable"]}
    assert ("employment", "M03") in checks
    assert not [
        m
        for m in report["metrics"]
        if m["subject"]["municipality"] == "M03" and m["metric"] == "employment_rate_12m"
    ]


def test_preview_prints_detectable_gaps_and_spends_nothing(towns, tmp_path) -> None:
    """`audit preview` is free: node budgets are unchanged; every check of the plan has a row
    per subject size, and noise never makes a gap easier to detect."""
    from fedaudit.coordinator.running.transport import GrpcNodeTransport

    def remaining() -> list[float]:
        out = []
        for name, address in towns.items():
            t = GrpcNodeTransport(name, address, requester=REQUESTER)
            try:
                out.append(t.info(timeout=5).budget.requester_rho_remaining)
            finally:
                t.close()
        return out

    before = remaining()
    plan = _plan_file(tmp_path / "plan.yaml", towns, ring=True)
    run = fedaudit("audit", "preview", str(plan), "--insecure", "--sizes", "300,3000")
    assert run.returncode == 0, run.stderr
    assert remaining() == before
    lines = [line for line in run.stdout.splitlines() if "│" in line]
    for label in ("pass rate", "employment", "late recognitions", "appeals upheld"):
        assert any(label in line for line in lines), label
    rows = [line.split("│") for line in lines if "municipality" in line or "provider" in line]
    assert len(rows) == 2 * (2 + 2 + 1 + 1)  # pass, emp x {municipality, provider}; rec; appeals
    for cells in rows:
        with_noise, no_noise, ratio = (float(c) for c in cells[-4:-1])
        assert with_noise >= no_noise
        assert ratio >= 1.0
    assert "price of privacy" in " ".join(run.stdout.split())


def test_preview_sizes_must_be_numbers(towns, tmp_path) -> None:
    plan = _plan_file(tmp_path / "plan.yaml", towns)
    run = fedaudit("audit", "preview", str(plan), "--insecure", "--sizes", "many")
    assert run.returncode == 2
    assert "--sizes" in run.stderr
