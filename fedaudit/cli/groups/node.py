"""`fedaudit node import|validate|serve|budget`: a municipality's node, from data to service.

    fedaudit node validate BUNDLE_DIR
    fedaudit node import BUNDLE_DIR --db URL [--allow-municipality-change]
    fedaudit node serve --db URL --policy FILE (--tls-cert/--tls-key/--tls-ca | --insecure)
    fedaudit node budget --db URL --policy FILE

A bundle with problems exits 2 listing every problem and imports nothing. Day-to-day
operation (doctor, migrate, budget history, health, the query log) is in `node_ops`,
`health` and `node_log`.
"""

from __future__ import annotations

import argparse
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedaudit.cli.console import console, err_console, rho_text
from fedaudit.cli.errors import EXIT_INPUT, EXIT_OK, CliError
from fedaudit.cli.parsers import Parsers
from fedaudit.cli.shared import (
    ensure_schema,
    load_policy,
    require_database,
    require_dir,
    server_credentials,
    sqlite_file,
)
from fedaudit.logs import notice

ORDER = 20
"""After `demo`, before `audit` in `fedaudit --help`; first in `fedaudit node --help`."""


def register(parsers: Parsers) -> None:
    """Add `node import`, `node validate`, `node serve` and `node budget`."""
    imp = parsers.node.add_parser(
        "import",
        help="validate and import a data bundle",
        description="Validate a data bundle and import it as a new data version (all or nothing).",
    )
    imp.add_argument(
        "bundle", type=Path, metavar="BUNDLE_DIR", help="the data bundle: a directory of CSV files"
    )
    imp.add_argument(
        "--db",
        required=True,
        help="database URL or SQLite file path (a new SQLite file is created only if the import succeeds)",
    )
    imp.add_argument(
        "--allow-municipality-change",
        action="store_true",
        help="replace data of another municipality (normally refused as a likely mistake)",
    )
    imp.add_argument(
        "--reopen",
        action="append",
        default=[],
        metavar="YYYY-MM",
        help=(
            "this import corrects the data of that cohort (repeatable): questions about it "
            "become new and are charged to it again, even when the cohort is no longer open "
            "(docs/cohorts.md)"
        ),
    )
    imp.set_defaults(handler=node_import)

    val = parsers.node.add_parser(
        "validate",
        help="check a data bundle without importing it",
        description="Check a data bundle against the data contract; writes nothing.",
    )
    val.add_argument(
        "bundle", type=Path, metavar="BUNDLE_DIR", help="the data bundle: a directory of CSV files"
    )
    val.set_defaults(handler=node_validate)

    serve = parsers.node.add_parser(
        "serve",
        help="run a node",
        description=(
            "Serve DP queries over gRPC. Use mTLS (--tls-cert/--tls-key/--tls-ca) for anything but "
            "local development; --insecure is allowed on loopback addresses only."
        ),
    )
    serve.add_argument(
        "--db",
        required=True,
        help="database URL or path of an existing SQLite file (made by `node import` or `node migrate`)",
    )
    serve.add_argument("--policy", required=True, type=Path, help="the node policy YAML")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for every interface, which needs mTLS (default: 127.0.0.1)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=50051,
        help="gRPC port; refused when another process holds it (default: 50051)",
    )
    serve.add_argument("--tls-cert", type=Path, help="node certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="node private key (PEM)")
    serve.add_argument(
        "--tls-ca", type=Path, help="federation CA: clients must present a certificate it signed"
    )
    serve.add_argument(
        "--tls-crl",
        type=Path,
        help="the federation CA's revocation list (crl.pem): callers whose certificate it lists "
        "are refused; re-read when the file changes (default: no revocation check)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS (loopback only); such a node refuses the blinding ring (RING_UNAVAILABLE)",
    )
    serve.add_argument(
        "--max-workers", type=int, default=8, help="calls handled at the same time (default: 8)"
    )
    serve.add_argument(
        "--max-concurrent-per-requester",
        type=int,
        default=4,
        help="requests one requester may have in flight (0: no limit; default: 4)",
    )
    serve.add_argument(
        "--rate-per-requester",
        type=float,
        default=50.0,
        help="sustained requests per second per requester (0: no limit; default: 50)",
    )
    serve.add_argument(
        "--burst-per-requester",
        type=int,
        default=100,
        help="requests a requester may send at once above that rate (default: 100)",
    )
    serve.add_argument(
        "--query-db",
        help="database URL of a read-only role used for aggregations (default: --db)",
    )
    from fedaudit.node.ops.observability import add_observability_arguments

    add_observability_arguments(serve)
    serve.set_defaults(handler=node_serve)

    budget = parsers.node.add_parser(
        "budget",
        help="show privacy budget spent per requester",
        description="Show the privacy budget spent and remaining per requester.",
    )
    budget.add_argument("--db", required=True, help="database URL or SQLite file path")
    budget.add_argument(
        "--policy", required=True, type=Path, help="the node policy YAML (its caps are shown)"
    )
    budget.set_defaults(handler=node_budget)


def node_import(args: argparse.Namespace) -> int:
    """Import a bundle as a new data version; on any problem list them all and import nothing."""
    from fedaudit.node.errors import BundleError
    from fedaudit.node.ingest.bundle import import_bundle
    from fedaudit.node.store.db import make_engine

    require_dir(args.bundle)
    new_file = sqlite_file(args.db)
    if new_file is not None and new_file.exists():
        new_file = None  # an existing database is never removed
    engine = make_engine(args.db)
    imported = False
    try:
        ensure_schema(engine)
        result = import_bundle(
            engine,
            args.bundle,
            allow_municipality_change=args.allow_municipality_change,
            reopen=args.reopen,
        )
        imported = True
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
        if new_file is not None and not imported:
            _remove_sqlite(new_file)
    rows = ", ".join(f"{name} {count}" for name, count in result.row_counts.items())
    console.print(f"imported data version {result.data_version} ({rows})")
    if result.reopened_cohorts:
        console.print(f"reopened cohorts: {', '.join(result.reopened_cohorts)}")
    if result.empty_reopened_cohorts:
        empty = ", ".join(result.empty_reopened_cohorts)
        err_console.print(
            f"[bold yellow]warning:[/] --reopen {empty}: no person at this node is in "
            f"{'this cohort' if len(result.empty_reopened_cohorts) == 1 else 'these cohorts'}, "
            "so reopening corrects nothing there (questions about it are still charged "
            "anew); check the month",
            highlight=False,
        )
    quiet = [c for c in result.changed_cohorts if c not in result.reopened_cohorts]
    if quiet:
        shown = ", ".join(quiet[:12]) + (f" and {len(quiet) - 12} more" if len(quiet) > 12 else "")
        console.print(
            f"data changed in cohort(s) {shown}. Questions about the open cohorts among them "
            "are new anyway; for a closed cohort whose data you corrected, import again with "
            "--reopen YYYY-MM so that questions about it are answered on the corrected data "
            "(this local note is not shown to requesters)"
        )
    return EXIT_OK


def _remove_sqlite(path: Path) -> None:
    """Remove a SQLite file this command created (and its journals): nothing was imported."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def node_validate(args: argparse.Namespace) -> int:
    """Check a bundle against the data contract without a database, so it can run anywhere."""
    from fedaudit.node.errors import BundleError
    from fedaudit.node.ingest.bundle import validate_bundle

    require_dir(args.bundle)
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
    """Serve queries and the ring until SIGINT/SIGTERM, then drain and stop cleanly."""
    from fedaudit.node.rpc.ports import PortError
    from fedaudit.node.server import is_loopback, start_node_server

    credentials = server_credentials(args)
    if credentials is None and not is_loopback(args.host):
        raise CliError(
            f"--insecure serves on loopback addresses only, not {args.host!r}; "
            "use mTLS (--tls-cert, --tls-key, --tls-ca) to listen on a network"
        )
    parts = node_parts(args, with_identity=credentials is not None)
    service, engine, query_engine, obs = parts.service, parts.engine, parts.query_engine, parts.obs
    try:
        node = start_node_server(
            service,
            host=args.host,
            port=args.port,
            max_workers=args.max_workers,
            server_credentials=credentials,
            interceptors=parts.interceptors,
            dedup=parts.dedup,
            reconcile=parts.reconcile,
        )
    except (ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc
    try:
        obs.attach(node, engine)
    except PortError as exc:
        node.stop(grace=None)
        raise CliError(str(exc)) from exc
    except (OSError, RuntimeError) as exc:
        node.stop(grace=None)
        obs.close()
        raise CliError(f"cannot start the metrics or health endpoint: {exc}") from exc
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    identity = _served_as(engine)
    address = f"{args.host}:{node.port}"
    endpoints = obs.endpoints()
    notice(
        f"{identity.name}{identity.state} serving on {address} "
        f"({'mTLS' if credentials else 'insecure, loopback only'})"
        + "".join(f"; {what} on {where}" for what, where in endpoints)
        + "; Ctrl-C stops",
        "node_started",
        municipality=identity.municipality,
        data_version=identity.data_version,
        address=address,
        tls=credentials is not None,
        **dict(endpoints),
    )
    stop.wait()
    notice(
        f"stopping: finishing calls in flight (up to {SHUTDOWN_GRACE_SECONDS:g} s)",
        "node_stopping",
        grace_seconds=SHUTDOWN_GRACE_SECONDS,
    )
    node.stop(grace=SHUTDOWN_GRACE_SECONDS)  # the health port answers NOT_SERVING meanwhile
    obs.close()
    engine.dispose()
    if query_engine is not None:
        query_engine.dispose()
    notice(f"{identity.name} stopped", "node_stopped", municipality=identity.municipality)
    return EXIT_OK


SHUTDOWN_GRACE_SECONDS = 5.0
"""How long `node serve` lets calls in flight finish after SIGINT or SIGTERM."""


@dataclass
class NodeParts:
    """Everything a node process runs, whichever edge carries its calls (serve or connect)."""

    service: Any
    engine: Any
    query_engine: Any
    dedup: Any
    reconcile: Any
    obs: Any
    interceptors: list[Any]
    identity: Any


def node_parts(args: argparse.Namespace, *, with_identity: bool) -> NodeParts:
    """The node's service, ring, reconciliation and interceptors from its flags.

    `node serve` and `node connect` build the same node here: only the edge differs
    (a listening server, or a connection out to the hub).
    """
    from fedaudit.node.ops.observability import NodeObservability
    from fedaudit.node.query.service import NodeService
    from fedaudit.node.ring.reconcile import ReconcileService
    from fedaudit.node.ring.service import DedupService
    from fedaudit.node.rpc.guard import MalformedRequestGuard
    from fedaudit.node.rpc.limits import LimitSettings, RequestLimiter
    from fedaudit.node.store.db import make_engine

    policy = load_policy(args.policy)
    # A mistyped SQLite path would otherwise become a new, empty node serving nothing.
    require_database(args.db)
    if args.query_db:
        require_database(args.query_db)
    try:
        limits = LimitSettings(
            max_concurrent=args.max_concurrent_per_requester,
            rate_per_second=args.rate_per_requester,
            burst=args.burst_per_requester,
        )
    except ValueError as exc:
        raise CliError(f"limits: {exc}") from exc
    # The node's federation identity (none in --insecure mode): the ring proves membership
    # with it, revocation reconciliation and the query log's heads are signed with it.
    identity = _node_identity(args) if with_identity else None
    # The CRL guard refuses revoked callers; the ring also refuses revoked roster members.
    revocation = _revocation_guard(args)
    engine = make_engine(args.db)
    ensure_schema(engine)
    # Aggregations through a read-only role when one is given (docs/operations.md).
    query_engine = make_engine(args.query_db) if args.query_db else None
    service = NodeService(engine, policy, query_engine=query_engine, identity=identity)
    # The blinding ring for duplicate detection, on the same ledger and query log.
    # Ring membership is proven with the node certificate; an --insecure node has none
    # and refuses every ring (RING_UNAVAILABLE).
    dedup = DedupService(
        engine,
        policy,
        ledger=service.ledger,
        identity=identity,
        query_log=service.query_log,
        revocations=revocation[0].current if revocation else None,
    )
    # Revocation reconciliation signs with the node's federation key: none in --insecure mode.
    reconcile = ReconcileService(
        engine,
        policy,
        identity=identity,
        ledger=service.ledger,
        revocations=revocation[0].current if revocation else None,
    )
    obs = NodeObservability.from_args(args)
    # Metrics first, so they also count what later interceptors refuse.
    # The limiter before the guard: malformed requests still count against the sender.
    interceptors = [*obs.interceptors, *revocation, RequestLimiter(limits), MalformedRequestGuard()]
    return NodeParts(service, engine, query_engine, dedup, reconcile, obs, interceptors, identity)


@dataclass(frozen=True)
class _Identity:
    """Who this node is, for the start-up and shutdown lines."""

    name: str  # "node M01 (Name)"
    state: str  # ", data version V," or why it is not ready
    municipality: str | None = None
    data_version: str | None = None


def _served_as(engine: object) -> _Identity:
    """The municipality and data version in the database, or why there are none."""
    from sqlalchemy import select

    from fedaudit.node.store.models import DataVersion, Municipality

    try:
        with engine.connect() as conn:  # type: ignore[attr-defined]
            muni = conn.execute(select(Municipality)).first()
            version = conn.execute(
                select(DataVersion.version).order_by(DataVersion.id.desc()).limit(1)
            ).scalar()
    except Exception:  # the readiness watcher keeps reporting an unreachable database
        return _Identity("node", " (database not reachable; not ready)")
    if muni is None or version is None:
        return _Identity(
            "node", " without data (not ready; import a bundle with `fedaudit node import`)"
        )
    return _Identity(
        f"node {muni.municipality_code} ({muni.name})",
        f", data version {version},",
        muni.municipality_code,
        version,
    )


def node_budget(args: argparse.Namespace) -> int:
    """Show each requester's cap, spending and what is left this period, read-only."""
    from rich.table import Table

    from fedaudit.node.privacy.ledger import Ledger
    from fedaudit.node.query.service import utcnow
    from fedaudit.node.store.db import make_readonly_engine

    policy = load_policy(args.policy)
    require_database(args.db)
    engine = make_readonly_engine(args.db)
    ledger = Ledger(engine, policy)
    now = utcnow()
    table = Table(title=f"Privacy budget, period {policy.period_of(now)}")
    columns = ("requester", "cap (rho)", "spent", "remaining", "node share", "share left")
    for col in columns:
        table.add_column(
            col,
            justify="left" if col == "requester" else "right",
            no_wrap=col == "requester",
        )
    for name in sorted(policy.requesters):
        s = ledger.status(name, now)
        table.add_row(
            name,
            rho_text(s.requester_rho_cap),
            rho_text(s.requester_rho_spent),
            rho_text(s.requester_rho_remaining),
            rho_text(s.node_rho_cap),
            rho_text(s.node_rho_remaining),
        )
    console.print(table)
    console.print(
        f"node total {policy.node_rho_total:.4g} rho per cohort (never renewed), "
        f"reserved {policy.node_reserved_rho:.4g}; each requester may spend only its share, "
        "and its cap per period, on each cohort"
    )
    _print_cohort_spending(engine, policy)
    engine.dispose()
    return EXIT_OK


def _print_cohort_spending(engine: Any, policy: Any) -> None:
    """The node's spending per cohort: what bounds the loss of each cohort's persons."""
    from rich.table import Table

    from fedaudit.common.budget_units import cap_to_units, units_to_rho
    from fedaudit.node.ops.budget_history import cohort_spending

    runs = cohort_spending(engine, policy)
    if not runs:
        return
    cap = cap_to_units(policy.node_rho_total)
    table = Table(title="Node budget per cohort (month of a person's first record here)")
    for col in ("cohorts", "persons", "spent (rho)", "left of node total"):
        table.add_column(col, justify="left" if col == "cohorts" else "right", no_wrap=True)
    for index, run in enumerate(runs):
        # The first key also holds every earlier month.
        label = f"{run.first} .. {run.last}" if run.first != run.last else run.first
        if index == 0:
            label = f"up to {run.last}"
        table.add_row(
            label,
            str(run.persons),
            rho_text(units_to_rho(run.spent_units)),
            rho_text(units_to_rho(max(cap - run.spent_units, 0))),
        )
    console.print(table)


def _node_identity(args: argparse.Namespace) -> Any:
    """The node's federation identity from its TLS files (checked already by the server)."""
    from fedaudit.pki.identity import IdentityError, NodeIdentity

    try:
        return NodeIdentity.load(args.tls_cert, args.tls_key, args.tls_ca)
    except (OSError, ValueError, IdentityError) as exc:
        raise CliError(f"cannot load the node's federation identity: {exc}") from exc


def _revocation_guard(args: argparse.Namespace) -> list[Any]:
    """The CRL check, when --tls-crl is given (it needs mTLS to know who is calling)."""
    if args.tls_crl is None:
        return []
    if args.insecure:
        raise CliError("--tls-crl needs mTLS (--tls-cert/--tls-key/--tls-ca), not --insecure")
    from fedaudit.node.rpc.revocation import RevocationGuard
    from fedaudit.pki.authority import PkiError

    try:
        return [RevocationGuard(args.tls_crl, args.tls_ca)]
    except (OSError, ValueError, PkiError) as exc:
        raise CliError(f"--tls-crl: {exc}") from exc
