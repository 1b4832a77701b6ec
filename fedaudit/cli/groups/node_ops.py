"""`fedaudit node doctor | migrate | budget-history`: operating a node day to day.

Thin argument handling around `fedaudit.node.ops.doctor`, `fedaudit.node.store.schema` and
`fedaudit.node.ops.budget_history`; see docs/operations.md for when to run which.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedaudit.cli.console import console, rho_text
from fedaudit.cli.errors import EXIT_OK, CliError
from fedaudit.cli.parsers import Parsers
from fedaudit.cli.shared import load_policy, require_database

_STATUS_STYLE = {"ok": "green", "warning": "yellow", "error": "bold red", "skipped": "dim"}


def register(parsers: Parsers) -> None:
    doctor = parsers.node.add_parser(
        "doctor",
        help="check that the node is fit to serve (database, schema, policy, certificates, ...)",
        description=(
            "Check the database (reachable, latency), the schema version, the policy file, TLS "
            "certificates and their expiry, the clock, free disk, the data version and the "
            "ledger's integrity. Writes nothing. Exit 0: fit to serve; 1: errors (or warnings "
            "with --strict)."
        ),
    )
    doctor.add_argument("--db", required=True, help="database URL or SQLite file path")
    doctor.add_argument("--policy", required=True, type=Path, help="the node policy YAML")
    doctor.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="the node certificate, as given to `node serve` (default: certificates not checked)",
    )
    doctor.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="the federation CA certificate, as given to `node serve` (default: not checked)",
    )
    doctor.add_argument(
        "--json", action="store_true", help="print the results as JSON (default: a table)"
    )
    doctor.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 on warnings too, for monitoring (default: only on errors)",
    )
    doctor.add_argument(
        "--stuck-minutes",
        type=_positive_int,
        default=15,
        help="ledger entries reserved longer than this are reported (default: 15)",
    )
    doctor.add_argument(
        "--cert-warning-days",
        type=_positive_int,
        default=30,
        help="warn when a certificate expires within this many days (default: 30)",
    )
    doctor.set_defaults(handler=node_doctor)

    migrate = parsers.node.add_parser(
        "migrate",
        help="upgrade the database schema to this release",
        description=(
            "Apply the schema migrations of this release (all or nothing, in one transaction). "
            "A database made before migrations existed is adopted after its tables are "
            "verified; a database of a newer release is refused. Back up first."
        ),
    )
    migrate.add_argument("--db", required=True, help="database URL or SQLite file path")
    migrate.add_argument(
        "--to", default="head", metavar="REV", help="target revision (default: head)"
    )
    migrate.add_argument(
        "--dry-run",
        action="store_true",
        help="show the steps and their SQL; change nothing (default: apply them)",
    )
    migrate.set_defaults(handler=node_migrate)

    history = parsers.node.add_parser(
        "budget-history",
        help="show the privacy budget spent per requester and period",
        description=(
            "Show, from the ledger, the budget each requester spent in each budget period "
            "(all periods, or --period), with the current policy's caps."
        ),
    )
    history.add_argument("--db", required=True, help="database URL or SQLite file path")
    history.add_argument("--policy", required=True, type=Path, help="the node policy YAML")
    history.add_argument(
        "--period", help="only this period, e.g. 2026-Q4, 2026-11 or 2026 (default: all periods)"
    )
    history.add_argument(
        "--json", action="store_true", help="print exact JSON (default: a table, rounded)"
    )
    history.set_defaults(handler=node_budget_history)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# --- doctor -----------------------------------------------------------------------------------


def node_doctor(args: argparse.Namespace) -> int:
    from fedaudit.node.ops.doctor import DoctorOptions, exit_code, run_doctor, worst

    options = DoctorOptions(
        stuck_reserved_minutes=args.stuck_minutes, cert_warning_days=args.cert_warning_days
    )
    certificates = [path for path in (args.tls_cert, args.tls_ca) if path is not None]
    results = run_doctor(args.db, args.policy, certificates, options=options)
    if args.json:
        print(
            json.dumps(
                {"status": worst(results).value, "checks": [r.to_json() for r in results]},
                indent=2,
            )
        )
    else:
        from rich.table import Table

        table = Table(title="fedaudit node doctor", show_lines=False)
        table.add_column("check")
        table.add_column("status")
        table.add_column("details", overflow="fold")
        for result in results:
            style = _STATUS_STYLE[result.status.value]
            table.add_row(result.name, f"[{style}]{result.status.value}[/]", result.summary)
        console.print(table)
        overall = worst(results).value
        console.print(f"overall: [{_STATUS_STYLE[overall]}]{overall}[/]")
    return exit_code(results, strict=args.strict)


# --- migrate ----------------------------------------------------------------------------------


def node_migrate(args: argparse.Namespace) -> int:
    from fedaudit.node.store.db import make_engine, make_readonly_engine, sqlite_path
    from fedaudit.node.store.schema import SchemaError, inspect_schema, upgrade, upgrade_sql

    if args.dry_run:
        engine = make_readonly_engine(args.db)
        path = sqlite_path(engine)
        if path is not None and not path.exists():
            engine.dispose()
            engine = make_engine("sqlite://")  # what a new file would go through
            console.print(f"{path} does not exist; migrate would create it")
    else:
        engine = make_engine(args.db)
    try:
        state = inspect_schema(engine, args.to)
        if state.problems:
            raise SchemaError(
                "node tables without a schema version match no release: "
                + "; ".join(state.problems)
            )
        if args.dry_run:
            _print_plan(state)
            sql = upgrade_sql(state, engine.dialect.name)
            if sql:
                console.print("SQL that would run:", style="bold")
                print(sql)
            return EXIT_OK
        after = upgrade(engine, args.to)
    except SchemaError as exc:
        raise CliError(str(exc)) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("sqlalchemy"):
            raise CliError(f"database error: {str(getattr(exc, 'orig', exc)).strip()}") from exc
        raise
    finally:
        engine.dispose()
    if state.adopt:
        console.print(f"adopted an unversioned database as revision {state.adopt}")
    if state.pending:
        steps = ", ".join(step.revision for step in state.pending)
        console.print(f"schema upgraded to revision {after.current} (applied {steps})")
    else:
        console.print(f"schema already at revision {after.current}; nothing to do")
    return EXIT_OK


def _print_plan(state: Any) -> None:
    """Show what `migrate --dry-run` would do, so the officer can approve it before a backup."""
    where = (
        "empty database"
        if state.empty
        else f"unversioned, matches revision {state.adopt} (would be adopted)"
        if state.adopt
        else f"at revision {state.current}"
    )
    console.print(f"database: {where}; target: {state.target} (this release's head: {state.head})")
    if not state.pending:
        console.print("nothing to apply")
    for step in state.pending:
        console.print(f"  would apply {step.revision}: {step.message}")


# --- budget history -----------------------------------------------------------------------------


def node_budget_history(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedaudit.common.budget_units import units_to_rho
    from fedaudit.node.ops.budget_history import budget_history
    from fedaudit.node.store.db import make_readonly_engine

    policy = load_policy(args.policy)
    require_database(args.db)
    engine = make_readonly_engine(args.db)
    try:
        try:
            history = budget_history(engine, policy, period=args.period)
        except Exception as exc:
            if type(exc).__module__.startswith("sqlalchemy"):
                raise CliError(
                    f"cannot read the ledger: {str(getattr(exc, 'orig', exc)).strip()}"
                ) from exc
            raise
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(history.to_json(), indent=2))
        return EXIT_OK
    title = f"Privacy budget spent, period {args.period}" if args.period else "Privacy budget spent"
    table = Table(title=title)
    for col in ("period", "requester", "spent (rho)", "cap", "remaining", "queries"):
        table.add_column(col, justify="left" if col in ("period", "requester") else "right")
    for row in history.rows:
        table.add_row(
            row.period,
            row.requester,
            rho_text(units_to_rho(row.spent_units)),
            "(removed)" if row.cap_units is None else rho_text(units_to_rho(row.cap_units)),
            "-"
            if row.remaining_units is None
            else rho_text(units_to_rho(max(row.remaining_units, 0))),
            f"{row.entries}" + (f" ({row.reserved} reserved)" if row.reserved else ""),
        )
    console.print(table)
    node_left = max(history.node_cap_units - history.node_spent_units, 0)
    from fedaudit.node.privacy.ledger import cohort_label

    most = f" (most charged: {cohort_label(history.node_cohort)})" if history.node_cohort else ""
    console.print(
        f"node total, per cohort: spent {rho_text(units_to_rho(history.node_spent_units))} of "
        f"{rho_text(units_to_rho(history.node_cap_units))} rho (never renewed){most}, "
        f"{rho_text(units_to_rho(node_left))} left"
    )
    return EXIT_OK
