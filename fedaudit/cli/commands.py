"""What each `fedaudit` sub-command does, given its parsed arguments.

Kept apart from argument parsing (cli.py) so the commands read as plain calls
into the node, the coordinator and the report writer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fedaudit.cli.main import EXIT_FINDINGS, EXIT_INPUT, EXIT_OK, SEVERITIES, CliError

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


# --- node ---------------------------------------------------------------------------------


def node_import(args: argparse.Namespace) -> int:
    from fedaudit.node.errors import BundleError
    from fedaudit.node.ingest.bundle import import_bundle
    from fedaudit.node.store.db import make_engine

    _require_dir(args.bundle)
    engine = make_engine(args.db)
    _ensure_schema(engine)
    try:
        result = import_bundle(
            engine, args.bundle, allow_municipality_change=args.allow_municipality_change
        )
    except BundleError as exc:
        err_console.print(
            f"[bold red]{args.bundle}: {exc.total} problem(s); nothing was imported[/]"
        )
        for line in exc.problems:
            err_console.print(line, markup=False, highlight=False)
        if any(
            "--allow-municipality-change" in p or "explicit municipality change" in p
            for p in exc.problems
        ):
            err_console.print(
                "(use --allow-municipality-change if this node really changes municipality)"
            )
        return EXIT_INPUT
    finally:
        engine.dispose()
    rows = ", ".join(f"{name} {count}" for name, count in result.row_counts.items())
    console.print(f"imported data version {result.data_version} ({rows})")
    return EXIT_OK


def node_validate(args: argparse.Namespace) -> int:
    from fedaudit.node.errors import BundleError
    from fedaudit.node.ingest.bundle import validate_bundle

    _require_dir(args.bundle)
    try:
        parsed = validate_bundle(args.bundle)
    except BundleError as exc:
        err_console.print(f"[bold red]{args.bundle}: {exc.total} problem(s)[/]")
        for line in exc.problems:
            err_console.print(line, markup=False, highlight=False)
        return EXIT_INPUT
    rows = ", ".join(f"{name} {count}" for name, count in parsed.row_counts.items())
    console.print(f"{args.bundle}: valid ({rows})")
    return EXIT_OK


def node_serve(args: argparse.Namespace) -> int:
    from fedaudit.node.ops.observability import NodeObservability
    from fedaudit.node.query.service import NodeService
    from fedaudit.node.ring.service import DedupService
    from fedaudit.node.rpc.guard import MalformedRequestGuard
    from fedaudit.node.rpc.limits import LimitSettings, RequestLimiter
    from fedaudit.node.server import start_node_server
    from fedaudit.node.store.db import make_engine

    policy = _load_policy(args.policy)
    credentials = _server_credentials(args)
    engine = make_engine(args.db)
    _ensure_schema(engine)
    # Aggregations through a read-only role when one is given (docs/operations.md).
    query_engine = make_engine(args.query_db) if args.query_db else None
    service = NodeService(engine, policy, query_engine=query_engine)
    # The blinding ring for duplicate detection, on the same port and the same ledger.
    dedup = DedupService(engine, policy, ledger=service.ledger)
    obs = NodeObservability.from_args(args)
    try:
        limits = LimitSettings(
            max_concurrent=args.max_concurrent_per_requester,
            rate_per_second=args.rate_per_requester,
            burst=args.burst_per_requester,
        )
    except ValueError as exc:
        raise CliError(f"limits: {exc}") from exc
    try:
        node = start_node_server(
            service,
            host=args.host,
            port=args.port,
            max_workers=args.max_workers,
            server_credentials=credentials,
            # Metrics first, so they also count what later interceptors refuse.
            # The limiter before the guard: malformed requests still count against the sender.
            interceptors=[*obs.interceptors, RequestLimiter(limits), MalformedRequestGuard()],
            dedup=dedup,
        )
    except (ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc
    try:
        obs.attach(node, engine)
    except (OSError, RuntimeError) as exc:
        node.stop(grace=None)
        raise CliError(f"cannot start the metrics or health endpoint: {exc}") from exc
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    err_console.print(
        f"node for {'(no data yet)' if not service.ready() else 'municipality ready'} serving on "
        f"{args.host}:{node.port} ({'mTLS' if credentials else 'insecure, loopback only'}); Ctrl-C stops"
    )
    stop.wait()
    node.stop(grace=5.0)  # the health port keeps answering NOT_SERVING meanwhile
    obs.close()
    engine.dispose()
    if query_engine is not None:
        query_engine.dispose()
    return EXIT_OK


def node_budget(args: argparse.Namespace) -> int:
    from fedaudit.node.privacy.ledger import Ledger
    from fedaudit.node.query.service import utcnow
    from fedaudit.node.store.db import make_readonly_engine

    policy = _load_policy(args.policy)
    engine = make_readonly_engine(args.db)
    ledger = Ledger(engine, policy)
    now = utcnow()
    table = Table(title=f"Privacy budget, period {policy.period_of(now)}")
    for col in ("requester", "cap (rho)", "spent", "remaining", "node remaining"):
        table.add_column(col, justify="left" if col == "requester" else "right")
    for name in sorted(policy.requesters):
        s = ledger.status(name, now)
        table.add_row(
            name,
            f"{s.requester_rho_cap:.4g}",
            f"{s.requester_rho_spent:.4g}",
            f"{s.requester_rho_remaining:.4g}",
            f"{s.node_rho_remaining:.4g}",
        )
    console.print(table)
    engine.dispose()
    return EXIT_OK


# --- audit ----------------------------------------------------------------------------------


def audit_run(args: argparse.Namespace) -> int:
    from fedaudit.audit_reports.render import write_report
    from fedaudit.coordinator.ring.dedup import GrpcDedupTransport
    from fedaudit.coordinator.running.audit import default_run_id, run_audit
    from fedaudit.coordinator.running.audit_metrics import export_audit_metrics
    from fedaudit.coordinator.running.record import AnswerRecord, RecordError
    from fedaudit.coordinator.running.transport import GrpcNodeTransport

    plan = _load_plan(args.plan)
    overrides = dict(_parse_node_arg(a) for a in args.node)
    if overrides:
        nodes = {n.name: n.address for n in plan.nodes}
        nodes.update(overrides)
        from fedaudit.coordinator.errors import PlanError

        try:
            plan = plan.with_nodes(nodes)
        except PlanError as exc:
            raise CliError(str(exc)) from exc
    if not plan.nodes:
        raise CliError(
            f"{args.plan}: the plan names no nodes; add them in the plan or with --node NAME=HOST:PORT"
        )
    from fedaudit.pki.tls import pinned_channel_options

    credentials = _channel_credentials(args, [n.address for n in plan.nodes], plan.requester)
    transports = {
        n.name: GrpcNodeTransport(
            n.name,
            n.address,
            requester=plan.requester,
            credentials=credentials,
            # mTLS: the node must present a certificate for the name the plan gives it.
            channel_options=pinned_channel_options(n.name) if credentials is not None else None,
        )
        for n in plan.nodes
    }
    dedup_transports = (
        {
            n.name: GrpcDedupTransport(
                n.name,
                n.address,
                requester=plan.requester,
                credentials=credentials,
                channel_options=pinned_channel_options(n.name) if credentials is not None else None,
            )
            for n in plan.nodes
        }
        if plan.checks.duplicates is not None
        else {}
    )
    run_id = args.run_id or default_run_id(plan, dt.datetime.now(dt.UTC))
    try:
        record = AnswerRecord(args.record, run_id=run_id) if args.record else None
    except RecordError as exc:
        raise CliError(str(exc)) from exc
    started = time.monotonic()
    try:
        with progress_reporter(len(plan.nodes) * len(_queries(plan)), quiet=args.quiet) as progress:
            report = run_audit(
                plan,
                transports,
                run_id=run_id,
                progress=progress,
                on_answer=record,
                dedup_transports=dedup_transports,
            )
    finally:
        for t in [*transports.values(), *dedup_transports.values()]:
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
    return exit_code_for(report, args.fail_on)


def exit_code_for(report: Mapping[str, Any], fail_on: str | None) -> int:
    if fail_on is None:
        return EXIT_OK
    threshold = SEVERITIES.index(fail_on)
    hit = any(SEVERITIES.index(f["severity"]) >= threshold for f in report["findings"])
    return EXIT_FINDINGS if hit else EXIT_OK


def demo(args: argparse.Namespace) -> int:
    from fedaudit.cli.demo import run_demo

    return run_demo(args, console=console)


# --- shared helpers ---------------------------------------------------------------------------


def _queries(plan: Any) -> list[Any]:
    from fedaudit.coordinator.planning.checks import planned_queries

    return planned_queries(plan)


@contextmanager
def progress_reporter(total: int, *, quiet: bool) -> Iterator[Any]:
    """A rich progress bar fed by the audit's per-query callback."""
    if quiet:
        yield None
        return
    with Progress(
        TextColumn("[bold]audit[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task("querying nodes", total=total)
        lock = threading.Lock()

        def on_event(node: str, event: str) -> None:
            with lock:
                progress.update(task, advance=1, description=f"{node}: {event}")

        yield on_event


def print_summary(report: Mapping[str, Any]) -> None:
    audit = report["audit"]
    console.print(
        f"\n[bold]{audit['plan']}[/] ({audit['run_id']}): status {audit['status']}"
        + (f" — {audit['status_reason']}" if audit.get("status_reason") else "")
    )
    cov = Table(title="Coverage", show_lines=False)
    for col in ("node", "status", "reason"):
        cov.add_column(col)
    for n in report["coverage"]["nodes"]:
        cov.add_row(n["node"], n["status"], n["reason"] or "")
    console.print(cov)
    findings = report["findings"]
    ec = audit.get("error_control") or {}
    if not findings:
        console.print(
            f"No findings at {audit['confidence']:.0%} confidence "
            f"({ec.get('tests', 0)} tests, {ec.get('method', 'bonferroni')} correction)."
        )
        return
    console.print(
        f"\n[bold]Findings[/] ({len(findings)}; {ec.get('tests', 0)} tests, "
        f"{ec.get('method', '')} correction, {audit['confidence']:.0%} confidence)"
    )
    styles = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
    for f in findings:
        subject = ", ".join(str(v) for v in f["subject"].values() if v) or "whole region"
        console.print(
            f"[{styles.get(f['severity'], '')}]{f['severity']:>8}[/] {f['kind']} ({subject})"
        )
        console.print(Padding(Text(f["summary"]), (0, 0, 0, 9)))


def _ensure_schema(engine: Any) -> None:
    """Create an empty database; refuse an older one (migrating is the officer's decision)."""
    from fedaudit.node.store.schema import SchemaError, ensure_schema

    try:
        ensure_schema(engine)
    except SchemaError as exc:
        raise CliError(str(exc)) from exc


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise CliError(f"{path}: not a directory (a data bundle is a directory of CSV files)")


def _load_policy(path: Path) -> Any:
    from fedaudit.node.errors import PolicyError
    from fedaudit.node.privacy.policy import load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"{path}: cannot read the policy file: {exc.strerror}") from exc


def _load_plan(path: Path) -> Any:
    from fedaudit.coordinator.errors import PlanError
    from fedaudit.coordinator.planning.plan import load_plan

    try:
        return load_plan(path)
    except PlanError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"{path}: cannot read the plan: {exc.strerror}") from exc


