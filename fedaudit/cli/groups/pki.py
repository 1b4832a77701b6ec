"""`fedaudit pki`: the federation's certificate authority on the command line.

    fedaudit pki init --dir DIR
    fedaudit pki issue-node NAME --dir DIR [--host H] [--host H ...]
    fedaudit pki issue-auditor NAME --dir DIR
    fedaudit pki show FILE [FILE ...] [--within-days 30] [--check]
    fedaudit pki request NAME --out DIR [--host H ...]      (at the node or auditor)
    fedaudit pki sign REQUEST --dir DIR --role node|auditor (at the CA)
    fedaudit pki revoke NAME --dir DIR --role node|auditor  (at the CA; writes crl.pem)
    fedaudit pki crl --dir DIR                              (re-publish crl.pem before it lapses)

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
    init.add_argument(
        "--name",
        default="fedaudit federation CA",
        help="the CA's common name (default: %(default)s)",
    )
    init.add_argument(
        "--days",
        type=int,
        default=pki.DEFAULT_CA_DAYS,
        help="validity in days (default: %(default)s)",
    )
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
        action="append",
        default=[],
        metavar="H",
        help=(
            "DNS name or IP address the node is reached at; one per --host, repeat it for "
            "more (default: none, only NAME)"
        ),
    )
    node.add_argument(
        "--days",
        type=int,
        default=pki.DEFAULT_LEAF_DAYS,
        help="validity in days (default: %(default)s)",
    )
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
    auditor.add_argument(
        "--days",
        type=int,
        default=pki.DEFAULT_LEAF_DAYS,
        help="validity in days (default: %(default)s)",
    )
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
    show.add_argument("files", nargs="+", type=Path, metavar="FILE", help="certificate files (PEM)")
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

    request = sub.add_parser(
        "request",
        help="make this machine's own key and a signing request for the CA",
        description=(
            "At the node or auditor: write OUT/NAME.key (0600, never leaves this machine) and "
            "OUT/NAME.csr.pem. Send only the .csr.pem to the CA operator; install the "
            "certificate they return next to the key."
        ),
    )
    request.add_argument("name", metavar="NAME", help="the node name (e.g. M01) or requester name")
    request.add_argument("--out", required=True, type=Path, help="where to write the key and CSR")
    request.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="H",
        help="a DNS name or IP address the node is reached at (repeat for several; nodes only)",
    )
    request.add_argument("--force", action="store_true", help="replace an existing key and CSR")
    request.set_defaults(handler=_request)

    sign = sub.add_parser(
        "sign",
        help="issue the certificate a signing request asks for",
        description=(
            "At the CA: check REQUEST (its signature, key type, name rules and host collisions "
            "as for issue-node/issue-auditor) and write DIR/nodes/NAME.pem or "
            "DIR/auditors/NAME.pem. The role is the CA's decision, never the request's."
        ),
    )
    sign.add_argument("request", metavar="REQUEST", type=Path, help="the .csr.pem file")
    sign.add_argument("--dir", required=True, type=Path, help="the PKI directory (holds the CA)")
    sign.add_argument("--role", required=True, choices=("node", "auditor"), help="what it may do")
    sign.add_argument(
        "--days",
        type=int,
        default=pki.DEFAULT_LEAF_DAYS,
        help=f"validity in days (default {pki.DEFAULT_LEAF_DAYS})",
    )
    sign.add_argument("--force", action="store_true", help="replace an existing certificate")
    sign.set_defaults(handler=_sign)

    revoke = sub.add_parser(
        "revoke",
        help="revoke a node or auditor certificate and publish the CRL",
        description=(
            "At the CA: add DIR/nodes/NAME.pem or DIR/auditors/NAME.pem to the revoked list and "
            "write DIR/crl.pem. Copy crl.pem to every node (node serve --tls-crl) and to the "
            "coordinator (audit run --tls-crl)."
        ),
    )
    revoke.add_argument("name", metavar="NAME", help="the node or requester name to revoke")
    revoke.add_argument("--dir", required=True, type=Path, help="the PKI directory (holds the CA)")
    revoke.add_argument(
        "--role",
        required=True,
        choices=("node", "auditor"),
        help="whether NAME is a node or an auditor certificate",
    )
    revoke.set_defaults(handler=_revoke)

    crl = sub.add_parser(
        "crl",
        help="re-publish the CRL (it lapses after 30 days)",
        description="At the CA: sign a fresh DIR/crl.pem from the revoked list.",
    )
    crl.add_argument("--dir", required=True, type=Path, help="the PKI directory (holds the CA)")
    crl.set_defaults(handler=_crl)


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


def _request(args: argparse.Namespace) -> int:
    from fedaudit.pki import enrolment

    with _input_errors():
        paths = enrolment.create_request(args.out, args.name, hosts=args.host, overwrite=args.force)
    print(f"key:     {paths.key}  (0600; stays on this machine)")
    print(f"request: {paths.request}  (send this file to the CA operator)")
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    from fedaudit.pki import enrolment

    with _input_errors():
        cert = enrolment.sign_request(
            args.dir, args.request, role=args.role, days=args.days, overwrite=args.force
        )
    print(f"certificate: {cert}  (send it back with {args.dir / pki.CA_CERT})")
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    from fedaudit.pki import enrolment

    with _input_errors():
        crl = enrolment.revoke(args.dir, args.name, role=args.role)
    print(f"revoked {args.role} {args.name}; CRL: {crl} (copy it to every node and coordinator)")
    return EXIT_OK


def _crl(args: argparse.Namespace) -> int:
    from fedaudit.pki import enrolment

    with _input_errors():
        crl = enrolment.publish_crl(args.dir)
    print(f"CRL: {crl} (valid {enrolment.CRL_DAYS} days)")
    return EXIT_OK


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
