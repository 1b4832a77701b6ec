"""Turning command-line arguments into domain objects, shared by several command groups.

Each helper reads one kind of input (a plan, a policy, a `--node` override, TLS files)
and turns the domain's own error into a `CliError`, so every command reports the same
problem with the same message and exit code 2. The domain modules are imported inside
the functions: this module is loaded to build the parser, and `fedaudit --help` should
not pay for SQLAlchemy models, gRPC channels or plan parsing.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedaudit.cli.errors import CliError

if TYPE_CHECKING:
    import grpc


def require_dir(path: Path) -> None:
    """Refuse a bundle path that is not a directory before anything touches the database."""
    if not path.is_dir():
        raise CliError(f"{path}: not a directory (a data bundle is a directory of CSV files)")


def sqlite_file(url: str) -> Path | None:
    """The SQLite file a `--db` value names (None for PostgreSQL or in-memory SQLite)."""
    from sqlalchemy.engine import make_url

    from fedaudit.node.store.db import normalise_url

    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def require_database(url: str) -> None:
    """Refuse a SQLite path that does not exist: opening it would create an empty database."""
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise CliError(
            f"{path}: no such node database\n"
            f"import a data bundle first: fedaudit node import BUNDLE_DIR --db {url}"
        )


def ensure_schema(engine: Any) -> None:
    """Create an empty database; refuse an older one (migrating is the officer's decision)."""
    from fedaudit.node.store import schema

    try:
        schema.ensure_schema(engine)
    except schema.SchemaError as exc:
        raise CliError(str(exc)) from exc


def load_policy(path: Path) -> Any:
    """The node policy at `path`; an invalid or unreadable file is a usage error."""
    from fedaudit.node.errors import PolicyError
    from fedaudit.node.privacy import policy

    try:
        return policy.load_policy(path)
    except PolicyError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"{path}: cannot read the policy file: {exc.strerror}") from exc


def load_plan(path: Path) -> Any:
    """The audit plan at `path`; an invalid or unreadable plan is a usage error."""
    from fedaudit.coordinator.errors import PlanError
    from fedaudit.coordinator.planning import plan

    try:
        return plan.load_plan(path)
    except PlanError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"{path}: cannot read the plan: {exc.strerror}") from exc


def parse_node_arg(text: str) -> tuple[str, str]:
    """Split a `--node NAME=HOST:PORT` option into (name, address)."""
    name, sep, address = text.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not name or not colon or not host or not port.isdigit():
        raise CliError(f"--node {text!r}: expected NAME=HOST:PORT, e.g. M01=127.0.0.1:50051")
    return name, address


def parse_node_args(texts: Iterable[str]) -> dict[str, str]:
    """All `--node` options as {name: address}; a later option for a name wins."""
    return dict(parse_node_arg(text) for text in texts)


def with_node_overrides(plan: Any, overrides: Mapping[str, str]) -> Any:
    """The plan with `--node` options added to or replacing its nodes (unchanged if none)."""
    if not overrides:
        return plan
    from fedaudit.coordinator.errors import PlanError

    nodes = {n.name: n.address for n in plan.nodes}
    nodes.update(overrides)
    try:
        return plan.with_nodes(nodes)
    except PlanError as exc:
        raise CliError(str(exc)) from exc


def warn_expiry(paths: list[Path]) -> None:
    """Warn at start: once expired, a certificate only shows up as 'unavailable' at the peer."""
    from fedaudit.pki.authority import PkiError, expiry_warnings

    try:
        warnings = expiry_warnings(paths)
    except PkiError as exc:
        raise CliError(str(exc)) from exc
    from fedaudit.logs import notice

    for w in warnings:
        notice(f"warning: {w.message}", "certificate_expires_soon", level="warning")


def server_credentials(args: argparse.Namespace) -> grpc.ServerCredentials | None:
    """A node's mTLS credentials from `--tls-*`, or None with `--insecure` (never both)."""
    from fedaudit.pki import tls

    files = (args.tls_cert, args.tls_key, args.tls_ca)
    if args.insecure:
        if any(files):
            raise CliError("--insecure and --tls-* exclude each other")
        return None
    if not all(files):
        raise CliError(
            "a node needs --tls-cert, --tls-key and --tls-ca (mTLS), or --insecure on a loopback address"
        )
    try:
        credentials = tls.server_credentials(tls.TlsFiles(*files))
    except tls.TlsError as exc:
        raise CliError(str(exc)) from exc
    warn_expiry([args.tls_cert, args.tls_ca])
    return credentials


def channel_credentials(
    args: argparse.Namespace, addresses: list[str], requester: str
) -> grpc.ChannelCredentials | None:
    """An auditor's mTLS credentials from `--tls-*`, or None with `--insecure`.

    `--insecure` is refused for any non-loopback node, and the certificate must name the
    plan's requester: nodes take the requester from the certificate, so a mismatch would
    only surface later as refusals at every node.
    """
    from fedaudit.node.server import is_loopback
    from fedaudit.pki import tls
    from fedaudit.pki.authority import describe_certificate, load_certificate

    files = (args.tls_cert, args.tls_key, args.tls_ca)
    if args.insecure:
        if any(files):
            raise CliError("--insecure and --tls-* exclude each other")
        remote = [a for a in addresses if not is_loopback(a.rpartition(":")[0])]
        if remote:
            raise CliError(
                f"--insecure is for loopback nodes only; not allowed for {', '.join(remote)}"
            )
        return None
    if not all(files):
        raise CliError(
            "an audit needs --tls-cert, --tls-key and --tls-ca (mTLS), or --insecure for loopback nodes"
        )
    try:
        credentials = tls.channel_credentials(tls.TlsFiles(*files))
    except tls.TlsError as exc:
        raise CliError(str(exc)) from exc
    name = describe_certificate(load_certificate(args.tls_cert)).common_name
    if name != requester:
        raise CliError(
            f"{args.tls_cert}: the auditor certificate is '{name}' but the plan asks as "
            f"'{requester}'; nodes take the requester from the certificate"
        )
    warn_expiry([args.tls_cert, args.tls_ca])
    return credentials


