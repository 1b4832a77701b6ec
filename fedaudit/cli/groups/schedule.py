"""`fedaudit schedule`: scheduled compliance checks (plans with a cron `schedule`).

    fedaudit schedule check PLAN... [--node NAME=HOST:PORT] TLS
    fedaudit schedule forecast PLAN --policy [NODE=]POLICY... --years N [--start YYYY-MM-DD]
    fedaudit schedule run PLAN... --archive DIR [--fail-on SEV] [--webhook URL] [--once] TLS

`check` only pre-flights the schedule against every node's remaining budget and exits 0
(fits) or 2 (a node would run dry; the message says which, in which period and when).
`run` does the same check first and refuses a schedule that would run dry; then, with
`--once`, it runs whatever slot is due and exits as `audit run` does (DESIGN.md 6.2):
0 complete with nothing at `--fail-on`, 1 a finding reached `--fail-on`, 3 an audit was
incomplete (failed, or partial without `--allow-partial`); the worst run decides. That
is what cron, a systemd timer or a Kubernetes CronJob needs. Without `--once` it stays up,
sleeps until the next slot and stops cleanly on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import threading
from pathlib import Path
from typing import Any

from fedaudit.cli.console import console, err_console
from fedaudit.cli.errors import EXIT_INPUT, EXIT_OK, SEVERITIES, CliError
from fedaudit.cli.parsers import Parsers
from fedaudit.cli.shared import (
    add_hub_arguments,
    load_plan,
    node_reach,
    parse_node_args,
    with_node_overrides,
)


def register(parsers: Parsers) -> None:
    schedule = parsers.root.add_parser(
        "schedule",
        help="run audit plans on their cron schedule, archive reports, alert on findings",
        description=(
            "Scheduled compliance checks: plans carry a 5-field cron `schedule` (UTC). `check` "
            "pre-flights the privacy cost against each node's budget; `run` runs due slots, "
            "archives every report with an index page and alerts on findings."
        ),
    )
    sub = schedule.add_subparsers(
        dest="schedule_command", metavar="SCHEDULE_COMMAND", required=True
    )

    check = sub.add_parser(
        "check",
        help="pre-flight a schedule against each node's remaining budget (spends nothing)",
        description=(
            "Count the runs of each plan in every node's current and next budget period, price "
            "them with the node's free preflight and refuse (exit 2) a schedule that would run "
            "dry, naming the node, the period and the run."
        ),
    )
    _common(check)
    check.set_defaults(handler=_check)

    from fedaudit.cli import schedule_forecast

    schedule_forecast.add_parser(sub)

    run = sub.add_parser(
        "run",
        help="run due plans now (--once) or keep running them at their slots",
        description=(
            "Run scheduled plans unattended. Every report goes to ARCHIVE/<plan>/<slot>-<run id>/ "
            "and ARCHIVE/index.html shows findings over time. Exit 0; 1 when a run has findings "
            "at or above --fail-on; 2 on input errors or a schedule that would run dry; 3 when "
            "an audit was incomplete (failed, or partial without --allow-partial)."
        ),
    )
    _common(run)
    run.add_argument("--archive", type=Path, required=True, help="archive directory")
    run.add_argument(
        "--fail-on",
        choices=SEVERITIES,
        help="alert and exit 1 on findings of this severity or higher",
    )
    run.add_argument(
        "--allow-partial",
        action="store_true",
        help="accept partial audits (a node missing): exit by findings instead of 3; a failed "
        "audit still exits 3 (incomplete runs alert either way)",
    )
    run.add_argument(
        # Before exit code 3 existed this made incomplete runs exit 1; they now exit 3
        # unless --allow-partial, so the flag is accepted and has no further effect.
        "--fail-on-incomplete",
        action="store_true",
        help=argparse.SUPPRESS,
    )
    run.add_argument("--webhook", help="POST a JSON alert summary here (http or https URL)")
    run.add_argument(
        "--once", action="store_true", help="run the due slot(s), then exit (for cron and CI)"
    )
    from fedaudit.coordinator.running.audit_metrics import add_metrics_arguments

    add_metrics_arguments(run)
    run.set_defaults(handler=_run)

    reask = sub.add_parser(
        "reask",
        help="ask a cohort plan's questions about one cohort again (its data were corrected)",
        description=(
            "After a municipality re-imported corrected data for an old cohort: ask again, "
            "now, exactly the archived queries that read that cohort. A node whose data officer "
            "reopened the cohort (node import --reopen) charges them again, to those cohorts "
            "only; other nodes replay their stored answers for free. The report goes to the "
            "archive and replaces the cohort's numbers in "
            "trend.json; the schedule's progress does not move. Exit codes as `run --once`."
        ),
    )
    _common(reask)
    reask.add_argument("--archive", type=Path, required=True, help="archive directory")
    reask.add_argument("--cohort", required=True, metavar="YYYY-MM", help="the corrected cohort")
    reask.add_argument("--reason", required=True, help="why (recorded in the report)")
    reask.set_defaults(handler=_reask)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "plans", nargs="+", type=Path, metavar="PLAN", help="audit plan YAML with a schedule"
    )
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="add or override a node in every plan (repeatable)",
    )
    parser.add_argument("--tls-cert", type=Path, help="auditor certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="auditor private key (PEM)")
    parser.add_argument("--tls-ca", type=Path, help="federation CA certificate (PEM)")
    parser.add_argument("--insecure", action="store_true", help="no TLS (loopback nodes only)")
    add_hub_arguments(parser)


# --- handlers -----------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    plans, factory, _ring, _psi = _setup(args)
    result = _forecast(plans, factory, due_now=None)
    _print_forecast(result)
    if not result.ok:
        return EXIT_INPUT
    console.print("schedule accepted: every reachable node can afford it")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from fedaudit.coordinator.scheduling.alerts import WebhookNotifier
    from fedaudit.coordinator.scheduling.schedule import Scheduler

    plans, factory, ring_factory, reconcile_factory = _setup(args)
    notifier = None
    if args.webhook:
        try:
            notifier = WebhookNotifier(args.webhook)
        except ValueError as exc:
            raise CliError(f"--webhook: {exc}") from exc
    stop = threading.Event()
    scheduler = Scheduler(
        plans,
        factory,
        args.archive,
        sleep=stop.wait,
        fail_on=args.fail_on,
        allow_partial=args.allow_partial,
        notifier=notifier,
        dedup_transports=ring_factory,
        reconcile_transports=reconcile_factory,
    )
    due = {d.plan.name: True for d in scheduler.due()}
    result = _forecast(plans, factory, due_now=due)
    if not result.ok:
        _print_forecast(result)
        err_console.print("[bold red]schedule refused[/]: it would run dry (see above)")
        return EXIT_INPUT
    for node, message in result.unreachable:
        err_console.print(
            f"warning: could not pre-flight {node}: {message}", markup=False, soft_wrap=True
        )

    if args.once:
        records = scheduler.run_due()
        if not records:
            console.print(f"nothing due; next slot {scheduler.next_wakeup():%Y-%m-%d %H:%M} UTC")
        for r in records:
            _print_record(r)
            _export_metrics(args, r)
        console.print(f"index: {scheduler.archive.root / 'index.html'}")
        return max((r.exit_code for r in records), default=EXIT_OK)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    err_console.print(
        f"scheduler running {len(plans)} plan(s); archive {args.archive}; SIGTERM or Ctrl-C stops"
    )
    for r in scheduler.run_forever():
        _print_record(r)
        _export_metrics(args, r)
    return EXIT_OK


def _reask(args: argparse.Namespace) -> int:
    from fedaudit.coordinator.planning.cohorts import parse_month
    from fedaudit.coordinator.scheduling.schedule import Scheduler

    if len(args.plans) != 1:
        raise CliError("schedule reask: give exactly one plan")
    try:
        parse_month(args.cohort)
    except ValueError as exc:
        raise CliError(f"--cohort: {exc}") from None
    if not args.reason.strip():
        raise CliError("--reason: say why the cohort is asked again (it goes into the report)")
    plans, factory, ring_factory, reconcile_factory = _setup(args)
    scheduler = Scheduler(
        plans,
        factory,
        args.archive,
        dedup_transports=ring_factory,
        reconcile_transports=reconcile_factory,
    )
    try:
        record = scheduler.reask(plans[0], args.cohort, args.reason.strip())
    except ValueError as exc:
        raise CliError(f"schedule reask: {exc}") from None
    _print_record(record)
    return record.exit_code


# --- helpers -----------------------------------------------------------------------------------


def _export_metrics(args: argparse.Namespace, record: Any) -> None:
    """Export the run's metrics (textfile or Pushgateway) when the operator asked for it."""
    if not (args.metrics_textfile or args.pushgateway):
        return
    import datetime as dt
    import json

    from fedaudit.coordinator.running.audit_metrics import export_audit_metrics

    report = json.loads((record.report_dir / "report.json").read_text(encoding="utf-8"))
    started, finished = (
        dt.datetime.fromisoformat(report["audit"][k].replace("Z", "+00:00"))
        for k in ("started_at", "finished_at")
    )
    export_audit_metrics(
        report,
        (finished - started).total_seconds(),
        textfile_dir=args.metrics_textfile,
        pushgateway=args.pushgateway,
    )


