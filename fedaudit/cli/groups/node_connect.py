"""`fedaudit node connect`: run a node that dials out to a hub and never listens.

    fedaudit node connect --hub HOST:PORT --db URL --policy FILE --tls-cert/--tls-key/--tls-ca

The same node as `node serve` (policy, ledger, query log, ring, reconciliation, limits,
CRL), reached through one outbound connection to the oversight body's hub instead of
an inbound port (docs/operations.md, "Which mode"). Health and metrics, if asked for,
are served on loopback only: a dial-out node accepts no connection from the network.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from fedaudit.cli.errors import EXIT_OK, CliError
from fedaudit.cli.parsers import Parsers
from fedaudit.logs import notice

ORDER = 21
"""Right after `node serve` in `fedaudit node --help`."""


def register(parsers: Parsers) -> None:
    """Add `node connect`."""
    connect = parsers.node.add_parser(
        "connect",
        help="run a node that dials out to a hub (no inbound port)",
        description=(
            "Run a node that connects out to the federation's hub and answers the calls it "
            "relays: no inbound port is opened (health and metrics on loopback only, if asked)."
        ),
    )
    connect.add_argument("--hub", required=True, metavar="HOST:PORT", help="the hub to dial")
    connect.add_argument(
        "--hub-name",
        help="the name the hub's certificate must carry (default: the host of --hub)",
    )
    connect.add_argument(
        "--db",
        required=True,
        help="database URL or path of an existing SQLite file (made by `node import` or `node migrate`)",
    )
    connect.add_argument("--policy", required=True, type=Path, help="the node policy YAML")
    connect.add_argument("--tls-cert", type=Path, required=True, help="node certificate (PEM)")
    connect.add_argument("--tls-key", type=Path, required=True, help="node private key (PEM)")
    connect.add_argument(
        "--tls-ca",
        type=Path,
        required=True,
        help="federation CA: the hub's certificate and every auditor's signature must chain to it",
    )
    connect.add_argument(
        "--tls-crl",
        type=Path,
        help="the federation CA's revocation list: calls signed by a revoked auditor are refused",
    )
    connect.add_argument(
        "--max-workers", type=int, default=8, help="calls handled at the same time (default: 8)"
    )
    connect.add_argument(
        "--max-concurrent-per-requester",
        type=int,
        default=4,
        help="requests one requester may have in flight (0: no limit; default: 4)",
    )
    connect.add_argument(
        "--rate-per-requester",
        type=float,
        default=50.0,
        help="sustained requests per second per requester (0: no limit; default: 50)",
    )
    connect.add_argument(
        "--burst-per-requester",
        type=int,
        default=100,
        help="requests a requester may send at once above that rate (default: 100)",
    )
    connect.add_argument(
        "--query-db",
        help="database URL of a read-only role used for aggregations (default: --db)",
    )
    connect.add_argument(
        "--max-clock-skew",
        type=float,
        default=120.0,
        help="seconds an auditor's signed call may be old (or ahead); older ones are refused "
        "as stale or replayed (default: 120)",
    )
    from fedaudit.node.ops.observability import add_observability_arguments

    add_observability_arguments(connect)
    connect.set_defaults(handler=node_connect, insecure=False)


def node_connect(args: argparse.Namespace) -> int:
    """Dial the hub and answer its calls until SIGINT/SIGTERM; reconnect when it drops."""
    import grpc

    from fedaudit.cli.groups.node import SHUTDOWN_GRACE_SECONDS, _served_as, node_parts
    from fedaudit.cli.shared import warn_expiry
    from fedaudit.node.dialout import DialoutNode
    from fedaudit.node.rpc.ports import PortError
    from fedaudit.node.server import is_loopback
    from fedaudit.pki import tls

    host, sep, port = args.hub.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CliError(f"--hub: expected HOST:PORT, got {args.hub!r}")
    for flag, value in (("--health-host", args.health_host), ("--metrics-host", args.metrics_host)):
        if not is_loopback(value):
            raise CliError(
                f"{flag} {value}: a node that dials out listens on loopback only "
                "(127.0.0.1 or ::1); use `node serve` for a node that accepts connections"
            )
    if args.max_clock_skew <= 0:
        raise CliError(f"--max-clock-skew must be > 0 seconds, got {args.max_clock_skew}")
    try:
        checked = tls.check_tls_files(
            tls.TlsFiles(args.tls_cert, args.tls_key, args.tls_ca), "node"
        )
    except tls.TlsError as exc:
        raise CliError(str(exc)) from exc
    warn_expiry([args.tls_cert, args.tls_ca])
    parts = node_parts(args, with_identity=True)
    node = DialoutNode(
        parts.service,
        hub=args.hub,
        hub_name=args.hub_name or host.strip("[]"),
        identity=parts.identity,
        credentials=grpc.ssl_channel_credentials(root_certificates=checked.ca_pem),
        interceptors=parts.interceptors,
        dedup=parts.dedup,
        reconcile=parts.reconcile,
        max_workers=args.max_workers,
        max_skew_seconds=args.max_clock_skew,
    )
    try:
        parts.obs.attach(node, parts.engine)
    except PortError as exc:
        raise CliError(str(exc)) from exc
    except (OSError, RuntimeError) as exc:
        parts.obs.close()
        raise CliError(f"cannot start the metrics or health endpoint: {exc}") from exc
    node.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    served = _served_as(parts.engine)
    endpoints = parts.obs.endpoints()
    notice(
        f"{served.name}{served.state} dialling the hub at {args.hub} as {parts.identity.name} "
        "(outbound only)"
        + "".join(f"; {what} on {where}" for what, where in endpoints)
        + "; Ctrl-C stops",
        "node_connecting",
        municipality=served.municipality,
        data_version=served.data_version,
        hub=args.hub,
        **dict(endpoints),
    )
    stop.wait()
    notice("stopping", "node_stopping", grace_seconds=SHUTDOWN_GRACE_SECONDS)
    node.stop(grace=SHUTDOWN_GRACE_SECONDS)
    parts.obs.close()
    parts.engine.dispose()
    if parts.query_engine is not None:
        parts.query_engine.dispose()
    notice(f"{served.name} stopped", "node_stopped", municipality=served.municipality)
    return EXIT_OK
