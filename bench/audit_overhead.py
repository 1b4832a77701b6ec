"""Federated DP audit vs the same exact aggregates in one central database.

Builds N node databases (SQLite) with R assessment rows each, starts one node
process per database (`fedaudit node serve`, gRPC on loopback), and times the
default audit plan over the wire: capabilities, free preflight, the ledger
charge, the bounded SQL aggregations at every node, OpenDP noise, combination
and gap detection at the coordinator. The registries hold assessments only, so
the other checks' queries run over empty tables on both sides. The baseline is
one central SQLite database holding all N x R rows, running the same bounded
aggregations (the same SQL builder, without noise, ledger or network). Both are
measured in this run; the script prints the medians and their ratio.

With `--hub`, the same audit also runs through a hub (`fedaudit hub serve`, TLS) to
nodes that dial out (`fedaudit node connect`, the same databases), every call signed
by the auditor and every answer by the node, the messages encrypted end to end, and
the script prints that ratio too.

    .venv/bin/python bench/audit_overhead.py [--nodes 5] [--rows 200000] [--repeat 3] [--hub]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from sqlalchemy import Engine, insert

from fedaudit.coordinator.planning.checks import planned_queries
from fedaudit.coordinator.planning.default_plan import default_plan_path
from fedaudit.coordinator.planning.plan import AuditPlan, load_plan, parse_plan
from fedaudit.coordinator.running.audit import run_audit
from fedaudit.coordinator.running.transport import GrpcNodeTransport
from fedaudit.logs import configure_logging
from fedaudit.node.privacy.policy import DEFAULT_BOUNDS
from fedaudit.node.query import catalogue
from fedaudit.node.store.db import create_schema, make_engine
from fedaudit.node.store.models import (
    Assessment,
    Candidate,
    DataVersion,
    Municipality,
    Provider,
    Qualification,
)

QUALIFICATIONS = [
    ("Q-5120", "5120", 4),
    ("Q-7411", "7411", 4),
    ("Q-7231", "7231", 4),
    ("Q-3112", "3112", 5),
]
PERIODS = ["2022", "2023", "2024", "2025"]
REQUESTER = "oversight-board"


def fill(
    engine: Engine, code: str, rows: int, seed: int, *, prefix: str = "", reference: bool = True
) -> None:
    """Write a registry with `rows` assessments (about 2 per candidate) straight into SQL."""
    rng = random.Random(seed)
    create_schema(engine)
    providers = [f"{code}-P{i}" for i in range(1, 6)]
    n_candidates = rows // 2
    candidates = [
        {
            "candidate_id": f"{prefix}C{i}",
            "national_id": None,
            "given_name": "x",
            "family_name": "y",
            "date_of_birth": dt.date(1990, 1, 1),
            "sex": rng.choice(("female", "male")),
            "citizenship": "AT" if rng.random() < 0.85 else "DE",
        }
        for i in range(n_candidates)
    ]
    assessments = []
    for i in range(rows):
        assessments.append(
            {
                "assessment_id": f"{prefix}A{i}",
                "candidate_id": f"{prefix}C{i % n_candidates}",
                "qualification_id": QUALIFICATIONS[i % 4][0],
                "provider_id": providers[rng.randrange(5)],
                "attempt_no": 1 + i // n_candidates,
                "assessed_on": dt.date(2022, 1, 1) + dt.timedelta(days=rng.randrange(1400)),
                "result": "pass" if rng.random() < 0.88 else "fail",
            }
        )
    with engine.begin() as conn:
        if reference:
            conn.execute(
                insert(Municipality), [{"municipality_code": code, "name": code, "country": "AT"}]
            )
            conn.execute(
                insert(Qualification),
                [
                    {"qualification_id": q, "title": q, "isco_code": isco, "eqf_level": eqf}
                    for q, isco, eqf in QUALIFICATIONS
                ],
            )
            conn.execute(
                insert(DataVersion),
                [
                    {
                        "version": f"v1-{code}",
                        "bundle_digest": "bench",
                        "imported_at": dt.datetime.now(dt.UTC),
                        "reference_date": dt.date(2026, 1, 1),
                        "row_counts": "{}",
                    }
                ],
            )
        conn.execute(
            insert(Provider),
            [
                {
                    "provider_id": p,
                    "name": p,
                    "provider_type": "school",
                    "accreditation_status": "accredited",
                }
                for p in providers
            ],
        )
        for start in range(0, len(candidates), 20_000):
            conn.execute(insert(Candidate), candidates[start : start + 20_000])
        for start in range(0, len(assessments), 20_000):
            conn.execute(insert(Assessment), assessments[start : start + 20_000])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(db: Path, policy: Path, port: int) -> subprocess.Popen[bytes]:
    return _fedaudit(
        "node", "serve", "--db", str(db), "--policy", str(policy), "--insecure", "--port", str(port)
    )


def _fedaudit(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedaudit.cli.main", "--log-level", "error", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_ready(address: str, timeout: float = 30.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise SystemExit(f"node at {address} did not become ready")


def central_aggregate(engine: Engine, plan: AuditPlan) -> int:
    """Every aggregation of the plan, over all rows at once, exact (no noise, no ledger)."""
    total = 0
    with engine.connect() as conn:
        keys = catalogue.dimension_keys(conn, PERIODS)
        for planned in planned_queries(plan):
            template, params = catalogue.validate(planned.spec, keys)
            counts = catalogue.true_counts(
                conn,
                template,
                planned.spec,
                keys,
                params,
                max_records_per_person=DEFAULT_BOUNDS[template.name],
                reference_date=dt.date(2026, 1, 1),
            )
            total += sum(c for _, _, c in counts)
    return total


def bench_plan(round_no: int, nodes: dict[str, str]) -> AuditPlan:
    """The default plan (every check), with a fresh cost each round so nothing is replayed."""
    plan = load_plan(default_plan_path())
    data = {
        "name": f"bench-{round_no}",
        "requester": REQUESTER,
        "confidence": plan.confidence,
        "deadline_seconds": 600,
        "min_answering_nodes": len(nodes),
        "periods": PERIODS,
        "checks": yaml.safe_load(default_plan_path().read_text())["checks"],
    }
    for check in data["checks"].values():
        if "rho" in check:
            check["rho"] += round_no * 1e-6
    return parse_plan(data, source="bench").with_nodes(nodes)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--hub", action="store_true", help="also run the audit through a hub to dial-out nodes"
    )
    ns = parser.parse_args()
    configure_logging(json=False, level="warning")

    work = Path(tempfile.mkdtemp(prefix="fedaudit-bench-"))
    policy = work / "policy.yaml"
    policy.write_text(
        json.dumps(
            {
                "version": 1,
                "requesters": {REQUESTER: {"rho_per_period": 100.0, "templates": "all"}},
                "budget": {"period": "year", "node_rho_total": 1000.0, "max_rho_per_request": 1.0},
                "reliability": {"suppress_below": 0},
                "periods": {"first": 2022, "last": 2025},
            }
        )
    )
    t0 = time.perf_counter()
    codes = [f"M{i + 1:02d}" for i in range(ns.nodes)]
    central = make_engine(str(work / "central.db"))
    for i, code in enumerate(codes):
        fill(make_engine(str(work / f"{code}.db")), code, ns.rows, seed=i)
        fill(central, code, ns.rows, seed=i, prefix=f"{code}-", reference=i == 0)
    print(
        f"built {ns.nodes} node databases x {ns.rows} assessments and a central one in {time.perf_counter() - t0:.1f} s"
    )

    ports = [free_port() for _ in codes]
    procs = [start_node(work / f"{c}.db", policy, p) for c, p in zip(codes, ports, strict=True)]
    access = None
    try:
        addresses = {c: f"127.0.0.1:{p}" for c, p in zip(codes, ports, strict=True)}
        for a in addresses.values():
            wait_ready(a)
        if ns.hub:  # both kinds of node run side by side on the same databases
            hub_procs, access = start_hub_federation(work, codes, policy)
            procs += hub_procs
            _wait_connected(access, codes)
        federated, through_hub, centralised = [], [], []
        for r in range(ns.repeat):
            # A fresh privacy cost each round: the identical query would be replayed for free.
            # The three measurements alternate, so a warm cache favours none of them.
            plan = bench_plan(r, addresses)
            transports = {
                c: GrpcNodeTransport(c, a, requester=REQUESTER) for c, a in addresses.items()
            }
            federated.append(timed_audit(plan, transports, f"bench-{os.getpid()}-{r}"))
            if access is not None:
                from fedaudit.coordinator.running.hub_channel import HubChannel

                plan = bench_plan(ns.repeat + r, dict.fromkeys(codes, ""))
                transports = {
                    c: GrpcNodeTransport(c, "", requester=REQUESTER, channel=HubChannel(access, c))
                    for c in codes
                }
                through_hub.append(timed_audit(plan, transports, f"bench-hub-{os.getpid()}-{r}"))
            t = time.perf_counter()
            total = central_aggregate(central, plan)
            centralised.append(time.perf_counter() - t)
            assert total > 0
        fed, cen = statistics.median(federated), statistics.median(centralised)
        print(
            f"federated DP audit over gRPC ({ns.nodes} nodes): median {fed:.3f} s  "
            f"runs {[round(x, 3) for x in federated]}"
        )
        print(
            f"central exact SQL (one database, {ns.nodes * ns.rows} rows): median {cen:.3f} s  "
            f"runs {[round(x, 3) for x in centralised]}"
        )
        print(f"ratio federated / central = {fed / cen:.2f}  (target <= 1.5)")
        if through_hub:
            via = statistics.median(through_hub)
            print(
                f"federated DP audit through the hub ({ns.nodes} dial-out nodes, TLS, signed and encrypted "
                f"envelopes): median {via:.3f} s  runs {[round(x, 3) for x in through_hub]}"
            )
            print(f"ratio through the hub / central = {via / cen:.2f}  (target <= 1.5)")
            print(f"ratio through the hub / direct = {via / fed:.2f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a loaded machine; the numbers are printed
                p.kill()


def timed_audit(plan: AuditPlan, transports: dict[str, GrpcNodeTransport], run_id: str) -> float:
    t = time.perf_counter()
    report = run_audit(plan, transports, run_id=run_id)
    elapsed = time.perf_counter() - t
    for tr in transports.values():
        tr.close()
    assert report["coverage"]["answering"] == len(transports), report["coverage"]
    return elapsed


def start_hub_federation(
    work: Path, codes: list[str], policy: Path
) -> tuple[list[subprocess.Popen[bytes]], object]:
    """`fedaudit hub serve` and one `fedaudit node connect` per database; the auditor's access."""
    from fedaudit.coordinator.running.hub_channel import HubAccess
    from fedaudit.pki.authority import create_throwaway_pki, issue_node_certificate

    pki = create_throwaway_pki(work / "pki", codes, REQUESTER)
    hub = issue_node_certificate(work / "pki", "hub", hosts=["127.0.0.1"], days=2)
    port = free_port()
    procs = [
        _fedaudit(
            "hub", "serve", "--host", "127.0.0.1", "--port", str(port), "--tls-cert",
            str(hub.cert), "--tls-key", str(hub.key), "--tls-ca", str(pki.ca.cert),
        )
    ]  # fmt: skip
    for code in codes:
        files = pki.nodes[code]
        procs.append(
            _fedaudit(
                "node", "connect", "--hub", f"127.0.0.1:{port}", "--hub-name", "hub",
                "--db", str(work / f"{code}.db"), "--policy", str(policy), "--tls-cert",
                str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(pki.ca.cert),
            )
        )  # fmt: skip
    auditor = pki.auditors[REQUESTER]
    access = HubAccess.load(f"127.0.0.1:{port}", "hub", auditor.cert, auditor.key, pki.ca.cert)
    return procs, access


def _wait_connected(access: object, codes: list[str], timeout: float = 60.0) -> None:
    import grpc

    from fedaudit.wire.v1 import hub_pb2, hub_pb2_grpc

    deadline = time.monotonic() + timeout
    channel = access.open()  # type: ignore[attr-defined]
    try:
        while time.monotonic() < deadline:
            try:
                nodes = hub_pb2_grpc.HubStub(channel).Connected(
                    hub_pb2.ConnectedRequest(), timeout=2
                )
                if sorted(nodes.nodes) == sorted(codes):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    finally:
        channel.close()
    raise SystemExit("the dial-out nodes did not connect to the hub")


if __name__ == "__main__":
    main()
