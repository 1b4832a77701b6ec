"""`fedaudit node doctor`: each check on real databases, certificates and policy files."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, text

from fedaudit.cli.main import main
from fedaudit.node.domain import Charge, Mechanism
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.ops.doctor import (
    DoctorOptions,
    Status,
    check_clock,
    check_data_version,
    check_ledger,
    check_schema,
    check_tls,
    exit_code,
    run_doctor,
)
from fedaudit.node.privacy.ledger import Ledger
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.store.db import create_schema, make_engine, make_readonly_engine
from fedaudit.node.store.schema import head_revision, revisions, upgrade

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
NOW = dt.datetime(2026, 5, 4, 12, 0, tzinfo=dt.UTC)
POLICY_YAML = """\
version: 1
requesters:
  oversight-board: {rho_per_period: 1.0, templates: all}
budget: {period: quarter, node_rho_total: 10.0, max_rho_per_request: 0.5}
"""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _cert(path: Path, *, days_left: float, started_days_ago: float = 30) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, path.stem)])
    now = _utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=started_days_ago))
        .not_valid_after(now + dt.timedelta(days=days_left))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(name="policy_file")
def _policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_YAML)
    return path


@pytest.fixture(name="engine")
def _engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _reserve(engine: Engine, request_id: str, rho: float, now: dt.datetime) -> int:
    ledger = Ledger(engine, example_policy({"oversight-board": 5.0}, node_rho_total=20.0))
    return ledger.reserve(
        request_id=request_id,
        requester="oversight-board",
        template="assessment_results",
        template_version="1",
        query_hash=request_id.ljust(64, "0"),
        data_version="v1",
        mechanism=Mechanism.DISCRETE_GAUSSIAN,
        charge=Charge(rho=rho),
        now=now,
    )


def test_ledger_check_holds_the_caps_per_cohort(engine: Engine) -> None:
    """Charges to different cohorts may add up past a cap without breaking it: the check
    compares each cap with the most charged cohort, and flags entries charged to no cohort."""
    create_schema(engine)
    ledger = Ledger(engine, example_policy({"oversight-board": 1.0}, node_rho_total=1.0))
    for month in ("2026-01", "2026-02", "2026-03"):
        ledger.reserve(
            request_id=month, requester="oversight-board", template="assessment_results",
            template_version="1", query_hash=month.ljust(64, "0"), data_version="v1",
            mechanism=Mechanism.DISCRETE_GAUSSIAN, charge=Charge(rho=0.5), now=NOW,
            cohorts=((month, month),),
        )  # fmt: skip
    tight = example_policy({"oversight-board": 1.0}, node_rho_total=1.0)
    result = check_ledger(engine, tight, NOW, stuck_minutes=15)
    assert result.status is Status.OK, result.summary
    assert result.details["node_spent_rho"] == "0.5"  # not 1.5
    assert result.details["node_most_charged_cohort"] == "2026-01"
    assert result.details["requester_remaining_rho"] == {"oversight-board": "0.5"}
    with engine.begin() as conn:  # an entry written around the ledger, with no cohort
        conn.execute(text("DELETE FROM ledger_cohort_ranges WHERE first = '2026-02'"))
    result = check_ledger(engine, tight, NOW, stuck_minutes=15)
    assert result.status is Status.ERROR
    assert "1 entr(ies) charged to no cohort" in result.summary


def test_healthy_node_passes_every_check(
    engine: Engine, db_url: str, policy_file: Path, tmp_path: Path
) -> None:
    """An imported node with a valid policy and a fresh certificate is fit even under --strict."""
    import_bundle(engine, FIXTURE_BUNDLE)
    cert = _cert(tmp_path / "node.pem", days_left=365)
    results = run_doctor(db_url, policy_file, [cert])
    by_name = {r.name: r for r in results}
    assert set(by_name) == {
        "policy",
        "tls",
        "database",
        "schema",
        "clock",
        "disk",
        "data_version",
        "ledger",
    }
    expected_disk = Status.SKIPPED if engine.dialect.name == "postgresql" else Status.OK
    assert by_name.pop("disk").status is expected_disk
    assert {name: r.status for name, r in by_name.items()} == dict.fromkeys(by_name, Status.OK)
    assert by_name["schema"].details["current"] == head_revision()
    assert 364 <= by_name["tls"].details["files"][0]["certificates"][0]["days_left"] <= 365
    assert exit_code(results, strict=True) == 0


def test_certificates_warn_before_expiry_and_fail_after(tmp_path: Path) -> None:
    """Under 30 days left is a warning; expired, not yet valid, missing or not PEM is an error."""
    now = _utcnow()
    fine = _cert(tmp_path / "fine.pem", days_left=200)
    soon = _cert(tmp_path / "soon.pem", days_left=10)
    expired = _cert(tmp_path / "expired.pem", days_left=-3)
    future = _cert(tmp_path / "future.pem", days_left=400, started_days_ago=-2)
    garbage = tmp_path / "key.pem"
    garbage.write_text("not a certificate")

    assert check_tls([fine], now, 30).status is Status.OK
    warned = check_tls([fine, soon], now, 30)
    assert warned.status is Status.WARNING
    assert re.search(r"soon\.pem: CN=soon expires in (9|10) day\(s\)", warned.summary)
    for bad, words in (
        (expired, "expired 3 day(s) ago"),
        (future, "is not valid before"),
        (garbage, "no PEM certificate"),
        (tmp_path / "missing.pem", "cannot read"),
    ):
        result = check_tls([soon, bad], now, 30)
        assert result.status is Status.ERROR, bad
        assert words in result.summary
    assert check_tls([], now, 30).status is Status.SKIPPED


def test_schema_check_reports_what_migrate_would_do(sqlite_url: str) -> None:
    """Empty and older schemas are warnings naming the pending steps; a newer one is an error."""
    engine = make_engine(sqlite_url)
    reader = make_readonly_engine(sqlite_url)
    with engine.begin() as conn:  # create the file, nothing else
        conn.execute(text("CREATE TABLE operator_notes (id INTEGER PRIMARY KEY)"))
    assert check_schema(reader).status is Status.WARNING
    assert "empty database" in check_schema(reader).summary
    if len(revisions()) > 1:
        upgrade(engine, revisions()[0].revision)
        older = check_schema(reader)
        assert older.status is Status.WARNING
        assert older.details["pending"] == [step.revision for step in revisions()[1:]]
        assert "fedaudit node migrate" in older.summary
    upgrade(engine)
    assert check_schema(reader).status is Status.OK
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    newer = check_schema(reader)
    assert newer.status is Status.ERROR
    assert "newer release" in newer.summary
    reader.dispose()
    engine.dispose()


def test_ledger_check_finds_stuck_reservations_and_overspending(engine: Engine) -> None:
    """Old `reserved` entries are a warning; spending above the policy's cap is an error."""
    create_schema(engine)
    stuck = _reserve(engine, "stuck", 0.5, NOW - dt.timedelta(hours=2))
    _reserve(engine, "fresh", 0.25, NOW - dt.timedelta(minutes=1))
    relaxed = example_policy({"oversight-board": 1.0}, node_rho_total=10.0)
    result = check_ledger(engine, relaxed, NOW, stuck_minutes=15)
    assert result.status is Status.WARNING
    assert result.details["stuck_reserved_ids"] == [stuck]
    assert result.details["requester_remaining_rho"] == {"oversight-board": "0.25"}

    _reserve(engine, "third", 0.5, NOW)
    result = check_ledger(engine, relaxed, NOW, stuck_minutes=15)
    assert result.status is Status.ERROR
    assert (
        "'oversight-board' has spent 0.25 rho more than its cap in period 2026-Q2" in result.summary
    )
    tight_node = example_policy({"oversight-board": 2.0}, node_rho_total=1.0)
    assert "node has spent 0.25 rho more" in check_ledger(engine, tight_node, NOW, 600).summary
    assert check_ledger(engine, None, NOW, 600).status is Status.OK


