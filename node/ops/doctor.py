"""`fedaudit node doctor`: is this node fit to serve, and if not, what to fix first.

A data officer runs it before `node serve`, after an upgrade, or from a monitoring
cron. Each check returns a structured `CheckResult` (ok, warning, error or skipped,
a sentence, and machine-readable details) so the same results feed the terminal,
`--json` and alerting. The doctor never writes: it opens the database read-only
(a mistyped SQLite path is reported, not created) and only inspects.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, func, inspect, select, text

from fedaudit.node.privacy import cohorts
from fedaudit.node.privacy.ledger import spent_ranges
from fedaudit.node.privacy.policy import Policy
from fedaudit.node.store.db import is_sqlite, make_readonly_engine, sqlite_path
from fedaudit.node.store.models import DataVersion, LedgerCohortRange, LedgerEntry

log = structlog.get_logger(__name__)

_LEDGER_STATES = ("reserved", "released", "failed")
_MIB = 1024 * 1024


class Status(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"
    SKIPPED = "skipped"


_RANK = {Status.SKIPPED: 0, Status.OK: 0, Status.WARNING: 1, Status.ERROR: 2}


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, verdict, a sentence for the officer, and details for machines."""

    name: str
    status: Status
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "summary": self.summary,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class DoctorOptions:
    """Thresholds. The defaults suit a node that imports quarterly and runs NTP."""

    cert_warning_days: int = 30
    stuck_reserved_minutes: int = 15
    max_data_age_days: int = 120
    clock_skew_warning_s: float = 5.0
    clock_skew_error_s: float = 300.0
    slow_database_ms: float = 500.0
    disk_warning_bytes: int = 1024 * _MIB
    disk_error_bytes: int = 100 * _MIB


def worst(results: Sequence[CheckResult]) -> Status:
    """The overall verdict: the worst status among the results (skipped counts as ok)."""
    status = Status.OK
    for result in results:
        if _RANK[result.status] > _RANK[status]:
            status = result.status
    return status


def exit_code(results: Sequence[CheckResult], *, strict: bool) -> int:
    """0 when fit to serve; 1 on any error, or on any warning as well when `strict`."""
    overall = worst(results)
    if overall is Status.ERROR or (strict and overall is Status.WARNING):
        return 1
    return 0


def run_doctor(
    db_url: str,
    policy_path: Path | None,
    tls_paths: Sequence[Path] = (),
    *,
    options: DoctorOptions | None = None,
    now: Callable[[], dt.datetime] | None = None,
) -> list[CheckResult]:
    """Run every check and return the results in a stable order (nothing is written)."""
    options = options or DoctorOptions()
    clock = now or (lambda: dt.datetime.now(dt.UTC))
    policy, policy_result = check_policy(policy_path)
    results = [policy_result, check_tls(tls_paths, clock(), options.cert_warning_days)]
    try:
        engine = make_readonly_engine(db_url)
    except Exception as exc:  # a malformed URL or an unknown driver
        results.append(CheckResult("database", Status.ERROR, f"cannot use {db_url!r}: {exc}"))
        return results
    try:
        database = check_database(engine, options)
        results.append(database)
        db_checks = ("schema", "clock", "disk", "data_version", "ledger")
        if database.status is Status.ERROR:
            results.extend(
                CheckResult(name, Status.SKIPPED, "database not reachable") for name in db_checks
            )
            return results
        schema = check_schema(engine)
        results.append(schema)
        results.append(check_clock(engine, clock, options))
        results.append(check_disk(engine, options))
        tables = set(inspect(engine).get_table_names())
        if {"data_versions", "ledger_entries"} <= tables:
            results.append(check_data_version(engine, clock(), options.max_data_age_days))
            results.append(check_ledger(engine, policy, clock(), options.stuck_reserved_minutes))
        else:
            results.extend(
                CheckResult(name, Status.SKIPPED, "the database has no node schema yet")
                for name in ("data_version", "ledger")
            )
    finally:
        engine.dispose()
    log.info("doctor.done", status=worst(results).value)
    return results


# --- database --------------------------------------------------------------------------------


