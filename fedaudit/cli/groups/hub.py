"""`fedaudit hub serve|nodes`: the relay that nodes behind a firewall dial out to.

    fedaudit hub serve --tls-cert hub.pem --tls-key hub.key --tls-ca ca.pem [--tls-crl crl.pem]
    fedaudit hub nodes --hub HOST:PORT --tls-ca ca.pem

Run by the oversight body. Nodes (`fedaudit node connect`) and auditors (`fedaudit
audit run --hub`) connect to it; it checks their federation identity and the CRL and
relays signed calls it can neither forge nor answer (docs/hub.md).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from fedaudit.cli.errors import EXIT_OK, CliError
from fedaudit.cli.parsers import Parsers
from fedaudit.logs import notice

ORDER = 35
"""After `audit` in `fedaudit --help`."""


def register(parsers: Parsers) -> None:
    """Add `hub serve` and `hub nodes`."""
    group = parsers.root.add_parser(
        "hub",
        help="run the hub that dial-out nodes connect to",
        description="The hub: nodes that dial out connect to it; audits reach them through it.",
    )
    sub = group.add_subparsers(dest="hub_command", metavar="HUB_COMMAND", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the hub",
        description=(
            "Listen for nodes (`node connect`) and auditors (`audit run --hub`) over TLS. Both "
            "prove their federation identity by signature; revoked certificates are refused."
        ),
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    serve.add_argument("--port", type=int, default=50060, help="port (default: 50060)")
    serve.add_argument(
        "--tls-cert",
        type=Path,
        required=True,
        help="the hub's certificate (a serverAuth certificate naming the hub's host, "
        "e.g. `fedaudit pki issue-node hub --host hub.example.org`)",
    )
    serve.add_argument("--tls-key", type=Path, required=True, help="the hub's private key")
    serve.add_argument("--tls-ca", type=Path, required=True, help="the federation CA")
    serve.add_argument(
        "--tls-crl",
        type=Path,
        help="the federation CA's revocation list: revoked nodes and auditors are refused; "
        "re-read when the file changes (default: no revocation check)",
    )
    serve.add_argument(
        "--max-workers",
        type=int,
        default=64,
        help="connected nodes plus calls in flight the hub serves at once (default: 64)",
    )
    serve.set_defaults(handler=hub_serve)

    nodes = sub.add_parser(
        "nodes",
        help="list the nodes connected to a hub",
        description="Ask a hub which nodes are connected now.",
    )
    nodes.add_argument("--hub", required=True, metavar="HOST:PORT", help="the hub")
    nodes.add_argument("--hub-name", help="the hub certificate's name (default: the host)")
    nodes.add_argument("--tls-ca", type=Path, required=True, help="the federation CA")
    nodes.set_defaults(handler=hub_nodes)


def hub_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; connected nodes reconnect when it comes back."""
    from cryptography import x509

    from fedaudit.hub.admission import CrlFile
    from fedaudit.hub.server import start_hub_server
    from fedaudit.pki import tls
    from fedaudit.pki.authority import PkiError

    if not 1 <= args.port <= 65535:
        raise CliError(f"--port must be 1..65535, got {args.port}")
    if args.max_workers < 4:
        raise CliError(f"--max-workers must be at least 4, got {args.max_workers}")
    try:
        checked = tls.check_tls_files(
            tls.TlsFiles(args.tls_cert, args.tls_key, args.tls_ca), "node"
        )
    except tls.TlsError as exc:
        raise CliError(str(exc).replace("a node needs a node", "the hub needs a node")) from exc
    ca = tuple(x509.load_pem_x509_certificates(checked.ca_pem))
    crl = None
    if args.tls_crl is not None:
        try:
            crl = CrlFile(args.tls_crl, ca[0])
        except (OSError, ValueError, PkiError) as exc:
            raise CliError(f"--tls-crl: {exc}") from exc
    try:
        hub = start_hub_server(
            cert_pem=checked.cert_pem,
            key_pem=checked.key_pem,
            ca=ca,
            crl=crl,
            host=args.host,
            port=args.port,
            max_workers=args.max_workers,
        )
    except RuntimeError as exc:
        raise CliError(str(exc)) from exc
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    notice(
        f"hub serving on {args.host}:{hub.port} (TLS; "
        f"{'CRL checked' if crl else 'no CRL'}); Ctrl-C stops",
        "hub_started",
        address=f"{args.host}:{hub.port}",
        crl=crl is not None,
    )
    stop.wait()
    hub.stop(grace=2.0)
    notice("hub stopped", "hub_stopped")
    return EXIT_OK


def hub_nodes(args: argparse.Namespace) -> int:
    import grpc

    from fedaudit.cli.console import console
    from fedaudit.wire.v1 import hub_pb2, hub_pb2_grpc

    host = args.hub.rpartition(":")[0]
    if not host:
        raise CliError(f"--hub: expected HOST:PORT, got {args.hub!r}")
    try:
        ca = args.tls_ca.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.tls_ca}: {exc.strerror}") from exc
    channel = grpc.secure_channel(
        args.hub,
        grpc.ssl_channel_credentials(ca),
        options=[("grpc.ssl_target_name_override", args.hub_name or host.strip("[]"))],
    )
    try:
        names = (
            hub_pb2_grpc.HubStub(channel).Connected(hub_pb2.ConnectedRequest(), timeout=10).nodes
        )
    except grpc.RpcError as exc:
        raise CliError(f"the hub at {args.hub} did not answer: {exc.details()}") from exc
    finally:
        channel.close()
    console.print("\n".join(names) if names else "(no node connected)")
    return EXIT_OK
