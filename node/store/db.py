"""Database engines for a node: SQLite by default, PostgreSQL by URL.

SQLite needs two adjustments to behave like a server database under concurrency:
the pysqlite driver's own implicit BEGIN is switched off and every transaction
starts with `BEGIN IMMEDIATE`, so the writer lock is taken at the start of a
ledger transaction rather than at its first write (no lost updates, no upgrade
deadlocks); and foreign keys are enforced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def is_sqlite(engine: Engine) -> bool:
    """True when the engine talks to SQLite (ledger locking differs)."""
    return engine.dialect.name == "sqlite"


def normalise_url(url: str) -> str:
    """Accept `postgresql://` and bare file paths as well as full SQLAlchemy URLs.

    `postgresql://` means psycopg 3 (the driver we ship), not psycopg2; a bare path
    is a SQLite file, which is what a data officer most often types.
    """
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for a node database URL (see `normalise_url`)."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            **kwargs,
        )
        _configure_sqlite(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, **kwargs)
    return engine


def make_readonly_engine(url: str) -> Engine:
    """An engine that cannot write, for inspection (`fedaudit node doctor`, budget history).

    A SQLite file is opened read-only through a URI (so a mistyped path is reported
    instead of silently creating an empty database, and no writer lock is taken);
    PostgreSQL sessions are READ ONLY. The running node's own work is never blocked.
    """
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path in (None, "", ":memory:"):
            raise ValueError("an in-memory SQLite database cannot be inspected from outside")
        uri = f"sqlite:///file:{Path(path).resolve().as_posix()}?mode=ro&uri=true"
        return create_engine(uri, connect_args={"timeout": 30, "check_same_thread": False})
    return make_engine(url).execution_options(postgresql_readonly=True)


def sqlite_path(engine: Engine) -> Path | None:
    """The SQLite database file behind `engine` (None for PostgreSQL or in-memory)."""
    if not is_sqlite(engine):
        return None
    database = engine.url.database
    if database in (None, "", ":memory:"):
        return None
    if database.startswith("file:"):
        database = database[len("file:") :]
    return Path(database)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take control of transactions away from the driver (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_schema(engine: Engine) -> None:
    """Bring the database to the schema of this release, through the migrations.

    Kept under its old name because importing, serving and the tests call it. It
    creates an empty database, adopts one made before migrations existed and applies
    pending migrations; it refuses a database of a newer release (`SchemaTooNewError`)
    rather than let older code write into a schema it does not know.
    """
    from fedaudit.node.store.schema import upgrade

    upgrade(engine)