def check_database(engine: Engine, options: DoctorOptions) -> CheckResult:
    """Can we connect and run a statement, and how long does a round trip take?"""
    path = sqlite_path(engine)
    if path is not None and not path.exists():
        return CheckResult(
            "database", Status.ERROR, f"no SQLite database at {path}", {"path": str(path)}
        )
    try:
        start = time.perf_counter()
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).scalar_one()
            latency_ms = (time.perf_counter() - start) * 1000
            version = (
                conn.execute(text("SELECT sqlite_version()")).scalar_one()
                if is_sqlite(engine)
                else conn.execute(text("SHOW server_version")).scalar_one()
            )
    except Exception as exc:
        return CheckResult(
            "database",
            Status.ERROR,
            f"cannot reach the database: {_first_line(exc)}",
            {"error": type(exc).__name__},
        )
    details = {
        "backend": engine.dialect.name,
        "server_version": str(version),
        "latency_ms": round(latency_ms, 2),
    }
    if latency_ms > options.slow_database_ms:
        return CheckResult(
            "database",
            Status.WARNING,
            f"reachable but slow: {latency_ms:.0f} ms to connect and answer SELECT 1",
            details,
        )
    return CheckResult(
        "database", Status.OK, f"{engine.dialect.name} {version}, {latency_ms:.1f} ms", details
    )


def check_schema(engine: Engine) -> CheckResult:
    """Is the schema at this release's head, and if not, what would `node migrate` do?"""
    from fedaudit.node.store.schema import SchemaError, SchemaTooNewError, inspect_schema

    try:
        state = inspect_schema(engine)
    except SchemaTooNewError as exc:
        return CheckResult("schema", Status.ERROR, str(exc))
    except SchemaError as exc:
        return CheckResult("schema", Status.ERROR, str(exc))
    details: dict[str, Any] = {
        "current": state.current,
        "head": state.head,
        "pending": [step.revision for step in state.pending],
    }
    if state.problems:
        details["problems"] = list(state.problems)
        return CheckResult(
            "schema",
            Status.ERROR,
            "node tables without a schema version that match no release: "
            + "; ".join(state.problems),
            details,
        )
    if state.empty:
        return CheckResult(
            "schema",
            Status.WARNING,
            "empty database: `fedaudit node migrate` (or the first import) creates the schema",
            details,
        )
    if state.adopt is not None:
        details["adopt"] = state.adopt
    if state.at_target:
        return CheckResult("schema", Status.OK, f"at revision {state.head} (current)", details)
    steps = ", ".join(f"{step.revision} ({step.message})" for step in state.pending)
    adopt = (
        f"unversioned schema matching revision {state.adopt} will be adopted"
        if state.adopt
        else f"at revision {state.current}"
    )
    return CheckResult(
        "schema",
        Status.WARNING,
        f"{adopt}; `fedaudit node migrate` would apply: {steps or 'nothing'}",
        details,
    )


# --- policy and certificates ----------------------------------------------------------------


def check_policy(path: Path | None) -> tuple[Policy | None, CheckResult]:
    """Does the policy file load under the node's strict rules?"""
    from fedaudit.node.errors import PolicyError
    from fedaudit.node.privacy.policy import load_policy

    if path is None:
        return None, CheckResult("policy", Status.SKIPPED, "no policy file given (--policy)")
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        return None, CheckResult("policy", Status.ERROR, str(exc), {"path": str(path)})
    except OSError as exc:
        return None, CheckResult(
            "policy", Status.ERROR, f"{path}: cannot read: {exc.strerror}", {"path": str(path)}
        )
    details = {
        "path": str(path),
        "requesters": sorted(policy.requesters),
        "budget_period": policy.budget_period,
        "node_rho_total": policy.node_rho_total,
    }
    summary = (
        f"{len(policy.requesters)} requester(s), budget per {policy.budget_period}, "
        f"node total {policy.node_rho_total:g} rho"
    )
    return policy, CheckResult("policy", Status.OK, summary, details)