def _setup(args: argparse.Namespace) -> tuple[list[Any], Any, Any, Any]:
    from fedaudit.coordinator.ring.reconcile import GrpcReconcileTransport
    from fedaudit.coordinator.ring.relay import GrpcDedupTransport
    from fedaudit.coordinator.running.transport import GrpcNodeTransport

    overrides = parse_node_args(args.node)
    plans = []
    for path in args.plans:
        plan = load_plan(path)
        if not plan.schedule:
            raise CliError(f"{path}: the plan has no `schedule` (a 5-field cron expression, UTC)")
        plan = with_node_overrides(plan, overrides)
        if not plan.nodes:
            raise CliError(
                f"{path}: the plan names no nodes; add them or use --node NAME=HOST:PORT"
            )
        plans.append(plan)
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise CliError("two plans have the same name; names key the archive and the run ids")
    requesters = sorted({p.requester for p in plans})
    if len(requesters) > 1:
        raise CliError(
            f"the plans ask as different requesters ({', '.join(requesters)}); one auditor "
            "certificate is one requester, so run one scheduler per requester"
        )
    # Directly (mTLS, by address) or through a hub (by name, every call signed).
    reach = node_reach(args, [n for p in plans for n in p.nodes], requesters[0])

    def transports_of(kind: Any) -> Any:
        """Per plan, one `kind` transport (query, ring or reconciliation) per plan node."""

        def make(plan: Any) -> dict[str, Any]:
            return {
                n.name: kind(
                    n.name, n.address, requester=plan.requester, **reach(n.name, n.address)
                )
                for n in plan.nodes
            }

        return make

    factory = transports_of(GrpcNodeTransport)
    ring_factory = transports_of(GrpcDedupTransport)
    reconcile_factory = transports_of(GrpcReconcileTransport)
    return plans, factory, ring_factory, reconcile_factory


