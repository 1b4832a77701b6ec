"""`fedaudit node reconcile show`: this node's recognitions that rest on a revoked certificate.

The list is what revocation reconciliation found for this municipality and kept in its
own database: certificate id, origin, origin certificate number, the day the origin
revoked it. Nobody else has it. Exit 0 with or without matches; 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from fedaudit.cli.errors import EXIT_OK, CliError
from fedaudit.cli.parsers import Parsers
from fedaudit.cli.shared import open_node_database

console = Console(highlight=False, soft_wrap=True)


def register(parsers: Parsers) -> None:
    group = parsers.node.add_parser(
        "reconcile",
        help="this node's recognitions that rest on a certificate revoked at its origin",
        description=(
            "Revocation reconciliation (docs/reconciliation.md) tells a recognising "
            "municipality which of its own reciprocity recognitions rest on a certificate its "
            "origin has revoked. The list stays in this node's database."
        ),
    )
    sub = group.add_subparsers(dest="reconcile_command", metavar="RECONCILE_COMMAND", required=True)
    show = sub.add_parser(
        "show",
        help="list the matches of the newest (or a given) run",
        description="List the matches of the newest reconciliation run, or of --run.",
    )
    show.add_argument("--db", required=True, help="database URL or SQLite file path")
    show.add_argument("--run", help="a run id (default: the newest run this node took part in)")
    show.add_argument(
        "--csv", action="store_true", help="write CSV to standard output instead of a table"
    )
    show.set_defaults(handler=reconcile_show)


def reconcile_show(args: argparse.Namespace) -> int:
    from fedaudit.node.ring.reconcile_store import (
        checked_origins,
        latest_run,
        stored_matches,
        write_matches_csv,
    )

    engine = open_node_database(
        args.db,
        table="reconciliation_checks",
        missing=f"no reconciliation tables; run `fedaudit node migrate --db {args.db}`",
    )
    try:
        run_id = args.run or latest_run(engine)
        if run_id is None:
            raise CliError(
                f"{args.db}: this node has not taken part in a reconciliation yet "
                "(the audit plan needs a `revocation` check, the policy "
                "`revocation_reconciliation: {receive: true}`)"
            )
        origins = checked_origins(engine, run_id)
        if not origins:
            raise CliError(f"{args.db}: no reconciliation run {run_id!r} at this node")
        matches = stored_matches(engine, run_id)
    finally:
        engine.dispose()
    if args.csv:
        write_matches_csv(matches, sys.stdout)
        return EXIT_OK
    checked = ", ".join(f"{o} ({refs} recognition(s), {n} revoked)" for o, refs, n in origins)
    console.print(f"run {run_id}: checked {checked}")
    if not matches:
        console.print("No recognition here rests on a revoked certificate.")
        return EXIT_OK
    table = Table(title=f"{len(matches)} recognition(s) resting on a revoked certificate")
    for col in ("certificate id", "origin", "origin certificate no", "revoked on"):
        table.add_column(col)
    for m in matches:
        table.add_row(
            m.certificate_id, m.origin_municipality, m.origin_certificate_no, str(m.revoked_on)
        )
    console.print(table)
    return EXIT_OK