def check_tls(paths: Sequence[Path], now: dt.datetime, warning_days: int) -> CheckResult:
    """Are the certificates there and valid, and how many days until each expires?"""
    from cryptography import x509

    if not paths:
        return CheckResult("tls", Status.SKIPPED, "no certificates given (--tls-cert)")
    files: list[dict[str, Any]] = []
    status = Status.OK
    problems: list[str] = []
    for path in paths:
        entry: dict[str, Any] = {"path": str(path)}
        files.append(entry)
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except OSError as exc:
            entry["error"] = f"cannot read: {exc.strerror}"
        except ValueError:
            entry["error"] = "no PEM certificate in the file"
        if "error" in entry:
            status = Status.ERROR
            problems.append(f"{path}: {entry['error']}")
            continue
        entry["certificates"] = []
        for cert in certs:
            days = (cert.not_valid_after_utc - now).total_seconds() / 86400
            subject = cert.subject.rfc4514_string()
            entry["certificates"].append(
                {
                    "subject": subject,
                    "not_after": cert.not_valid_after_utc.isoformat(),
                    "days_left": round(days, 1),
                }
            )
            if cert.not_valid_before_utc > now:
                status = Status.ERROR
                problems.append(
                    f"{path}: {subject} is not valid before {cert.not_valid_before_utc}"
                )
            elif days < 0:
                status = Status.ERROR
                problems.append(f"{path}: {subject} expired {math.floor(-days)} day(s) ago")
            elif days < warning_days:
                status = max(status, Status.WARNING, key=_RANK.__getitem__)
                problems.append(f"{path}: {subject} expires in {math.floor(days)} day(s)")
    details: dict[str, Any] = {"files": files}
    readable = [Path(f["path"]) for f in files if "error" not in f]
    extra = _tls_module_warnings(readable, warning_days)
    if extra:
        details["tls_module"] = extra
    if problems:
        return CheckResult("tls", status, "; ".join(problems), details)
    soonest = min((c["days_left"] for f in files for c in f.get("certificates", [])), default=None)
    return CheckResult(
        "tls",
        Status.OK,
        f"{len(paths)} file(s) valid; the first expiry is in {soonest:.0f} day(s)",
        details,
    )


def _tls_module_warnings(paths: Sequence[Path], within_days: int) -> list[str]:
    """What the PKI module's own `expiry_warnings` says, where that module is installed.

    Our own verdict above does not depend on it; this only adds its wording (and,
    should the two ever disagree, shows it).
    """
    try:
        from fedaudit.pki.authority import expiry_warnings
    except ImportError:
        try:
            from fedaudit.pki.tls import expiry_warnings  # type: ignore[attr-defined,no-redef]
        except ImportError:
            return []
    try:
        found = expiry_warnings(list(paths), within_days)
    except Exception as exc:  # its failure must not hide our own verdict
        return [f"expiry_warnings failed: {type(exc).__name__}: {exc}"]
    return [str(getattr(item, "message", item)) for item in found]


# --- clock and disk -------------------------------------------------------------------------


def check_clock(
    engine: Engine, clock: Callable[[], dt.datetime], options: DoctorOptions
) -> CheckResult:
    """Is the clock sane? Budget periods, certificate validity and ledger times depend on it.

    On PostgreSQL the system clock (`clock`) is compared with the server's, taking
    the round trip's midpoint; everywhere the newest ledger entry must not lie in the
    future (a clock set back would charge requests to a past budget period).
    """
    now = clock().astimezone(dt.UTC)
    details: dict[str, Any] = {
        "system_utc": now.isoformat(),
        "local_utc_offset": str(dt.datetime.now().astimezone().utcoffset()),
    }
    status, notes = Status.OK, []
    if not is_sqlite(engine):
        with engine.connect() as conn:
            before = clock()
            server = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
            after = clock()
        skew = (server - (before + (after - before) / 2)).total_seconds()
        details["database_skew_s"] = round(skew, 3)
        if abs(skew) > options.clock_skew_error_s:
            status = Status.ERROR
        elif abs(skew) > options.clock_skew_warning_s:
            status = Status.WARNING
        notes.append(f"database server clock differs by {skew:+.1f} s")
    else:
        notes.append("SQLite uses this machine's clock")
    newest = _newest_ledger_time(engine)
    if newest is not None:
        details["newest_ledger_entry"] = newest.isoformat()
        if newest - now > dt.timedelta(minutes=5):
            status = Status.ERROR
            notes.append(
                f"the newest ledger entry ({newest.isoformat()}) is in the future: "
                "was the clock set back?"
            )
    return CheckResult("clock", status, "; ".join(notes), details)


