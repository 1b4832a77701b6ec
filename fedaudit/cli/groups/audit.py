"""`fedaudit audit run`: run an audit plan against running nodes and write the report.

    fedaudit audit run PLAN [--node NAME=HOST:PORT ...] (--tls-* | --insecure) [--fail-on SEV]

Exit codes (DESIGN.md 6.2): 0 the audit is complete and no finding reached `--fail-on`;
1 a finding reached `--fail-on`; 2 a usage or input problem; 3 the audit was incomplete
(failed, or partial without `--allow-partial`). Re-using `--run-id` replays the answers the nodes stored,
so a rerun costs no budget.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedaudit.cli.console import console, err_console, print_summary, progress_reporter
from fedaudit.cli.errors import EXIT_INTERRUPTED, SEVERITIES, CliError
from fedaudit.cli.interrupt import AnswerCounter, interruptible
from fedaudit.cli.parsers import Parsers
from fedaudit.cli.shared import (
    add_hub_arguments,
    load_plan,
    node_reach,
    parse_node_args,
    peer_probe,
    with_node_overrides,
)

ORDER = 30
"""After `demo` and `node` in `fedaudit --help`."""


def register(parsers: Parsers) -> None:
    """Add `audit run`."""
    run = parsers.audit.add_parser(
        "run",
        help="run an audit plan and write the report",
        description="Run an audit plan against running nodes and write report.json and report.html.",
    )
    run.add_argument("plan", type=Path, metavar="PLAN", help="the audit plan (YAML)")
    run.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="add or override a node (repeatable)",
    )
    run.add_argument(
        "--out",
        type=Path,
        default=Path("audit-report"),
        help="directory for report.json and report.html, created if needed (default: ./audit-report)",
    )
    run.add_argument(
        "--run-id",
        help="name of this run (default: plan name and date); re-using it replays stored answers",
    )
    run.add_argument(
        "--fail-on",
        choices=SEVERITIES,
        help="exit 1 when a finding has this severity or higher (default: exit 0 whatever is found)",
    )
    run.add_argument(
        "--allow-partial",
        action="store_true",
        help="accept a partial audit (a node missing): exit 0/1 by findings instead of 3; "
        "a failed audit still exits 3",
    )
    run.add_argument("--tls-cert", type=Path, help="auditor certificate (PEM)")
    run.add_argument("--tls-key", type=Path, help="auditor private key (PEM)")
    run.add_argument("--tls-ca", type=Path, help="federation CA certificate (PEM)")
    run.add_argument(
        "--tls-crl",
        type=Path,
        help="the federation CA's revocation list: nodes whose certificate it lists are not "
        "contacted and show as unavailable (default: no revocation check)",
    )
    run.add_argument("--insecure", action="store_true", help="no TLS (loopback nodes only)")
    add_hub_arguments(run)
    run.add_argument("--quiet", action="store_true", help="no progress bar (default: show it)")
    from fedaudit.coordinator.running.audit_metrics import add_metrics_arguments

    add_metrics_arguments(run)
    run.add_argument(
        "--record",
        type=Path,
        help=(
            "append what each node answered to this JSON-lines file, created with its directory "
            "if needed (compare with a node's log; default: no record)"
        ),
    )
    run.set_defaults(handler=audit_run)

    preview = parsers.audit.add_parser(
        "preview",
        help="the minimum gap each check can detect, from free node preflights",
        description=(
            "Ask every node for a free preflight of the plan's queries (nothing is charged or "
            "read) and print, per check and subject size, the smallest gap the audit finds with "
            "80%% probability at the plan's cost and confidence, next to the same figure for a "
            "central analysis without privacy noise (sampling error only)."
        ),
    )
    preview.add_argument("plan", type=Path, metavar="PLAN", help="audit plan YAML")
    preview.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="add or override a node (repeatable)",
    )
    preview.add_argument(
        "--sizes",
        default="300,3000",
        help="subject sizes (denominators) to show, comma-separated (default: 300,3000)",
    )
    preview.add_argument("--tls-cert", type=Path, help="auditor certificate (PEM)")
    preview.add_argument("--tls-key", type=Path, help="auditor private key (PEM)")
    preview.add_argument("--tls-ca", type=Path, help="federation CA certificate (PEM)")
    preview.add_argument("--insecure", action="store_true", help="no TLS (loopback nodes only)")
    add_hub_arguments(preview)
    preview.set_defaults(handler=audit_preview)


def audit_run(args: argparse.Namespace) -> int:
    """Run the plan over gRPC, write report.json and report.html, print the summary."""
    from fedaudit.audit_reports.render import write_report
    from fedaudit.coordinator.planning.checks import planned_queries
    from fedaudit.coordinator.ring.reconcile import GrpcReconcileTransport
    from fedaudit.coordinator.ring.relay import GrpcDedupTransport
    from fedaudit.coordinator.running.audit import default_run_id, run_audit
    from fedaudit.coordinator.running.audit_metrics import export_audit_metrics
    from fedaudit.coordinator.running.record import AnswerRecord, RecordError
    from fedaudit.coordinator.running.transport import GrpcNodeTransport, UnavailableTransport

    plan = load_plan(args.plan)
    plan = with_node_overrides(plan, parse_node_args(args.node))
    if not plan.nodes:
        raise CliError(
            f"{args.plan}: the plan names no nodes; add them in the plan or with --node NAME=HOST:PORT"
        )
    # Directly (mTLS, by address) or through a hub (by name, every call signed).
    reach = node_reach(args, plan.nodes, plan.requester)
    probe = peer_probe(args) if args.hub is None else None
    transports = {
        n.name: GrpcNodeTransport(
            n.name,
            n.address,
            requester=plan.requester,
            peer_names=probe,
            **reach(n.name, n.address),
        )
        for n in plan.nodes
    }

    def transports_of(kind: Any, wanted: object) -> dict[str, Any]:
        """One `kind` transport per plan node when the plan has the check that uses it."""
        if wanted is None:
            return {}
        return {
            n.name: kind(n.name, n.address, requester=plan.requester, **reach(n.name, n.address))
            for n in plan.nodes
        }

    dedup_transports = transports_of(GrpcDedupTransport, plan.checks.duplicates)
    reconcile_transports = transports_of(GrpcReconcileTransport, plan.checks.revocation)
    for name, reason in _revoked_nodes(args, plan).items():
        transports[name].close()
        address = transports[name].address
        transports[name] = UnavailableTransport(name, address, reason)
        dedup_transports.pop(name, None)
        reconcile_transports.pop(name, None)
    run_id = args.run_id or default_run_id(plan, dt.datetime.now(dt.UTC))
    try:
        if args.record:
            args.record.parent.mkdir(parents=True, exist_ok=True)
        record = AnswerRecord(args.record, run_id=run_id) if args.record else None
    except RecordError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"--record {args.record}: cannot write there: {exc.strerror}") from exc
    counter = AnswerCounter(record)
    started = time.monotonic()
    try:
        total = len(plan.nodes) * len(planned_queries(plan))
        with (
            interruptible(
                [*transports.values(), *dedup_transports.values(), *reconcile_transports.values()]
            ),
            progress_reporter(total, quiet=args.quiet) as progress,
        ):
            report = run_audit(
                plan,
                transports,
                run_id=run_id,
                progress=progress,
                on_answer=counter,
                on_refusal=record.refused if record is not None else None,
                dedup_transports=dedup_transports,
                reconcile_transports=reconcile_transports,
            )
    except KeyboardInterrupt:
        err_console.print(interrupted_message(counter, run_id), markup=False, highlight=False)
        return EXIT_INTERRUPTED
    finally:
        for t in [*transports.values(), *dedup_transports.values(), *reconcile_transports.values()]:
            t.close()
        if record is not None:
            record.close()
    export_audit_metrics(
        report,
        time.monotonic() - started,
        textfile_dir=args.metrics_textfile,
        pushgateway=args.pushgateway,
    )
    json_path, html_path = write_report(report, args.out)
    print_summary(report)
    console.print(f"\nreport: {json_path}\n        {html_path}")
    return exit_code_for(report, args.fail_on, allow_partial=args.allow_partial)


def interrupted_message(counter: AnswerCounter, run_id: str) -> str:
    """What an interrupted audit did, and how to finish it without paying twice."""
    done = (
        f"{counter.received} answer(s) from {len(counter.nodes)} node(s) arrived "
        f"({counter.charged} charged, {counter.replayed} replayed)"
        if counter.received
        else "no answer arrived"
    )
    return (
        f"audit interrupted: {done}; no report was written.\n"
        f"Re-run with --run-id {run_id}: what the nodes already charged for this run is "
        "replayed at no cost."
    )


def exit_code_for(
    report: Mapping[str, Any], fail_on: str | None, *, allow_partial: bool = False
) -> int:
    """EXIT_INCOMPLETE for an incomplete audit, else EXIT_FINDINGS at `fail_on`, else EXIT_OK."""
    from fedaudit.coordinator.running.outcome import exit_code

    return exit_code(report, fail_on, allow_partial=allow_partial)


def _revoked_nodes(args: argparse.Namespace, plan: Any) -> dict[str, str]:
    """Plan nodes whose certificate is on the CA's CRL (--tls-crl), with the reason."""
    if args.tls_crl is None:
        return {}
    if args.hub is not None:
        # Through the hub, the hub refuses revoked nodes and every answer's signing
        # certificate is checked against the CRL (`node_reach`); nothing to probe here.
        return {}
    if args.insecure:
        raise CliError("--tls-crl needs mTLS (--tls-cert/--tls-key/--tls-ca), not --insecure")
    from cryptography import x509

    from fedaudit.pki.authority import PkiError
    from fedaudit.pki.enrolment import load_crl
    from fedaudit.pki.tls import TlsFiles, peer_certificate

    files = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    try:
        crl = load_crl(args.tls_crl, x509.load_pem_x509_certificate(args.tls_ca.read_bytes()))
    except (OSError, ValueError, PkiError) as exc:
        raise CliError(f"--tls-crl: {exc}") from exc
    revoked = {}
    for node in plan.nodes:
        try:
            certificate = peer_certificate(node.address, files, node.name, timeout=5.0)
        except (OSError, ValueError):
            continue  # unreachable now: the audit's own calls will say so
        if crl.is_revoked(certificate):
            revoked[node.name] = (
                f"the certificate {node.name} presents (serial {certificate.serial_number}) "
                "was revoked by the federation CA; the node was not contacted"
            )
    return revoked