def _parse_node_arg(text: str) -> tuple[str, str]:
    name, sep, address = text.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not name or not colon or not host or not port.isdigit():
        raise CliError(f"--node {text!r}: expected NAME=HOST:PORT, e.g. M01=127.0.0.1:50051")
    return name, address


def _warn_expiry(paths: list[Path]) -> None:
    """Warn at start: once expired, a certificate only shows up as 'unavailable' at the peer."""
    from fedaudit.pki.authority import PkiError, expiry_warnings

    try:
        warnings = expiry_warnings(paths)
    except PkiError as exc:
        raise CliError(str(exc)) from exc
    for w in warnings:
        err_console.print(
            f"warning: {w.message}", markup=False, highlight=False, style="bold yellow"
        )


def _server_credentials(args: argparse.Namespace) -> grpc.ServerCredentials | None:
    from fedaudit.pki.tls import TlsError, TlsFiles, server_credentials

    tls = (args.tls_cert, args.tls_key, args.tls_ca)
    if args.insecure:
        if any(tls):
            raise CliError("--insecure and --tls-* exclude each other")
        return None
    if not all(tls):
        raise CliError(
            "a node needs --tls-cert, --tls-key and --tls-ca (mTLS), or --insecure on a loopback address"
        )
    try:
        credentials = server_credentials(TlsFiles(args.tls_cert, args.tls_key, args.tls_ca))
    except TlsError as exc:
        raise CliError(str(exc)) from exc
    _warn_expiry([args.tls_cert, args.tls_ca])
    return credentials


