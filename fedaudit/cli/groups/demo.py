"""`fedaudit demo`: a whole federation on one machine, from data bundles to the report.

Everything runs for real: bundles are validated and imported into one SQLite
database per node, each node serves gRPC on a loopback port with mTLS from a
throw-away CA, and the coordinator runs the default audit plan over the wire. With
no `--bundles`, a synthetic federation with planted anomalies is generated first and
the summary checks that the audit found what was planted and flagged nothing in the
clean municipalities.

The orchestration stays in the CLI rather than a library module: it talks to the
terminal at every step (a spinner, one line per node, the progress bar, the planted
anomaly table) and reports problems as `CliError`; its only caller is this command.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.table import Table

from fedaudit.cli.console import console, err_console, print_summary, progress_reporter
from fedaudit.cli.errors import EXIT_INPUT, EXIT_INTERRUPTED, CliError
from fedaudit.cli.interrupt import interruptible
from fedaudit.cli.parsers import Parsers
from fedaudit.cli.shared import load_plan

ORDER = 10
"""First in `fedaudit --help`: the command to try first."""

DEMO_REQUESTER = "oversight-board"
DEMO_RHO_PER_PERIOD = 5.0


@dataclass(frozen=True)
class PlantedCheck:
    """Whether one planted anomaly was found."""

    kind: str
    municipality: str
    provider_id: str | None
    description: str
    found: bool


def register(parsers: Parsers) -> None:
    """Add `demo`."""
    demo = parsers.root.add_parser(
        "demo",
        help="run a whole federation locally on synthetic data (or your bundles) and write a report",
        description=(
            "Generate a synthetic federation with planted anomalies (or use --bundles), import one "
            "node per bundle, start the nodes and a coordinator on loopback, run the default audit "
            "plan and write report.json and report.html."
        ),
    )
    demo.add_argument(
        "--bundles",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="data bundles, one node each (default: generate a synthetic federation)",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("fedaudit-demo"),
        help="output directory (default: ./fedaudit-demo)",
    )
    demo.add_argument(
        "--plan",
        type=Path,
        help="audit plan to run (default: the built-in plan with every check)",
    )
    demo.add_argument(
        "--seed", type=int, default=7, help="seed of the synthetic federation (default: 7)"
    )
    demo.add_argument(
        "--candidates",
        type=int,
        default=3000,
        help="synthetic candidates per municipality (default: 3000)",
    )
    demo.add_argument(
        "--dial-out",
        action="store_true",
        help="run the nodes as dial-out nodes connected to a local hub, and audit through it "
        "(default: nodes listen, the coordinator dials them)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar (default: show it)")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Import, serve and audit a local federation; check the planted anomalies were found."""
    from fedaudit.audit_reports.render import write_report
    from fedaudit.coordinator.errors import PlanError
    from fedaudit.coordinator.planning.checks import planned_queries
    from fedaudit.coordinator.planning.default_plan import default_plan_path
    from fedaudit.coordinator.ring.reconcile import GrpcReconcileTransport
    from fedaudit.coordinator.ring.relay import GrpcDedupTransport
    from fedaudit.coordinator.running.audit import run_audit
    from fedaudit.coordinator.running.outcome import exit_code
    from fedaudit.coordinator.running.transport import GrpcNodeTransport
    from fedaudit.node.errors import BundleError
    from fedaudit.node.ingest.bundle import import_bundle
    from fedaudit.node.privacy.policy import example_policy
    from fedaudit.node.query.service import NodeService
    from fedaudit.node.ring.reconcile import ReconcileService
    from fedaudit.node.ring.service import DedupService
    from fedaudit.node.server import start_node_server
    from fedaudit.node.store.db import make_engine
    from fedaudit.pki.authority import PkiError, create_throwaway_pki
    from fedaudit.pki.identity import NodeIdentity
    from fedaudit.pki.tls import (
        TlsFiles,
        channel_credentials,
        pinned_channel_options,
        server_credentials,
    )

    out: Path = args.out
    federation = None
    if args.bundles:
        bundles = list(args.bundles)
        _check_bundles(bundles)  # every bundle, every problem, before anything is written
        out.mkdir(parents=True, exist_ok=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        from fedaudit.synthetic.federation import generate_federation

        target = out / "bundles"
        if target.exists():
            shutil.rmtree(target)
        with console.status("generating a synthetic federation"):
            federation = generate_federation(
                target, seed=args.seed, candidates_per_municipality=args.candidates
            )
        bundles = list(federation.bundles)
        console.print(f"synthetic federation: {len(bundles)} municipalities in {target}")

    node_dir = out / "nodes"
    if node_dir.exists():
        shutil.rmtree(node_dir)
    node_dir.mkdir(parents=True)
    # Every demo node opts in to revocation reconciliation at both ends (off by default).
    policy = example_policy(
        {DEMO_REQUESTER: DEMO_RHO_PER_PERIOD}, max_rho_per_request=1.0, reconciliation=True
    )
    # The demo's nodes share one process with the coordinator, so the ring's Start floor
    # (sized for a node on its own machine) would time the shared process, not a registry,
    # and overrun; production nodes keep the policy's default (docs/dedup.md).
    policy = replace(policy, ring=replace(policy.ring, pace_factor=0.0))

    engines, services, running = [], {}, []
    try:
        for bundle in bundles:
            engine = make_engine(str(node_dir / f"{bundle.name}.db"))
            engines.append(engine)
            try:
                result = import_bundle(engine, bundle)
            except BundleError as exc:
                console.print(
                    f"[bold red]{bundle}: {exc.total} problem(s); nothing was imported[/]"
                )
                for line in exc.problems[:50]:
                    console.print(line, markup=False)
                return EXIT_INPUT
            service = NodeService(engine, policy)
            code = service.capabilities(DEMO_REQUESTER).municipality_code
            if code in services:
                raise CliError(f"{bundle}: municipality {code} is already served by another bundle")
            services[code] = service
            console.print(f"node {code}: imported {result.data_version}")

        # mTLS with a throw-away federation CA: the demo runs the way production does.
        try:
            pki = create_throwaway_pki(out / "pki", list(services), DEMO_REQUESTER)
        except PkiError as exc:
            raise CliError(f"cannot issue demo certificates: {exc}") from exc
        nodes = {}
        hub = _start_demo_hub(pki) if args.dial_out else None
        if hub is not None:
            running.append(hub)
        for code, service in services.items():
            files = TlsFiles(pki.nodes[code].cert, pki.nodes[code].key, pki.ca.cert)
            identity = NodeIdentity.load(files.cert, files.key, files.ca)
            dedup = DedupService(
                service.engine,
                policy,
                ledger=service.ledger,
                identity=identity,
                query_log=service.query_log,
            )
            reconcile = ReconcileService(
                service.engine,
                policy,
                identity=identity,
                ledger=service.ledger,
            )
            if hub is not None:
                running.append(
                    _dial_out(service, hub, identity, pki, dedup=dedup, reconcile=reconcile)
                )
                nodes[code] = ""  # named, not addressed: reached through the hub
                continue
            node = start_node_server(
                service,
                host="127.0.0.1",
                port=0,
                server_credentials=server_credentials(files),
                dedup=dedup,
                reconcile=reconcile,
            )
            running.append(node)
            nodes[code] = f"127.0.0.1:{node.port}"
        console.print(f"demo PKI (mTLS, throw-away CA): {pki.directory}")
        if hub is not None:
            console.print(f"hub on 127.0.0.1:{hub.port}: {len(nodes)} nodes dialled out to it")

        try:
            plan = load_plan(args.plan or default_plan_path()).with_nodes(nodes)
        except PlanError as exc:
            raise CliError(f"{exc} (pass --plan with a smaller min_answering_nodes)") from exc
        if plan.requester != DEMO_REQUESTER:
            raise CliError(
                f"the demo's nodes serve requester '{DEMO_REQUESTER}', the plan asks as '{plan.requester}'"
            )
        auditor = pki.auditors[DEMO_REQUESTER]
        client = channel_credentials(TlsFiles(auditor.cert, auditor.key, pki.ca.cert))

        def reach(name: str) -> dict[str, Any]:
            if hub is not None:
                from fedaudit.coordinator.running.hub_channel import HubAccess, HubChannel

                access = HubAccess.load(
                    f"127.0.0.1:{hub.port}", DEMO_HUB, auditor.cert, auditor.key, pki.ca.cert
                )
                return {"channel": HubChannel(access, name)}
            return {"credentials": client, "channel_options": pinned_channel_options(name)}

        transports = {
            name: GrpcNodeTransport(name, address, requester=plan.requester, **reach(name))
            for name, address in nodes.items()
        }
        dedup_transports = {
            name: GrpcDedupTransport(name, address, requester=plan.requester, **reach(name))
            for name, address in nodes.items()
        }
        reconcile_transports = {
            name: GrpcReconcileTransport(name, address, requester=plan.requester, **reach(name))
            for name, address in nodes.items()
        }
        total = len(nodes) * len(planned_queries(plan))
        try:
            with (
                interruptible(
                    [
                        *transports.values(),
                        *dedup_transports.values(),
                        *reconcile_transports.values(),
                    ]
                ),
                progress_reporter(total, quiet=args.quiet) as progress,
            ):
                report = run_audit(
                    plan,
                    transports,
                    progress=progress,
                    dedup_transports=dedup_transports,
                    reconcile_transports=reconcile_transports,
                )
            write_reconciliation_lists(services, out / "reconciliation", report)
        except KeyboardInterrupt:
            console.print(f"demo interrupted; no report was written (the nodes are in {node_dir})")
            return EXIT_INTERRUPTED
        finally:
            for t in [
                *transports.values(),
                *dedup_transports.values(),
                *reconcile_transports.values(),
            ]:
                t.close()
    finally:
        for node in running:
            node.stop(grace=0.5)
        for engine in engines:
            engine.dispose()

    json_path, html_path = write_report(report, out)
    print_summary(report)
    if federation is not None and report["audit"]["status"] == "failed":
        console.print("planted anomalies: not checked, the audit failed (see above)")
    elif federation is not None:
        checks = check_planted(report, federation)
        _print_planted(checks, report, federation.clean_municipalities)
        _print_reconciliation(federation, out / "reconciliation")
    console.print(f"\nreport: {json_path}\n        {html_path}")
    # No --fail-on here: findings are what the demo is for. An incomplete audit exits 3.
    return exit_code(report, None)


DEMO_HUB = "hub"
"""The demo hub's certificate name (a serverAuth certificate for 127.0.0.1)."""


def _start_demo_hub(pki: Any) -> Any:
    """A hub on loopback with its own certificate from the demo CA."""
    from fedaudit.hub.server import start_hub_server
    from fedaudit.pki.authority import issue_node_certificate
    from fedaudit.pki.identity import NodeIdentity

    files = issue_node_certificate(
        pki.directory, DEMO_HUB, hosts=["127.0.0.1", "localhost"], days=2, overwrite=True
    )
    ca = NodeIdentity.load(files.cert, files.key, pki.ca.cert).ca
    return start_hub_server(
        cert_pem=files.cert.read_bytes(), key_pem=files.key.read_bytes(), ca=ca, port=0
    )


def _dial_out(
    service: Any, hub: Any, identity: Any, pki: Any, *, dedup: Any, reconcile: Any
) -> Any:
    """Start one dial-out node and wait until the hub has it."""
    import grpc

    from fedaudit.node.dialout import DialoutNode

    node = DialoutNode(
        service,
        hub=f"127.0.0.1:{hub.port}",
        hub_name=DEMO_HUB,
        identity=identity,
        credentials=grpc.ssl_channel_credentials(pki.ca.cert.read_bytes()),
        dedup=dedup,
        reconcile=reconcile,
    ).start()
    if not node.wait_connected(30):
        node.stop(grace=None)
        raise CliError(f"node {identity.name} did not connect to the demo hub: {node.last_error}")
    return node


def _check_bundles(bundles: list[Path]) -> None:
    """Validate every bundle and report the problems of all of them, not just the first."""
    from fedaudit.node.errors import BundleError
    from fedaudit.node.ingest.bundle import validate_bundle

    missing = [b for b in bundles if not b.is_dir()]
    if missing:
        raise CliError(
            "; ".join(f"{b}: not a directory" for b in missing)
            + " (a data bundle is a directory of CSV files)"
        )
    bad = 0
    for bundle in bundles:
        try:
            validate_bundle(bundle)
        except BundleError as exc:
            bad += 1
            err_console.print(f"[bold red]{bundle}: {exc.total} problem(s)[/]")
            for line in exc.problems[:50]:
                err_console.print(line, markup=False, highlight=False)
            if exc.total > 50:
                err_console.print(
                    f"... and {exc.total - 50} more (fedaudit node validate {bundle} lists all)"
                )
    if bad:
        raise CliError(
            f"{bad} of {len(bundles)} bundle(s) have problems (listed above); nothing was imported"
        )


def check_planted(report: dict[str, Any], federation: Any) -> list[PlantedCheck]:
    """Match each planted anomaly this release can detect against the report's findings."""
    kinds = {
        "pass_rate_gap",
        "employment_gap",
        "credential_inflation",
        "recognition_delay",
        "outcome_disparity",
        "appeal_anomaly",
    }
    results = []
    for p in federation.planted:
        if p.kind not in kinds:
            continue
        found = any(
            f["kind"] == p.kind
            and f["subject"].get("municipality") == p.municipality
            and (p.provider_id is None or f["subject"].get("provider_id") == p.provider_id)
            for f in report["findings"]
        )
        results.append(PlantedCheck(p.kind, p.municipality, p.provider_id, p.description, found))
    return results


def flagged_clean(report: dict[str, Any], clean: tuple[str, ...]) -> list[dict[str, Any]]:
    """Findings about municipalities where nothing was planted (should be none)."""
    return [f for f in report["findings"] if f["subject"].get("municipality") in clean]


def checks_planted_ring(report: dict[str, Any]) -> dict[str, tuple[float, list[float]] | None]:
    """The ring's released overall counts (estimate, interval), by finding kind."""
    out: dict[str, tuple[float, list[float]] | None] = {}
    for metric, kind in (
        ("duplicated_persons", "cross_municipality_duplicates"),
        ("assessment_shopping", "assessment_shopping"),
        ("revoked_still_recognised", "revoked_still_recognised"),
    ):
        found = [
            m
            for m in report["metrics"]
            if m["metric"] == metric
            and m["subject"].get("municipality") is None
            and not m["subject"].get("isco_code")
        ]
        out[kind] = (found[0]["estimate"], found[0]["ci"]) if found else None
    return out


def _print_duplicates(report: dict[str, Any], released: dict[str, Any]) -> None:
    """Say what the ring released and why a count whose interval reaches zero is no finding."""
    dup = report["duplicates"]
    if dup["status"] in ("not_run", "failed"):
        console.print(f"duplicate detection: {dup['status']}: {dup['reason']}")
        return
    flagged = {f["kind"] for f in report["findings"]}
    for kind, value in released.items():
        if value is None:
            continue
        est, (low, high) = value
        verdict = "[green]finding[/]" if kind in flagged else "interval reaches zero: no finding"
        console.print(f"{kind}: about {est:.0f} ({low:.0f} to {high:.0f}) — {verdict}")


def _print_planted(
    checks: list[PlantedCheck], report: dict[str, Any], clean: tuple[str, ...]
) -> None:
    """Show, planted anomaly by anomaly, whether the audit found it: the demo's self-check."""
    table = Table(title="Planted anomalies (synthetic data)")
    for col in ("kind", "where", "found"):
        table.add_column(col)
    for c in checks:
        where = c.municipality + (f" / {c.provider_id}" if c.provider_id else "")
        table.add_row(c.kind, where, "[green]found[/]" if c.found else "[red]MISSED[/]")
    console.print(table)
    _print_duplicates(report, checks_planted_ring(report))
    wrong = flagged_clean(report, clean)
    if clean:
        console.print(
            f"clean municipalities ({', '.join(clean)}): "
            + ("[green]nothing flagged[/]" if not wrong else f"[red]{len(wrong)} finding(s)[/]")
        )


def write_reconciliation_lists(
    services: dict[str, Any], directory: Path, report: dict[str, Any]
) -> None:
    """Each node's own list (what its data officer would see), as `<node>.csv`."""
    from fedaudit.node.ring.reconcile_store import stored_matches, write_matches_csv

    if "reconciliation" not in report:
        return
    directory.mkdir(parents=True, exist_ok=True)
    run_id = report["audit"]["run_id"]
    for code, service in services.items():
        with (directory / f"{code}.csv").open("w", encoding="utf-8") as f:
            write_matches_csv(stored_matches(service.engine, run_id), f)


def _print_reconciliation(federation: Any, directory: Path) -> None:
    """Planted revoked-but-recognised certificates against the lists the nodes kept."""
    import csv

    if not directory.is_dir():
        return
    found = set()
    for path in sorted(directory.glob("*.csv")):
        with path.open(encoding="utf-8") as f:
            found |= {(path.stem, row["origin_certificate_no"]) for row in csv.DictReader(f)}
    planted = [p for p in federation.planted if p.kind == "revoked_still_recognised"]
    hits = sum(
        1
        for p in planted
        if any(code == p.municipality and number in p.description for code, number in found)
    )
    console.print(
        f"revocation reconciliation: {hits} of {len(planted)} planted revoked-but-recognised "
        f"certificates on the recognising nodes' own lists ({len(found)} listed in all); "
        f"lists in {directory}"
    )
