"""Running audit plans unattended at the times their cron schedule names.

A plan's `schedule` is a 5-field cron expression in UTC. Each cron time is a *slot*,
and a slot is run under the run id `<plan>-<YYYYmmddTHHMMZ>`: the request ids sent to
the nodes derive from it, so a scheduler that crashes after charging and re-runs the
same slot gets the stored answers back instead of paying twice.

Progress is kept per plan in `ARCHIVE/<plan>/schedule-state.json` (written atomically):
the last slot whose report was archived. On every tick the scheduler looks at the slots
since then. Slots missed while the scheduler was down are handled deliberately: only the
most recent one is run, once, and the skipped ones are named in the log and in the run
record. Running a quarter's worth of monthly audits back to back would spend three
months of budget on the same data for nothing. A new archive (no state) runs the most
recent slot at or before now, then follows the schedule.

Time is injected (`clock`, `sleep`) so tests can run years of slots in seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from cronsim import CronSim

from fedaudit.coordinator.planning.cohort_runs import is_empty, plan_for_run, report_section
from fedaudit.coordinator.planning.cohorts import month_of
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.ring.reconcile import ReconcileTransport
from fedaudit.coordinator.ring.relay import DedupTransport
from fedaudit.coordinator.running.audit import run_audit
from fedaudit.coordinator.running.outcome import exit_code
from fedaudit.coordinator.running.transport import NodeTransport
from fedaudit.coordinator.scheduling.alerts import Alert, Notifier, evaluate_alert
from fedaudit.coordinator.scheduling.archive import Archive
from fedaudit.coordinator.scheduling.incremental import (
    answered_cohorts,
    archived_reports,
    reask_plan,
    write_trend,
)

log = structlog.get_logger(__name__)

STATE_FILE = "schedule-state.json"
STATE_VERSION = 1

Clock = Callable[[], dt.datetime]
Sleep = Callable[[float], bool]
"""Sleeps up to the given seconds; returns True when the scheduler must stop (e.g. Event.wait)."""

TransportFactory = Callable[[AuditPlan], Mapping[str, NodeTransport]]
"""Opens the transports for one run of a plan; the scheduler closes them after the run."""

DedupTransportFactory = Callable[[AuditPlan], Mapping[str, DedupTransport]]
ReconcileTransportFactory = Callable[[AuditPlan], Mapping[str, ReconcileTransport]]
"""Opens the blinding-ring connections for a plan with a duplicates check."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


# --- cron arithmetic -----------------------------------------------------------------------


def next_slot(cron: str, after: dt.datetime) -> dt.datetime:
    """The first slot strictly after `after` (UTC)."""
    return _utc(next(CronSim(cron, _utc(after).replace(tzinfo=None))).replace(tzinfo=dt.UTC))


def latest_slot(cron: str, at_or_before: dt.datetime) -> dt.datetime:
    """The last slot at or before `at_or_before` (UTC)."""
    start = _utc(at_or_before).replace(tzinfo=None, microsecond=0) + dt.timedelta(seconds=1)
    return next(CronSim(cron, start, reverse=True)).replace(tzinfo=dt.UTC)