def _newest_ledger_time(engine: Engine) -> dt.datetime | None:
    if "ledger_entries" not in inspect(engine).get_table_names():
        return None
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(LedgerEntry.created_at))).scalar_one()
    if newest is None:
        return None
    if isinstance(newest, str):  # SQLite returns text from an aggregate
        newest = dt.datetime.fromisoformat(newest)
    # The ledger writes UTC; SQLite drops the offset on storage.
    return newest.replace(tzinfo=dt.UTC) if newest.tzinfo is None else newest


def check_disk(engine: Engine, options: DoctorOptions) -> CheckResult:
    """Is there room for the SQLite file to grow (imports, WAL)? Not ours to judge on PostgreSQL."""
    path = sqlite_path(engine)
    if path is None:
        return CheckResult(
            "disk", Status.SKIPPED, "not applicable: the PostgreSQL server manages its storage"
        )
    usage = shutil.disk_usage(path.parent)
    size = sum(
        p.stat().st_size
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
        if p.exists()
    )
    details = {
        "directory": str(path.parent),
        "free_bytes": usage.free,
        "total_bytes": usage.total,
        "database_bytes": size,
    }
    summary = (
        f"{usage.free / _MIB:,.0f} MiB free in {path.parent} (database {size / _MIB:,.1f} MiB)"
    )
    # An import rewrites the registry inside one transaction: the WAL may grow to the
    # database's size, so demand room for that too.
    if usage.free < max(options.disk_error_bytes, size):
        return CheckResult("disk", Status.ERROR, summary, details)
    if usage.free < max(options.disk_warning_bytes, 2 * size):
        return CheckResult("disk", Status.WARNING, summary, details)
    return CheckResult("disk", Status.OK, summary, details)


# --- data and ledger ------------------------------------------------------------------------


def check_data_version(engine: Engine, now: dt.datetime, max_age_days: int) -> CheckResult:
    """Is there data to answer from, and how old is it?"""
    with engine.connect() as conn:
        row = conn.execute(
            select(DataVersion.version, DataVersion.imported_at, DataVersion.reference_date)
            .order_by(DataVersion.id.desc())
            .limit(1)
        ).first()
    if row is None:
        return CheckResult(
            "data_version",
            Status.WARNING,
            "no data imported yet: the node answers no query until `fedaudit node import`",
        )
    imported = row.imported_at
    if imported.tzinfo is None:  # SQLite drops the offset; the hours do not matter here
        imported = imported.replace(tzinfo=dt.UTC)
    age_days = (now - imported).total_seconds() / 86400
    details = {
        "version": row.version,
        "imported_at": imported.isoformat(),
        "reference_date": row.reference_date.isoformat(),
        "age_days": round(age_days, 1),
    }
    summary = f"{row.version}, imported {age_days:.0f} day(s) ago"
    if age_days > max_age_days:
        return CheckResult(
            "data_version",
            Status.WARNING,
            f"{summary}: older than {max_age_days} days, audits see stale data",
            details,
        )
    return CheckResult("data_version", Status.OK, summary, details)