def _forecast(plans: list[Any], factory: Any, *, due_now: dict[str, bool] | None) -> Any:
    """Plans that ask every year are forecast together (they share the requester's budget);
    cohort plans per cohort (`coordinator/scheduling/cohort_check.py`)."""
    from fedaudit.coordinator.scheduling.cohort_check import forecast_live
    from fedaudit.coordinator.scheduling.forecast import Forecast, forecast_plans

    transports = {p.name: factory(p) for p in plans}
    now = dt.datetime.now(dt.UTC)
    yearly = [p for p in plans if p.cohorts is None]
    cohort = [p for p in plans if p.cohorts is not None]
    try:
        parts = []
        if yearly:
            parts.append(forecast_plans(yearly, transports, now, due_now=due_now))
        if cohort:
            parts.append(forecast_live(cohort, transports, now, due_now=due_now))
        return Forecast(
            tuple(n for part in parts for n in part.nodes),
            tuple(u for part in parts for u in part.unreachable),
        )
    finally:
        for per_plan in transports.values():
            for t in per_plan.values():
                t.close()


def _print_forecast(result: Any) -> None:
    from rich.table import Table

    table = Table(
        title="Budget forecast (rho; every run assumed charged in full; for a cohort plan "
        "'needs' is what the most charged cohort would be charged)"
    )
    for col in (
        "node",
        "period",
        "runs",
        "needs",
        "remaining",
        "next period",
        "runs",
        "needs",
        "cap",
    ):
        table.add_column(
            col, justify="left" if col in ("node", "period", "next period") else "right"
        )
    for n in result.nodes:
        table.add_row(
            n.node,
            n.period,
            str(n.runs_current),
            f"{n.rho_current:.4g}",
            f"{min(n.requester_remaining, n.node_remaining):.4g}",
            n.next_period,
            str(n.runs_next),
            f"{n.rho_next:.4g}",
            f"{n.requester_cap:.4g}",
        )
    console.print(table)
    for n in result.nodes:
        if n.shortfall is not None:
            err_console.print(
                f"refused: {n.message}", markup=False, highlight=False, soft_wrap=True
            )
        elif n.node_budget_dry_at is not None:
            console.print(
                f"note: {n.node}'s node-wide budget (never renews) covers runs until "
                f"{n.node_budget_dry_at:%Y-%m-%d} at this pace",
                markup=False,
                soft_wrap=True,
            )
    for node, message in result.unreachable:
        err_console.print(
            f"warning: {node} unreachable, not forecast: {message}", markup=False, soft_wrap=True
        )


def _print_record(record: Any) -> None:
    from fedaudit.coordinator.running.outcome import verdict

    missed = f" (stands in for {len(record.missed)} missed slot(s))" if record.missed else ""
    alert = f"; ALERT: {', '.join(record.alert.reasons)}" if record.alert else ""
    console.print(
        f"{record.run_id}: {record.status}, {record.findings} finding(s){missed}{alert}\n"
        f"  {verdict(record.report)}\n"
        f"  {record.report_dir / 'report.html'}",
        markup=False,
        soft_wrap=True,
    )