def open_node_database(url: str, *, table: str, missing: str) -> Any:
    """An engine on an existing node database holding `table`; else a usage error.

    Read-only commands must not create an empty database at a mistyped path, and
    must say in one line what is wrong instead of a driver traceback.
    """
    from sqlalchemy import inspect

    from fedaudit.cli.failures import explain
    from fedaudit.node.store.db import make_engine

    require_database(url)
    engine = make_engine(url)
    try:
        present = inspect(engine).has_table(table)
    except Exception as exc:
        engine.dispose()
        message = explain(exc)
        if message is None:
            raise
        raise CliError(message) from exc
    if not present:
        engine.dispose()
        raise CliError(f"{url}: {missing}")
    return engine


def peer_probe(args: argparse.Namespace) -> Any:
    """With `--tls-*`, a probe naming whose certificate answers at an address (else None).

    The coordinator uses it only to explain a failed pinned handshake in plain words.
    """
    if args.insecure or not all((args.tls_cert, args.tls_key, args.tls_ca)):
        return None
    from fedaudit.pki.tls import TlsFiles, peer_certificate_names

    files = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    return lambda address: peer_certificate_names(address, files)


def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    """`--hub` and `--hub-name`: reach the plan's nodes by name through a hub."""
    parser.add_argument(
        "--hub",
        metavar="HOST:PORT",
        help="reach the plan's nodes by name through this hub (nodes that dial out); "
        "needs the auditor's --tls-cert/--tls-key/--tls-ca, which sign every call",
    )
    parser.add_argument(
        "--hub-name",
        help="the name the hub's certificate must carry (default: the host of --hub)",
    )


def node_reach(args: argparse.Namespace, nodes: Iterable[Any], requester: str) -> Any:
    """reach(name, address) -> the keyword arguments that connect a transport to one node.

    Directly: mTLS credentials and the pinned node name (or --insecure on loopback).
    With --hub: a `HubChannel` to the node by name, every call signed with the
    auditor's key; plan nodes then need no address.
    """
    nodes = list(nodes)
    hub = getattr(args, "hub", None)
    if hub is None:
        missing = [n.name for n in nodes if not n.address]
        if missing:
            raise CliError(
                f"node(s) {', '.join(missing)} have no address in the plan: give one with "
                "--node NAME=HOST:PORT, or reach them through a hub with --hub HOST:PORT"
            )
        from fedaudit.pki.tls import pinned_channel_options

        credentials = channel_credentials(args, [n.address for n in nodes], requester)

        def direct(name: str, address: str) -> dict[str, Any]:
            # mTLS: each node must present a certificate for the name the plan gives it.
            options = pinned_channel_options(name) if credentials is not None else None
            return {"credentials": credentials, "channel_options": options}

        return direct
    access = hub_access(args, requester)
    from fedaudit.coordinator.running.hub_channel import HubChannel

    def through_hub(name: str, address: str) -> dict[str, Any]:
        return {"channel": HubChannel(access, name)}

    return through_hub


def hub_access(args: argparse.Namespace, requester: str) -> Any:
    """The auditor's way into the hub (`--hub`, `--hub-name`, the auditor's `--tls-*`)."""
    from fedaudit.coordinator.running.hub_channel import HubAccess
    from fedaudit.pki import tls
    from fedaudit.pki.authority import describe_certificate, load_certificate
    from fedaudit.pki.identity import IdentityError

    host, sep, port = args.hub.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CliError(f"--hub: expected HOST:PORT, got {args.hub!r}")
    if getattr(args, "insecure", False):
        raise CliError("--hub needs the auditor's certificate (--tls-*), not --insecure")
    files = (args.tls_cert, args.tls_key, args.tls_ca)
    if not all(files):
        raise CliError(
            "--hub needs --tls-cert, --tls-key and --tls-ca: the auditor signs every call "
            "with its certificate's key, and nodes check it"
        )
    try:
        tls.check_tls_files(tls.TlsFiles(*files), "auditor")
        access = HubAccess.load(
            args.hub,
            args.hub_name or host.strip("[]"),
            args.tls_cert,
            args.tls_key,
            args.tls_ca,
            revoked=_crl_check(args),
        )
    except (tls.TlsError, IdentityError, OSError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    name = describe_certificate(load_certificate(args.tls_cert)).common_name
    if name != requester:
        raise CliError(
            f"{args.tls_cert}: the auditor certificate is '{name}' but the plan asks as "
            f"'{requester}'; nodes take the requester from the signature"
        )
    warn_expiry([args.tls_cert, args.tls_ca])
    return access


def _crl_check(args: argparse.Namespace) -> Any:
    """With --tls-crl: a test for revoked certificates (nodes' answers through the hub)."""
    crl_path = getattr(args, "tls_crl", None)
    if crl_path is None:
        return None
    from cryptography import x509

    from fedaudit.pki.authority import PkiError
    from fedaudit.pki.enrolment import load_crl

    try:
        crl = load_crl(crl_path, x509.load_pem_x509_certificate(args.tls_ca.read_bytes()))
    except (OSError, ValueError, PkiError) as exc:
        raise CliError(f"--tls-crl: {exc}") from exc
    return crl.is_revoked