def check_ledger(
    engine: Engine, policy: Policy | None, now: dt.datetime, stuck_minutes: int
) -> CheckResult:
    """Basic integrity of the privacy ledger.

    Errors: negative charges, unknown states, a requester or the node having spent
    more than the policy allows (remaining below zero: the policy was tightened
    after the fact, or something bypassed the ledger). Warning: entries `reserved`
    for longer than a query takes, i.e. a node that died mid-request (the charge
    stands; it is not refunded automatically, because noise may have been drawn).
    """
    from fedaudit.common.budget_units import cap_to_units, units_to_text

    errors: list[str] = []
    warnings: list[str] = []
    details: dict[str, Any] = {}
    cutoff = now - dt.timedelta(minutes=stuck_minutes)
    with engine.connect() as conn:
        negative = conn.execute(select(func.count()).where(LedgerEntry.rho_units < 0)).scalar_one()
        unknown = conn.execute(
            select(func.count()).where(LedgerEntry.state.not_in(_LEDGER_STATES))
        ).scalar_one()
        reserved = conn.execute(
            select(LedgerEntry.id, LedgerEntry.created_at).where(LedgerEntry.state == "reserved")
        ).all()
        entries = conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()
        # Caps hold per cohort: what counts is the most charged cohort's sum (before
        # migration 0005 there are no cohorts, and every entry counts for the node).
        cohorted = "ledger_cohort_ranges" in inspect(conn).get_table_names()
        node_spent, node_cohort = _most_charged(conn, cohorted)
        unranged = (
            conn.execute(
                select(func.count()).where(
                    LedgerEntry.id.not_in(select(LedgerCohortRange.entry_id))
                )
            ).scalar_one()
            if cohorted
            else 0
        )
        period_spent: dict[str, int] = {}
        if policy is not None:
            period = policy.period_of(now)
            details["period"] = period
            rows = conn.execute(
                select(LedgerEntry.requester)
                .where(LedgerEntry.period == period)
                .group_by(LedgerEntry.requester)
            ).scalars()
            period_spent = {
                requester: _most_charged(conn, cohorted, requester, period)[0] for requester in rows
            }
    details.update(entries=entries, node_spent_rho=units_to_text(max(node_spent, 0)))
    if node_cohort and node_spent:
        details["node_most_charged_cohort"] = node_cohort
    if unranged:
        errors.append(
            f"{unranged} entr(ies) charged to no cohort (written around the ledger; "
            "they count against no cap)"
        )
    if negative:
        errors.append(f"{negative} entr(ies) with a negative charge")
    if unknown:
        errors.append(f"{unknown} entr(ies) in an unknown state")
    stuck = [
        entry_id
        for entry_id, created in reserved
        if (created if created.tzinfo else created.replace(tzinfo=dt.UTC)) < cutoff
    ]
    if stuck:
        details["stuck_reserved_ids"] = stuck[:20]
        warnings.append(
            f"{len(stuck)} entr(ies) reserved for more than {stuck_minutes} minutes "
            f"(a request died mid-way; ids {', '.join(map(str, stuck[:5]))})"
        )
    if policy is None:
        details["caps"] = "not checked: no valid policy"
    else:
        node_left = cap_to_units(policy.node_rho_total) - node_spent
        details["node_remaining_rho"] = units_to_text(max(node_left, 0))
        if node_left < 0:
            errors.append(f"the node has spent {units_to_text(-node_left)} rho more than its total")
        remaining: dict[str, str] = {}
        for requester, spent in sorted(period_spent.items()):
            entry = policy.requesters.get(requester)
            if entry is None:
                continue  # a requester no longer in the policy has no cap to exceed
            left = cap_to_units(entry.rho_per_period) - spent
            remaining[requester] = units_to_text(max(left, 0))
            if left < 0:
                errors.append(
                    f"requester {requester!r} has spent {units_to_text(-left)} rho more than "
                    f"its cap in period {details['period']}"
                )
        details["requester_remaining_rho"] = remaining
    if errors:
        return CheckResult("ledger", Status.ERROR, "; ".join(errors + warnings), details)
    if warnings:
        return CheckResult("ledger", Status.WARNING, "; ".join(warnings), details)
    return CheckResult(
        "ledger",
        Status.OK,
        f"{entries} entr(ies), node spent {details['node_spent_rho']} rho, none stuck",
        details,
    )


def _most_charged(
    conn: Connection, cohorted: bool, requester: str | None = None, period: str | None = None
) -> tuple[int, str]:
    """(units, cohort) of the most charged cohort; the plain sum on a pre-cohort schema."""
    if cohorted:
        return cohorts.peak(spent_ranges(conn, requester, period), cohorts.ALL)
    query = select(func.coalesce(func.sum(LedgerEntry.rho_units), 0))
    if requester is not None:
        query = query.where(LedgerEntry.requester == requester)
    if period is not None:
        query = query.where(LedgerEntry.period == period)
    return int(conn.execute(query).scalar_one()), ""


def _first_line(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__
