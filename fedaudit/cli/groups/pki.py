"""`fedaudit pki`: the federation's certificate authority on the command line.

    fedaudit pki init --dir DIR
    fedaudit pki issue-node NAME --dir DIR --host H [--host H ...]
    fedaudit pki issue-auditor NAME --dir DIR
    fedaudit pki show FILE [FILE ...] [--within-days 30] [--check]

All certificate logic is in fedaudit.pki.authority; this module only parses and prints.
Bad input (a name that cannot be a certificate identity, an existing file without
--force, no CA in DIR, an unreadable certificate) exits 2 with the reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedaudit.cli.errors import EXIT_FINDINGS, EXIT_OK, CliError
from fedaudit.cli.parsers import Parsers
from fedaudit.pki import authority as pki


def register(parsers: Parsers) -> None:
    group = parsers.root.add_parser(
        "pki",
        help="create the federation CA and issue node and auditor certificates",
        description=(
            "The federation's certificate authority: nodes accept only clients with an auditor "
            "certificate of this CA (its name is the requester in their policy), and the "
            "coordinator accepts a node only if its certificate names that node. "
            "See docs/security.md."
        ),
    )
    sub = group.add_subparsers(dest="pki_command", metavar="PKI_COMMAND", required=True)

    init = sub.add_parser(
        "init",
        help="create the federation CA (ca.pem, ca.key)",
        description="Create a federation CA in DIR: ca.pem (distribute it) and ca.key (0600, "
        "keep it offline).",
    )
    init.add_argument("--dir", required=True, type=Path, help="the PKI directory")
    init.add_argument("--name", default="fedaudit federation CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=pki.DEFAULT_CA_DAYS, help="validity in days")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=_init)

    node = sub.add_parser(
        "issue-node",
        help="issue a node (server) certificate",
        description=(
            "Issue DIR/nodes/NAME.pem and NAME.key: CN and DNS SAN = NAME (the node's name in "
            "audit plans), plus each --host as a SAN; serverAuth only."
        ),
    )
    node.add_argument("name", metavar="NAME", help="the node name (as in audit plans), e.g. M01")
    node.add_argument("--dir", required=True, type=Path, help="the PKI directory (holds the CA)")
    node.add_argument(
        "--host",
        action="extend",
        nargs="+",
        default=[],
        metavar="H",
        help="DNS name or IP address the node is reached at (repeatable)",
    )
    node.add_argument("--days", type=int, default=pki.DEFAULT_LEAF_DAYS, help="validity in days")
    node.add_argument("--force", action="store_true", help="replace an existing certificate")
    node.set_defaults(handler=_issue_node)

    auditor = sub.add_parser(
        "issue-auditor",
        help="issue an auditor (client) certificate",
        description=(
            "Issue DIR/auditors/NAME.pem and NAME.key: CN = NAME, the requester name nodes list "
            "in their policy; clientAuth only."
        ),
    )
    auditor.add_argument("name", metavar="NAME", help="the requester name, e.g. oversight-board")
    auditor.add_argument("--dir", required=True, type=Path, help="the PKI directory")
    auditor.add_argument("--days", type=int, default=pki.DEFAULT_LEAF_DAYS, help="validity in days")
    auditor.add_argument("--force", action="store_true", help="replace an existing certificate")
    auditor.set_defaults(handler=_issue_auditor)

    show = sub.add_parser(
        "show",
        help="show certificates and warn about expiry",
        description=(
            "Print subject, SANs, issuer, role and validity of each certificate, and warn about "
            "any that expires within --within-days."
        ),
    )
    show.add_argument("files", nargs="+", type=Path, metavar="FILE")
    show.add_argument(
        "--within-days",
        type=int,
        default=pki.EXPIRY_WARNING_DAYS,
        help=f"warn when a certificate expires within this many days (default {pki.EXPIRY_WARNING_DAYS})",
    )
    show.add_argument(
        "--check", action="store_true", help="exit 1 when any certificate triggers a warning"
    )
    show.set_defaults(handler=_show)


def _init(args: argparse.Namespace) -> int:
    with _input_errors():
        paths = pki.init_ca(args.dir, name=args.name, days=args.days, overwrite=args.force)
    print(f"CA certificate: {paths.cert}  (give it to every node and auditor)")
    print(f"CA key:         {paths.key}  (0600; keep it offline, it signs every identity)")
    return EXIT_OK


def _issue_node(args: argparse.Namespace) -> int:
    with _input_errors():
        paths = pki.issue_node_certificate(
            args.dir, args.name, hosts=args.host, days=args.days, overwrite=args.force
        )
    _print_issued(paths)
    return EXIT_OK


def _issue_auditor(args: argparse.Namespace) -> int:
    with _input_errors():
        paths = pki.issue_auditor_certificate(
            args.dir, args.name, days=args.days, overwrite=args.force
        )
    _print_issued(paths)
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC)
    with _input_errors():
        certs = [(path, pki.load_certificate(path)) for path in args.files]
        warnings = pki.expiry_warnings(args.files, args.within_days, now=now)
    for i, (path, cert) in enumerate(certs):
        info = pki.describe_certificate(cert, path)
        if i:
            print()
        print(f"{path}")
        print(f"  role:        {info.role}")
        print(f"  subject:     {info.subject}")
        sans = [f"DNS:{d}" for d in info.dns_names] + [f"IP:{ip}" for ip in info.ip_addresses]
        print(f"  SANs:        {', '.join(sans) or '(none)'}")
        print(f"  issuer:      {info.issuer}")
        print(f"  valid from:  {info.not_before:%Y-%m-%d %H:%M} UTC")
        print(
            f"  valid until: {info.not_after:%Y-%m-%d %H:%M} UTC "
            f"({pki.days_until_expiry(cert, now)} days left)"
        )
        print(f"  sha256:      {info.sha256_fingerprint}")
    for warning in warnings:
        print(f"fedaudit: warning: {warning.message}", file=sys.stderr)
    return EXIT_FINDINGS if args.check and warnings else EXIT_OK


def _print_issued(paths: pki.CertKeyPaths) -> None:
    print(f"certificate: {paths.cert}")
    print(f"key:         {paths.key}  (0600; hand it over only through a secure channel)")


@contextmanager
def _input_errors() -> Iterator[None]:
    """Turn PkiError into CliError (exit 2, the message without a traceback)."""
    try:
        yield
    except pki.PkiError as exc:
        raise CliError(str(exc)) from exc
