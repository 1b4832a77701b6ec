"""The node database opens and gets its schema on SQLite and PostgreSQL."""

from sqlalchemy import inspect

from fedaudit.node.store.db import create_schema, make_engine, normalise_url


def test_schema_is_created(db_url: str) -> None:
    """Every node table exists after create_schema, on both back-ends."""
    engine = make_engine(db_url)
    create_schema(engine)
    names = set(inspect(engine).get_table_names())
    assert {"candidates", "assessments", "ledger_entries", "data_versions"} <= names
    engine.dispose()


def test_bare_path_means_sqlite_file() -> None:
    """A data officer may type a plain path; it is a SQLite file."""
    assert normalise_url("node.db") == "sqlite:///node.db"
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