def test_future_ledger_entry_is_a_clock_error(engine: Engine) -> None:
    """A ledger entry a day ahead of the system clock means the clock went back."""
    create_schema(engine)
    _reserve(engine, "ahead", 0.1, NOW + dt.timedelta(days=1))
    if engine.dialect.name == "sqlite":  # (PostgreSQL also compares with the server's clock)
        later = check_clock(engine, lambda: NOW + dt.timedelta(days=1), DoctorOptions())
        assert later.status is Status.OK
    result = check_clock(engine, lambda: NOW, DoctorOptions())
    assert result.status is Status.ERROR
    assert "is in the future" in result.summary


def test_database_clock_skew_is_measured(pg_url: str) -> None:
    """On PostgreSQL the system clock is compared with the server's: seconds warn, minutes fail."""
    engine = make_engine(pg_url)
    options = DoctorOptions()
    in_sync = check_clock(engine, _utcnow, options)
    assert in_sync.status is Status.OK
    assert abs(in_sync.details["database_skew_s"]) < 1
    ahead = check_clock(engine, lambda: _utcnow() + dt.timedelta(seconds=30), options)
    assert ahead.status is Status.WARNING
    assert -31 < ahead.details["database_skew_s"] < -29
    assert (
        check_clock(engine, lambda: _utcnow() - dt.timedelta(hours=1), options).status
        is Status.ERROR
    )
    engine.dispose()


def test_data_version_missing_or_stale_warns(engine: Engine) -> None:
    """No import yet, or data older than the limit, is a warning."""
    create_schema(engine)
    assert "no data imported" in check_data_version(engine, NOW, 120).summary
    import_bundle(engine, FIXTURE_BUNDLE)
    now = _utcnow()
    assert check_data_version(engine, now, 120).status is Status.OK
    stale = check_data_version(engine, now + dt.timedelta(days=200), 120)
    assert stale.status is Status.WARNING
    assert stale.details["age_days"] >= 199


def test_missing_sqlite_file_is_reported_not_created(tmp_path: Path, policy_file: Path) -> None:
    """A mistyped SQLite path is an error, the database checks are skipped, no file appears."""
    path = tmp_path / "typo.db"
    results = run_doctor(str(path), policy_file)
    by_name = {r.name: r.status for r in results}
    assert by_name["database"] is Status.ERROR
    assert by_name["ledger"] is Status.SKIPPED
    assert not path.exists()
    assert exit_code(results, strict=False) == 1


def test_doctor_command_exit_codes_and_json(
    sqlite_url: str, policy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Warnings exit 0 (1 with --strict), errors exit 1, usage errors exit 2; --json is parseable."""
    engine = make_engine(sqlite_url)
    create_schema(engine)  # no data imported: a warning
    engine.dispose()
    assert main(["node", "doctor", "--db", sqlite_url, "--policy", str(policy_file)]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "node",
                "doctor",
                "--db",
                sqlite_url,
                "--policy",
                str(policy_file),
                "--strict",
                "--json",
            ]
        )
        == 1
    )
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "warning"
    assert {c["name"]: c["status"] for c in report["checks"]}["data_version"] == "warning"
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text(POLICY_YAML.replace("rho_per_period: 1.0", "rho_per_period: -1"))
    assert main(["node", "doctor", "--db", sqlite_url, "--policy", str(bad_policy)]) == 1
    assert "rho_per_period" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["node", "doctor", "--policy", str(policy_file)])
    assert exc.value.code == 2
