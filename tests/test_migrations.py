"""Schema migrations: old databases upgrade and keep their ledger; newer ones are refused."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, func, insert, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from fedaudit.cli.main import main
from fedaudit.node.domain import Charge, Mechanism, QuerySpec
from fedaudit.node.ingest.bundle import validate_bundle
from fedaudit.node.ops.roles import QUERY_TABLES, query_role_grants
from fedaudit.node.privacy.ledger import Ledger
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.store.db import create_schema, make_engine
from fedaudit.node.store.models import REGISTRY_TABLES, Base
from fedaudit.node.store.schema import (
    SchemaError,
    SchemaTooNewError,
    current_revision,
    ensure_schema,
    head_revision,
    inspect_schema,
    revisions,
    upgrade,
)

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
FIRST = "0001"
POLICY = example_policy({"oversight-board": 2.0, "other-auditor": 1.0}, node_rho_total=100.0)
T0 = dt.datetime(2026, 5, 4, 9, 30, tzinfo=dt.UTC)


@pytest.fixture(name="engine")
def _engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _fill_old_database(engine: Engine) -> None:
    """Registry, a data version and ledger entries written through the 0001 tables as they are."""
    parsed = validate_bundle(FIXTURE_BUNDLE, today=T0.date())
    meta = MetaData()
    with engine.begin() as conn:
        meta.reflect(conn)
        for model in REGISTRY_TABLES:
            rows = parsed.rows[model.__tablename__]
            if rows:
                conn.execute(insert(meta.tables[model.__tablename__]), rows)
        conn.execute(
            insert(meta.tables["data_versions"]),
            {
                "version": "v1-old",
                "bundle_digest": parsed.digest,
                "imported_at": T0,
                "reference_date": T0.date(),
                "row_counts": "{}",
            },
        )
        ledger = meta.tables["ledger_entries"]
        for i, (requester, period, units, state, eps) in enumerate(
            [
                ("oversight-board", "2026-Q1", 50_000_000_000, "released", None),
                ("oversight-board", "2026-Q2", 30_000_000_001, "released", None),
                ("oversight-board", "2026-Q2", 125_000_000_000, "failed", 0.5),
                ("other-auditor", "2026-Q2", 10_000_000_000, "reserved", None),
                ("other-auditor", "2025-Q4", 999_999_999_999, "released", None),
                ("oversight-board", "2026-Q2", 1, "reserved", None),
            ]
        ):
            conn.execute(
                insert(ledger),
                {
                    "request_id": f"req-{i}",
                    "requester": requester,
                    "period": period,
                    "template": "assessment_results",
                    "template_version": "1",
                    "query_hash": f"{i:064x}",
                    "data_version": "v1-old",
                    "mechanism": "discrete_gaussian",
                    "rho_units": units,
                    "epsilon": eps,
                    "delta": 0.0,
                    "state": state,
                    "answer": '{"cells": [1, 2, 3]}' if state == "released" else None,
                    "created_at": T0 + dt.timedelta(minutes=i),
                },
            )
        # A cancelled reservation: its id must never be handed out again.
        conn.execute(ledger.delete().where(ledger.c.request_id == "req-5"))


def _ledger_snapshot(engine: Engine) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    ledger = MetaData()
    with engine.connect() as conn:
        ledger.reflect(conn, only=["ledger_entries"])
        table = ledger.tables["ledger_entries"]
        rows = [tuple(row) for row in conn.execute(select(table).order_by(table.c.id))]
        sums = [
            tuple(row)
            for row in conn.execute(
                select(table.c.requester, table.c.period, func.sum(table.c.rho_units))
                .group_by(table.c.requester, table.c.period)
                .order_by(table.c.requester, table.c.period)
            )
        ]
    return rows, sums


@pytest.mark.parametrize("versioned", [True, False], ids=["stamped", "pre-migrations"])
def test_old_database_upgrades_and_keeps_its_ledger(engine: Engine, versioned: bool) -> None:
    """A 0001 database with data and a ledger reaches head with every entry and sum unchanged."""
    upgrade(engine, FIRST)
    if not versioned:  # what `create_schema` made before migrations existed
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE alembic_version"))
    _fill_old_database(engine)
    before_rows, before_sums = _ledger_snapshot(engine)
    assert len(before_rows) == 5

    state = inspect_schema(engine)
    assert state.adopt == (None if versioned else FIRST)
    create_schema(engine)  # the path `node serve` and `node import` take

    assert current_revision(engine) == head_revision()
    after_rows, after_sums = _ledger_snapshot(engine)
    # 0005 adds the replay data key, empty on old entries (they replay by data version).
    assert after_rows == [(*row, None) for row in before_rows]
    assert after_sums == before_sums
    assert ("oversight-board", "2026-Q2", 155_000_000_001) in after_sums
    # The ledger keeps working on the upgraded database, and never reuses a cancelled id.
    new_id = Ledger(engine, POLICY).reserve(
        request_id="after-upgrade",
        requester="oversight-board",
        template="assessment_results",
        template_version="1",
        query_hash="f" * 64,
        data_version="v1-old",
        mechanism=Mechanism.DISCRETE_GAUSSIAN,
        charge=Charge(rho=0.25),
        now=T0,
    )
    assert new_id == 7
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM candidates")).scalar_one() == 10


def test_0004_database_gets_cohorts_and_old_charges_count_for_every_cohort(
    engine: Engine,
) -> None:
    """From 0004 with data and a ledger: every person gets their cohort (earliest record,
    clamped to the data's reference month); every old entry is charged to every cohort."""
    upgrade(engine, "0004")
    _fill_old_database(engine)
    with engine.connect() as conn:
        earliest = dict(
            conn.execute(
                text(
                    "SELECT candidate_id, MIN(d) FROM ("
                    " SELECT candidate_id, assessed_on AS d FROM assessments"
                    " UNION ALL SELECT candidate_id, issued_on FROM certificates"
                    " UNION ALL SELECT candidate_id, received_on FROM recognition_requests"
                    " UNION ALL SELECT candidate_id, lodged_on FROM appeals) AS dated"
                    " GROUP BY candidate_id"
                )
            ).all()
        )
        people = conn.execute(text("SELECT candidate_id FROM candidates")).scalars().all()
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    reference_month = T0.date().isoformat()[:7]
    with engine.connect() as conn:
        cohorts = dict(conn.execute(text("SELECT candidate_id, cohort FROM person_cohorts")).all())
        versions = set(conn.execute(text("SELECT data_version FROM person_cohorts")).scalars())
        ranges = conn.execute(
            text("SELECT entry_id, first, last FROM ledger_cohort_ranges ORDER BY entry_id")
        ).all()
        entry_ids = conn.execute(text("SELECT id FROM ledger_entries ORDER BY id")).scalars()
        entry_ids = list(entry_ids)
    expected = {
        person: min(str(earliest[person])[:7], reference_month)
        if person in earliest
        else reference_month
        for person in people
    }
    assert cohorts == expected
    assert len(cohorts) == 10
    assert len(set(cohorts.values())) > 1  # the fixture spans several months
    assert versions == {"v1-old"}
    assert [tuple(r) for r in ranges] == [(i, "0000-00", "9999-99") for i in entry_ids]
    # The old charges count against every cohort, old and new alike.
    ledger = Ledger(engine, POLICY)
    spent = ledger.spent_by_cohort(["2001-01", "2026-05", "2031-12"])
    assert len(set(spent.values())) == 1
    assert spent["2026-05"] == pytest.approx(
        (50_000_000_000 + 30_000_000_001 + 125_000_000_000 + 10_000_000_000 + 999_999_999_999)
        * 1e-12
    )


def test_models_and_migrated_schema_agree(engine: Engine) -> None:
    """Autogenerate finds no difference between the models and a database migrated to head."""
    create_schema(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_database_newer_than_the_code_is_refused(engine: Engine, db_url: str) -> None:
    """A revision this release does not know stops upgrade, create_schema and `node migrate`."""
    create_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaTooNewError, match="newer release"):
        upgrade(engine)
    with pytest.raises(SchemaTooNewError):
        create_schema(engine)
    assert main(["node", "migrate", "--db", db_url]) == 2
    assert current_revision(engine) == "9999_future"


def test_unversioned_tables_that_match_no_revision_are_not_adopted(engine: Engine) -> None:
    """Node tables with other columns and no version are refused, and nothing is created."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE ledger_entries (id INTEGER PRIMARY KEY, amount REAL)"))
    with pytest.raises(SchemaError, match="ledger_entries has unexpected column"):
        upgrade(engine)
    assert set(inspect(engine).get_table_names()) == {"ledger_entries"}


def test_ensure_schema_creates_empty_databases_but_upgrades_only_when_allowed(
    engine: Engine,
) -> None:
    """What `node serve` calls: an empty database is created, an older one is left to `migrate`."""
    assert ensure_schema(engine).current == head_revision()
    if len(revisions()) < 2:
        pytest.skip("only one revision exists")
    with engine.begin() as conn:  # back to an empty database, then to the first revision
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE alembic_version"))
    upgrade(engine, FIRST)
    with pytest.raises(SchemaError, match="node migrate"):
        ensure_schema(engine)
    assert current_revision(engine) == FIRST
    assert ensure_schema(engine, allow_upgrade=True).current == head_revision()
    assert current_revision(engine) == head_revision()


def _first_revision_tables() -> set[str]:
    scratch = make_engine("sqlite://")
    upgrade(scratch, FIRST)
    names = set(inspect(scratch).get_table_names())
    scratch.dispose()
    return names


def test_migrating_backwards_is_refused(sqlite_url: str) -> None:
    """Asking for an older revision than the database's is an error (downgrades drop data)."""
    if len(revisions()) < 2:
        pytest.skip("only one revision exists")
    engine = make_engine(sqlite_url)
    create_schema(engine)
    with pytest.raises(SchemaError, match="downgrades are not supported"):
        upgrade(engine, FIRST)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_migrate_command_dry_run_changes_nothing(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`node migrate --dry-run` lists the steps and their SQL; the real run then applies them."""
    engine = make_engine(sqlite_url)
    upgrade(engine, FIRST)
    assert main(["node", "migrate", "--db", sqlite_url, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert current_revision(engine) == FIRST
    for step in revisions()[1:]:
        assert f"would apply {step.revision}" in out
    if len(revisions()) > 1:
        assert "CREATE TABLE" in out
    assert main(["node", "migrate", "--db", sqlite_url]) == 0
    assert current_revision(engine) == head_revision()
    engine.dispose()


# --- the read-only query role (PostgreSQL) ---------------------------------------------------


@pytest.fixture(name="readonly_role")
def _readonly_role(pg_url: str) -> Iterator[str]:
    """A LOGIN role granted exactly what docs/operations.md grants the query role."""
    import psycopg

    role = f"fedaudit_ro_{uuid.uuid4().hex[:10]}"
    base = make_url(pg_url).set(drivername="postgresql", query={})
    admin_dsn = base.render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    yield role
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


def test_readonly_role_answers_queries_but_cannot_write(pg_url: str, readonly_role: str) -> None:
    """The query engine connected as the read-only role answers a query; its writes fail."""
    from fedaudit.node.ingest.bundle import import_bundle

    owner = make_engine(pg_url)
    import_bundle(owner, FIXTURE_BUNDLE)
    with owner.begin() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        for statement in query_role_grants(readonly_role, schema):
            conn.execute(text(statement))
    reader = make_engine(make_url(pg_url).set(username=readonly_role).render_as_string(False))
    try:
        service = NodeService(owner, POLICY, query_engine=reader)
        answer = service.query(
            "oversight-board",
            "ro-1",
            QuerySpec(template="assessment_results", group_by=("isco_code",), rho=0.1),
        )
        assert answer.cells
        with owner.connect() as conn:  # the charge went to the ledger through the owner
            assert conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one() == 1
        with reader.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM candidates")).scalar_one() == 10
        for statement in (
            "INSERT INTO providers (provider_id, name, provider_type, accreditation_status) "
            "VALUES ('x', 'x', 'x', 'x')",
            "SELECT count(*) FROM ledger_entries",
            "DELETE FROM ledger_entries",
        ):
            with reader.connect() as conn, pytest.raises(DBAPIError, match="permission denied"):
                conn.execute(text(statement))
    finally:
        reader.dispose()
        owner.dispose()


def test_documented_grants_name_exactly_the_query_tables() -> None:
    """docs/operations.md grants SELECT on the same tables as `query_role_grants`."""
    doc = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    grant = next(line for line in doc.splitlines() if line.startswith("GRANT SELECT ON"))
    tables = grant.removeprefix("GRANT SELECT ON").split(" TO ")[0]
    assert [name.strip() for name in tables.split(",")] == list(QUERY_TABLES)
