"""The `fedaudit` command line: parse arguments, build configuration, call the domain.

Exit codes: 0 success; 1 the audit ran and found findings at or above `--fail-on`;
2 usage or input error (a message says what is wrong, nothing was written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedaudit import __version__

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_INPUT = 2

SEVERITIES = ("info", "warning", "critical")


class CliError(Exception):
    """A usage or input problem; printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedaudit",
        description=(
            "Federated, differentially private audits of vocational certificates. "
            "Municipalities run nodes over their own registries; an oversight body runs audits "
            "that nodes answer only with noisy aggregates."
        ),
    )
    parser.add_argument("--version", action="version", version=f"fedaudit {__version__}")
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="log format on stderr (default: console in a terminal, JSON otherwise)",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error")
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="run a whole federation locally on synthetic data (or your bundles) and write a report",
        description=(
            "Generate a synthetic federation with planted anomalies (or use --bundles), import one "
            "node per bundle, start the nodes and a coordinator on loopback, run the default audit "
            "plan and write report.json and report.html."
        ),
    )
    demo.add_argument(
        "--bundles", nargs="+", type=Path, metavar="DIR", help="data bundles, one node each"
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("fedaudit-demo"),
        help="output directory (default: ./fedaudit-demo)",
    )
    demo.add_argument("--plan", type=Path, help="audit plan to run instead of the default plan")
    demo.add_argument("--seed", type=int, default=7, help="seed of the synthetic federation")
    demo.add_argument(
        "--candidates", type=int, default=3000, help="synthetic candidates per municipality"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")

    node = sub.add_parser(
        "node", help="operate a municipality's node", description="Operate a municipality's node."
    )
    node_sub = node.add_subparsers(dest="node_command", metavar="NODE_COMMAND", required=True)

    imp = node_sub.add_parser(
        "import",
        help="validate and import a data bundle",
        description="Validate a data bundle and import it as a new data version (all or nothing).",
    )
    imp.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    imp.add_argument("--db", required=True, help="database URL or SQLite file path")
    imp.add_argument(
        "--allow-municipality-change",
        action="store_true",
        help="replace data of another municipality (normally refused as a likely mistake)",
    )

    val = node_sub.add_parser(
        "validate",
        help="check a data bundle without importing it",
        description="Check a data bundle against the data contract; writes nothing.",
    )
    val.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")

    serve = node_sub.add_parser(
        "serve",
        help="run a node",
        description=(
            "Serve DP queries over gRPC. Use mTLS (--tls-cert/--tls-key/--tls-ca) for anything but "
            "local development; --insecure is allowed on loopback addresses only."
        ),
    )
    serve.add_argument("--db", required=True, help="database URL or SQLite file path")
    serve.add_argument("--policy", required=True, type=Path, help="the node policy YAML")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument("--tls-cert", type=Path, help="node certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="node private key (PEM)")
    serve.add_argument(
        "--tls-ca", type=Path, help="federation CA: clients must present a certificate it signed"
    )
    serve.add_argument("--insecure", action="store_true", help="no TLS (loopback only)")
    serve.add_argument("--max-workers", type=int, default=8)
    serve.add_argument(
        "--max-concurrent-per-requester",
        type=int,
        default=4,
        help="requests one requester may have in flight (0: no limit)",
    )
    serve.add_argument(
        "--rate-per-requester",
        type=float,
        default=50.0,
        help="sustained requests per second per requester (0: no limit)",
    )
    serve.add_argument(
        "--burst-per-requester",
        type=int,
        default=100,
        help="requests a requester may send at once above that rate",
    )
    serve.add_argument(
        "--query-db",
        help="database URL of a read-only role used for aggregations (default: --db)",
    )
    from fedaudit.node.ops.observability import add_observability_arguments

    add_observability_arguments(serve)

    budget = node_sub.add_parser(
        "budget",
        help="show privacy budget spent per requester",
        description="Show the privacy budget spent and remaining per requester.",
    )
    budget.add_argument("--db", required=True)
    budget.add_argument("--policy", required=True, type=Path)

    audit = sub.add_parser(
        "audit", help="run audits", description="Run audit plans against running nodes."
    )
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="AUDIT_COMMAND", required=True)
    run = audit_sub.add_parser(
        "run",
        help="run an audit plan and write the report",
        description="Run an audit plan against running nodes and write report.json and report.html.",
    )
    run.add_argument("plan", type=Path, metavar="PLAN")
    run.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="add or override a node (repeatable)",
    )
    run.add_argument("--out", type=Path, default=Path("audit-report"), help="report directory")
    run.add_argument(
        "--run-id",
        help="name of this run (default: plan name and date); re-using it replays stored answers",
    )
    run.add_argument(
        "--fail-on", choices=SEVERITIES, help="exit 1 when a finding has this severity or higher"
    )
    run.add_argument("--tls-cert", type=Path, help="auditor certificate (PEM)")
    run.add_argument("--tls-key", type=Path, help="auditor private key (PEM)")
    run.add_argument("--tls-ca", type=Path, help="federation CA certificate (PEM)")
    run.add_argument("--insecure", action="store_true", help="no TLS (loopback nodes only)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    from fedaudit.coordinator.running.audit_metrics import add_metrics_arguments

    add_metrics_arguments(run)
    run.add_argument(
        "--record",
        type=Path,
        help="append what each node answered to this JSON-lines file (compare with a node's log)",
    )

    from fedaudit.cli.groups import Parsers, register_all

    register_all(Parsers(root=sub, node=node_sub, audit=audit_sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fedaudit.logs import configure_logging

    configure_logging(
        json={"auto": None, "json": True, "console": False}[args.log_format], level=args.log_level
    )
    try:
        return _dispatch(args)
    except CliError as exc:
        print(f"fedaudit: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("fedaudit: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from fedaudit.cli import commands

    handler = getattr(args, "handler", None)
    if handler is not None:
        return int(handler(args))
    if args.command == "demo":
        return commands.demo(args)
    if args.command == "node":
        return {
            "import": commands.node_import,
            "validate": commands.node_validate,
            "serve": commands.node_serve,
            "budget": commands.node_budget,
        }[args.node_command](args)
    if args.command == "audit":
        return commands.audit_run(args)
    raise CliError(f"unknown command {args.command}")  # pragma: no cover - argparse prevents it


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