def slots_between(cron: str, start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
    """Slots t with start <= t < end, in order (both bounds UTC)."""
    start, end = _utc(start), _utc(end)
    it = CronSim(cron, (start - dt.timedelta(seconds=1)).replace(tzinfo=None, microsecond=0))
    for moment in it:
        slot = moment.replace(tzinfo=dt.UTC)
        if slot >= end:
            return
        if slot >= start:
            yield slot


def run_id_for(plan: AuditPlan | str, slot: dt.datetime) -> str:
    """The run id of a slot: stable, so a re-run replays stored answers at no cost."""
    name = plan if isinstance(plan, str) else plan.name
    return f"{name}-{_utc(slot):%Y%m%dT%H%MZ}"


# --- state ---------------------------------------------------------------------------------


def read_state(archive_dir: Path, plan: str) -> dict[str, Any]:
    """The plan's state file, or {} when there is none (an unreadable file is logged, not fatal)."""
    path = Path(archive_dir) / plan / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.error("schedule_state_unreadable", path=str(path), error=str(exc))
        return {}
    return data if isinstance(data, dict) else {}


def write_state(archive_dir: Path, plan: str, state: Mapping[str, Any]) -> None:
    """Replace the plan's state file atomically (temp file, fsync, rename)."""
    directory = Path(archive_dir) / plan
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": STATE_VERSION, **state}, indent=2, sort_keys=True) + "\n"
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{STATE_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, directory / STATE_FILE)
    finally:
        Path(temp).unlink(missing_ok=True)


def _last_completed(archive_dir: Path, plan: str) -> dt.datetime | None:
    value = read_state(archive_dir, plan).get("last_completed_slot")
    if not isinstance(value, str):
        return None
    try:
        return _utc(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        log.error("schedule_state_invalid_slot", plan=plan, value=value)
        return None


def _iso(moment: dt.datetime) -> str:
    return _utc(moment).isoformat().replace("+00:00", "Z")


# --- scheduler -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DueRun:
    """A slot to run now, and the earlier slots it stands in for (missed while down)."""

    plan: AuditPlan
    slot: dt.datetime
    missed: tuple[dt.datetime, ...] = ()

    @property
    def run_id(self) -> str:
        return run_id_for(self.plan, self.slot)


@dataclass(frozen=True)
class RunRecord:
    """What one scheduled run did: its report, where it went, and whether it alerted."""

    plan: str
    slot: dt.datetime
    run_id: str
    status: str
    findings: int
    report_dir: Path
    missed: tuple[dt.datetime, ...] = ()
    alert: Alert | None = None
    exit_code: int = 0
    report: Mapping[str, Any] = field(default_factory=dict, repr=False)


class Scheduler:
    """Runs each plan at its cron slots, archives every report and raises alerts.

    `fail_on` (info | warning | critical) sets the alert threshold for findings. Each
    run's exit code follows DESIGN.md 6.2 (`running.outcome.exit_code`): 3 when the audit
    was incomplete (failed, or partial unless `allow_partial`), else 1 when a finding
    reached `fail_on`, else 0. Incomplete runs alert either way.
    """

    def __init__(
        self,
        plans: Sequence[AuditPlan],
        transports: TransportFactory,
        archive: Archive | Path,
        *,
        clock: Clock = utcnow,
        sleep: Sleep | None = None,
        fail_on: str | None = None,
        allow_partial: bool = False,
        notifier: Notifier | None = None,
        dedup_transports: DedupTransportFactory | None = None,
        reconcile_transports: ReconcileTransportFactory | None = None,
    ) -> None:
        unscheduled = [p.name for p in plans if not p.schedule]
        if unscheduled:
            raise ValueError(f"plans without a schedule: {', '.join(unscheduled)}")
        names = [p.name for p in plans]
        if len(set(names)) != len(names):
            raise ValueError("two plans with the same name would share an archive and run ids")
        self.plans = tuple(plans)
        self._transports = transports
        self._dedup_transports = dedup_transports
        self._reconcile_transports = reconcile_transports
        self.archive = archive if isinstance(archive, Archive) else Archive(Path(archive))
        self._clock = clock
        self._sleep = sleep or threading.Event().wait
        self._fail_on = fail_on
        self._allow_partial = allow_partial
        self._notifier = notifier

    # -- planning ----------------------------------------------------------------------------

    def due(self, now: dt.datetime | None = None) -> list[DueRun]:
        """Per plan, the most recent slot not yet completed (with the missed ones it covers)."""
        now = _utc(now or self._clock())
        out = []
        for plan in self.plans:
            assert plan.schedule is not None
            latest = latest_slot(plan.schedule, now)
            last = _last_completed(self.archive.root, plan.name)
            if last is not None and latest <= last:
                continue
            missed: tuple[dt.datetime, ...] = ()
            if last is not None:
                missed = tuple(s for s in slots_between(plan.schedule, last, latest) if s > last)
            out.append(DueRun(plan=plan, slot=latest, missed=missed))
        return out

    def next_wakeup(self, now: dt.datetime | None = None) -> dt.datetime:
        """The earliest next slot over all plans."""
        now = _utc(now or self._clock())
        return min(next_slot(p.schedule, now) for p in self.plans if p.schedule)

    # -- running -----------------------------------------------------------------------------

    def run_due(self) -> list[RunRecord]:
        """Run every due slot once; returns what each run did (slots with nothing to ask
        are recorded in the state and return nothing)."""
        return [r for r in (self.run_slot(d) for d in self.due()) if r is not None]

    def narrow(self, plan: AuditPlan, slot: dt.datetime) -> tuple[AuditPlan, dict[str, Any]]:
        """`plan` as this slot asks it: cohorts not yet answered (per the archive), the ring
        and reconciliation by their cadence; and the report's `audit.cohorts` section."""
        answered = answered_cohorts(archived_reports(self.archive.root, plan.name))
        narrowed = plan_for_run(plan, month_of(slot), answered)
        return narrowed, report_section(plan, narrowed)

    def run_slot(self, due: DueRun) -> RunRecord | None:
        """Run one slot: audit, archive, state, alert. The state moves on only once archived.

        A cohort plan's slot with nothing left to ask (every due cohort answered, the ring
        not due) runs no audit: the state records the slot and None is returned.
        """
        plan, cohorts = self.narrow(due.plan, due.slot)
        if is_empty(plan):
            log.info("schedule_nothing_to_ask", plan=plan.name, slot=_iso(due.slot))
            write_state(
                self.archive.root,
                plan.name,
                {
                    **read_state(self.archive.root, plan.name),
                    "plan": plan.name,
                    "last_completed_slot": _iso(due.slot),
                    "last_run_id": due.run_id,
                    "last_status": "nothing_to_ask",
                    "skipped_slots": [_iso(s) for s in due.missed],
                },
            )
            return None
        return self._run(plan, due, cohorts, advance=True)

    def reask(self, plan: AuditPlan, cohort: str, reason: str) -> RunRecord:
        """Ask again, now, what the archived runs asked about `cohort`, after a corrected
        re-import of its data at a node. A node whose data officer reopened the cohort at
        that import (`node import --reopen`) charges these questions again, to the cohorts
        they read only; any other node replays its stored answers for free. The report
        replaces the cohort's earlier numbers in the trend; the schedule's progress does
        not move."""
        now = _utc(self._clock())
        asked = reask_plan(
            plan, cohort, archived_reports(self.archive.root, plan.name), month_of(now)
        )
        section = {
            **report_section(plan, asked),
            "left_out": {},
            "reason": f"re-asked cohort {cohort}: {reason}",
        }
        stamp = now.replace(second=0, microsecond=0)
        due = DueRun(plan=plan, slot=stamp)
        return self._run(
            asked,
            due,
            section,
            advance=False,
            run_id=f"{plan.name}-reask-{cohort}-{stamp:%Y%m%dT%H%MZ}",
        )

    def _run(
        self,
        plan: AuditPlan,
        due: DueRun,
        cohorts: Mapping[str, Any],
        *,
        advance: bool,
        run_id: str | None = None,
    ) -> RunRecord:
        run_id = run_id or due.run_id
        if due.missed:
            log.warning(
                "schedule_missed_slots",
                plan=plan.name,
                running=_iso(due.slot),
                skipped=[_iso(s) for s in due.missed],
                note="slots missed while the scheduler was down are not run one by one; "
                "the most recent slot is run once instead",
            )
        log.info("schedule_run_started", plan=plan.name, slot=_iso(due.slot), run_id=run_id)
        transports = self._transports(plan)
        ring = (
            self._dedup_transports(plan)
            if self._dedup_transports is not None and plan.checks.duplicates is not None
            else {}
        )
        psi = (
            self._reconcile_transports(plan)
            if self._reconcile_transports is not None and plan.checks.revocation is not None
            else {}
        )
        try:
            report = run_audit(
                plan,
                transports,
                run_id=run_id,
                clock=self._clock,
                dedup_transports=ring,
                reconcile_transports=psi,
                cohorts=cohorts if plan.cohorts is not None or cohorts["left_out"] else None,
            )
        finally:
            for t in [*transports.values(), *ring.values(), *psi.values()]:
                try:
                    t.close()
                except Exception as exc:  # closing must not lose a finished report
                    log.warning("transport_close_failed", node=t.name, error=str(exc))
        report_dir = self.archive.store(report, slot=due.slot)
        if plan.cohorts is not None:
            write_trend(
                self.archive.root, plan.name, archived_reports(self.archive.root, plan.name)
            )
        if advance:
            write_state(
                self.archive.root,
                plan.name,
                {
                    "plan": plan.name,
                    "last_completed_slot": _iso(due.slot),
                    "last_run_id": run_id,
                    "last_status": report["audit"]["status"],
                    "last_report": str(report_dir.relative_to(self.archive.root)),
                    "skipped_slots": [_iso(s) for s in due.missed],
                },
            )
        self.archive.rebuild_index()
        alert = evaluate_alert(
            report,
            self._fail_on,
            report_path=str(report_dir / "report.html"),
            slot=_iso(due.slot),
            missed=[_iso(s) for s in due.missed],
        )
        if alert is not None:
            log.warning(
                "schedule_alert",
                plan=plan.name,
                run_id=run_id,
                reasons=list(alert.reasons),
                findings=len(alert.findings),
            )
            if self._notifier is not None:
                self._notifier.send(alert)
        record = RunRecord(
            plan=plan.name,
            slot=due.slot,
            run_id=run_id,
            status=report["audit"]["status"],
            findings=len(report["findings"]),
            report_dir=report_dir,
            missed=due.missed,
            alert=alert,
            exit_code=exit_code(report, self._fail_on, allow_partial=self._allow_partial),
            report=report,
        )
        log.info(
            "schedule_run_finished",
            plan=plan.name,
            run_id=run_id,
            status=record.status,
            findings=record.findings,
            report=str(report_dir),
        )
        return record

    def run_forever(self, *, max_runs: int | None = None) -> list[RunRecord]:
        """Run due slots, sleep until the next one, repeat until `sleep` says stop.

        A failing run (a bug, a full disk) is logged and retried at the next wake-up
        rather than ending the loop: an unattended scheduler must outlive one bad slot.
        `max_runs` bounds the loop (tests); None runs until stopped.
        """
        records: list[RunRecord] = []
        while max_runs is None or len(records) < max_runs:
            for due in self.due():
                try:
                    record = self.run_slot(due)
                    if record is not None:
                        records.append(record)
                except Exception as exc:
                    log.exception("schedule_run_crashed", plan=due.plan.name, error=str(exc))
            now = _utc(self._clock())
            wake = self.next_wakeup(now)
            log.info("schedule_sleeping", until=_iso(wake))
            if self._sleep(max(0.0, (wake - now).total_seconds())):
                log.info("schedule_stopped")
                break
        return records