def _channel_credentials(
    args: argparse.Namespace, addresses: list[str], requester: str
) -> grpc.ChannelCredentials | None:
    from fedaudit.node.server import is_loopback
    from fedaudit.pki.authority import describe_certificate, load_certificate
    from fedaudit.pki.tls import TlsError, TlsFiles, channel_credentials

    tls = (args.tls_cert, args.tls_key, args.tls_ca)
    if args.insecure:
        if any(tls):
            raise CliError("--insecure and --tls-* exclude each other")
        remote = [a for a in addresses if not is_loopback(a.rpartition(":")[0])]
        if remote:
            raise CliError(
                f"--insecure is for loopback nodes only; not allowed for {', '.join(remote)}"
            )
        return None
    if not all(tls):
        raise CliError(
            "an audit needs --tls-cert, --tls-key and --tls-ca (mTLS), or --insecure for loopback nodes"
        )
    try:
        credentials = channel_credentials(TlsFiles(args.tls_cert, args.tls_key, args.tls_ca))
    except TlsError as exc:
        raise CliError(str(exc)) from exc
    name = describe_certificate(load_certificate(args.tls_cert)).common_name
    if name != requester:
        raise CliError(
            f"{args.tls_cert}: the auditor certificate is '{name}' but the plan asks as "
            f"'{requester}'; nodes take the requester from the certificate"
        )
    _warn_expiry([args.tls_cert, args.tls_ca])
    return credentials