def audit_preview(args: argparse.Namespace) -> int:
    """Preflight the plan at every node (free) and print the minimum detectable gaps."""
    from fedaudit.cli.console import console, err_console
    from fedaudit.coordinator.errors import CoordinatorError
    from fedaudit.coordinator.planning.checks import planned_queries
    from fedaudit.coordinator.planning.preview import QueryNoise, detectable_gaps
    from fedaudit.coordinator.running.transport import GrpcNodeTransport

    plan = load_plan(args.plan)
    plan = with_node_overrides(plan, parse_node_args(args.node))
    if not plan.nodes:
        raise CliError(
            f"{args.plan}: the plan names no nodes; add them in the plan or with --node NAME=HOST:PORT"
        )
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError as exc:
        raise CliError(
            f"--sizes: expected whole numbers such as 300,3000, got {args.sizes!r}"
        ) from exc
    if not sizes or min(sizes) < 1:
        raise CliError(f"--sizes: expected positive whole numbers, got {args.sizes!r}")
    reach = node_reach(args, plan.nodes, plan.requester)
    probe = peer_probe(args) if args.hub is None else None
    queries = planned_queries(plan)
    noise: dict[str, QueryNoise] = {}
    answered = 0
    for n in plan.nodes:
        transport = GrpcNodeTransport(
            n.name,
            n.address,
            requester=plan.requester,
            peer_names=probe,
            retries=0,
            **reach(n.name, n.address),
        )
        try:
            for pq in queries:
                pre = transport.preflight(pq.spec, f"preview-{pq.key}", timeout=10.0)
                old = noise.get(pq.key)
                noise[pq.key] = QueryNoise(
                    max(pre.noise.variance, old.variance if old else 0.0),
                    max(pre.cell_count, old.cells if old else 0),
                )
            answered += 1
        except CoordinatorError as exc:
            err_console.print(f"warning: {n.name}: {exc}", markup=False, soft_wrap=True)
        finally:
            transport.close()
    if not answered:
        raise CliError("no node answered a preflight, so there is nothing to preview")
    rows = detectable_gaps(
        plan,
        noise,
        nodes=len(plan.nodes),
        sizes=sizes,
        ring=plan.checks.duplicates is not None,
    )
    _print_preview(plan, rows, answered, len(plan.nodes))
    console.print(
        "n is the subject's size (the check's denominator); tol the plan's tolerance. DP is the "
        "smallest true gap (in percentage points) the audit finds with 80% probability at "
        f"{100 * plan.confidence:g}% confidence audit-wide; 'no DP' the same audit without "
        "privacy noise (sampling error only). The ratio compares the margins beyond the "
        "tolerance: the price of privacy. Assumed: typical rates, a reference of the other "
        "nodes (municipalities) or 5 providers per node (providers) of the same size.",
        soft_wrap=True,
    )
    return 0


def _print_preview(plan: Any, rows: list[Any], answered: int, nodes: int) -> None:
    from rich.table import Table

    from fedaudit.cli.console import console

    table = Table(title=f"{plan.name}: minimum detectable gap ({answered} of {nodes} nodes)")
    # Narrow headers: the table must fit 80 columns (a pipe or a log is not a terminal).
    for col in ("check", "subject", "n", "tol", "DP", "no DP", "ratio"):
        table.add_column(
            col, justify="left" if col in ("check", "subject") else "right", no_wrap=True
        )
    for r in rows:
        table.add_row(
            r.label,
            r.subject,
            str(r.size),
            f"{100 * r.tolerance:.0f}",
            f"{100 * r.with_noise:.1f}",
            f"{100 * r.without_noise:.1f}",
            f"{r.ratio:.2f}",
        )
    console.print(table)
