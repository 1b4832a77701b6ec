"""`fedaudit node log show|verify|compare`: the data officer's view of the node's query log.

`verify` exits 0 when the hash chain is intact and 1 naming the first broken row;
`compare` exits 0 when the coordinator's record and the log agree and 1 listing
each difference; every usage or input problem exits 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from fedaudit.cli.console import console, err_console, rho_text
from fedaudit.cli.errors import EXIT_FINDINGS, EXIT_OK, CliError
from fedaudit.cli.parsers import Parsers


def register(parsers: Parsers) -> None:
    group = parsers.node.add_parser(
        "log",
        help="show, verify or compare the node's tamper-evident query log",
        description=(
            "Every request the node handled (answered, replayed, refused or failed) is kept in a "
            "hash chain in its database. Show it, verify the chain, or compare it with the "
            "coordinator's record of what this node answered."
        ),
    )
    sub = group.add_subparsers(dest="log_command", metavar="LOG_COMMAND", required=True)

    show = sub.add_parser(
        "show", help="list logged requests", description="List logged requests, oldest first."
    )
    show.add_argument("--db", required=True, help="database URL or SQLite file path")
    show.add_argument(
        "--since", type=_timestamp, help="only requests at or after this ISO date or time (UTC)"
    )
    show.add_argument("--requester", help="only requests from this requester")
    show.add_argument(
        "--limit", type=int, default=100, help="the newest N requests (default 100; 0: all)"
    )
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    show.set_defaults(handler=log_show)

    verify = sub.add_parser(
        "verify",
        help="check the hash chain",
        description="Check the whole hash chain. Exit 0 intact, 1 broken (the row is named).",
    )
    verify.add_argument("--db", required=True, help="database URL or SQLite file path")
    verify.set_defaults(handler=log_verify)

    compare = sub.add_parser(
        "compare",
        help="compare the log with a coordinator record",
        description=(
            "Check that every answer the coordinator recorded from this node is in the log with "
            "the same digest, outcome and charge. Exit 0 agree, 1 differences (listed)."
        ),
    )
    compare.add_argument("--db", required=True, help="database URL or SQLite file path")
    compare.add_argument(
        "--record", required=True, type=Path, help="the coordinator's record (JSON lines)"
    )
    compare.add_argument(
        "--node",
        help="the node's name in the record (default: the entries for this node's municipality)",
    )
    compare.add_argument(
        "--tls-ca",
        type=Path,
        help="the federation CA: also check that every recorded log head was signed by the node",
    )
    compare.set_defaults(handler=log_compare)


def log_show(args: argparse.Namespace) -> int:
    from fedaudit.node.evidence.querylog import QueryLog

    if args.limit < 0:
        raise CliError("--limit must be 0 (all) or a positive number")
    engine = _engine(args.db)
    try:
        log = QueryLog(engine)
        rows = log.rows(since=args.since, requester=args.requester, limit=args.limit or None)
        head_seq, head_hash = log.head()
    finally:
        engine.dispose()
    if args.json:
        for row in rows:
            console.print(json.dumps(row.to_dict(), sort_keys=True), markup=False, soft_wrap=True)
        return EXIT_OK
    table = Table(title=f"Query log ({len(rows)} shown)")
    for col in ("seq", "time (UTC)", "requester", "method", "template", "status", "reason", "rho"):
        table.add_column(col, justify="right" if col in ("seq", "rho") else "left")
    table.add_column("answer digest")
    for r in rows:
        template = f"{r.template} {r.template_version}".strip()
        rho = rho_text(r.rho_units / 10**12) if r.rho_units else ""
        table.add_row(
            str(r.seq),
            r.logged_at,
            r.requester,
            r.method,
            template,
            r.status,
            r.reason,
            rho,
            r.answer_digest[:16],
        )
    console.print(table)
    console.print(f"head: row {head_seq}, hash {head_hash}")
    return EXIT_OK


def log_verify(args: argparse.Namespace) -> int:
    from fedaudit.node.evidence.querylog import QueryLog

    engine = _engine(args.db)
    try:
        result = QueryLog(engine).verify()
    finally:
        engine.dispose()
    if result.ok:
        console.print(
            f"query log intact: {result.rows} rows; head row {result.head_seq}, "
            f"hash {result.head_hash}"
        )
        return EXIT_OK
    err_console.print(
        f"query log BROKEN at row {result.broken_seq}: {result.problem}", markup=False
    )
    return EXIT_FINDINGS


def log_compare(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from fedaudit.coordinator.running.record import RecordError, read_record
    from fedaudit.node.evidence.logcompare import compare_with_record
    from fedaudit.node.evidence.querylog import QueryLog
    from fedaudit.node.store.models import Municipality

    try:
        entries = [entry for entry, _ in read_record(args.record)]
    except RecordError as exc:
        raise CliError(str(exc)) from exc
    ca = None
    if args.tls_ca is not None:
        from cryptography import x509

        try:
            ca = x509.load_pem_x509_certificate(args.tls_ca.read_bytes())
        except (OSError, ValueError) as exc:
            raise CliError(f"{args.tls_ca}: not a readable PEM certificate ({exc})") from exc
    engine = _engine(args.db)
    try:
        if args.node:
            mine = [e for e in entries if e.node == args.node]
        else:
            with engine.connect() as conn:
                code = conn.execute(select(Municipality.municipality_code)).scalar()
            mine = [e for e in entries if e.municipality_code == code]
        log = QueryLog(engine)
        verification = log.verify()
        mismatches = compare_with_record(log, mine, ca)
    finally:
        engine.dispose()
    if not mine:
        raise CliError(f"{args.record}: no entries for this node (use --node NAME)")
    ok = verification.ok and not mismatches
    if not verification.ok:
        err_console.print(
            f"query log BROKEN at row {verification.broken_seq}: {verification.problem}",
            markup=False,
        )
    for m in mismatches:
        err_console.print(f"{m.node} {m.request_id}: {m.problem}", markup=False)
    if ok:
        console.print(f"log and record agree on all {len(mine)} recorded answers and refusals")
        return EXIT_OK
    err_console.print(f"{len(mismatches)} of {len(mine)} recorded answers and refusals differ")
    return EXIT_FINDINGS


def _engine(url: str) -> Any:
    """An engine on an existing node database that has a query log; else a usage error."""
    from fedaudit.cli.shared import open_node_database

    return open_node_database(
        url, table="query_log", missing="this database has no query log (has the node been served?)"
    )


def _timestamp(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
