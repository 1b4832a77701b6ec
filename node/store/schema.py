"""Schema versions of the node database: Alembic migrations driven from code.

A node's database outlives releases, and it holds the privacy ledger, which must
never be lost or reset by an upgrade. So the schema is versioned with Alembic
(`node/store/migrations/`), and every way into a database goes through `upgrade`:

- an empty database gets every migration;
- a database created by `create_schema` before migrations existed (no
  `alembic_version` table) is *adopted*: its tables and columns must equal those of
  one revision exactly, that revision is stamped, and the rest are applied;
- a database stamped with a revision this code does not know is NEWER than the code
  (someone ran a later release against it): it is refused, never touched.

The whole upgrade runs in one transaction (PostgreSQL and SQLite both have
transactional DDL), serialised between processes (an advisory lock on PostgreSQL,
`BEGIN IMMEDIATE` on SQLite), so a failed step or a concurrent start leaves the
database as it was. There is no alembic.ini: the `Config` is built here.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect, text

from fedaudit.node.errors import NodeError

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"
_PG_LOCK_KEY = 0x6665646175646974  # "fedaudit": one advisory lock for schema changes

Fingerprint = Mapping[str, frozenset[str]]
"""Table name -> column names: what adoption compares."""


class SchemaError(NodeError):
    """The database schema cannot be used or changed as asked; nothing was written."""


class SchemaTooNewError(SchemaError):
    """The database was migrated by a newer fedaudit release than this one."""


@dataclass(frozen=True)
class Step:
    """One migration: its revision id and what it does (its first docstring line)."""

    revision: str
    message: str


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands relative to this code, and what `upgrade` would do.

    `current` is the stamped revision (None when unversioned). `adopt` names the
    revision an unversioned database with node tables matches (None when it is
    empty or matches nothing; see `problems`). `pending` are the steps to `target`.
    """

    current: str | None
    head: str
    target: str
    empty: bool
    adopt: str | None
    pending: tuple[Step, ...]
    problems: tuple[str, ...] = field(default=())

    @property
    def at_target(self) -> bool:
        return not self.pending and self.adopt is None and not self.problems

    @property
    def revision(self) -> str | None:
        """The revision the database is at, stamped or recognised."""
        return self.current or self.adopt


# --- Alembic plumbing --------------------------------------------------------------------------


def alembic_config(
    *, connection: Connection | None = None, dialect_name: str | None = None
) -> Config:
    """An Alembic `Config` for the node migrations, without any ini file.

    Online work passes the open `connection`; offline SQL generation passes the
    `dialect_name` instead (see migrations/env.py).
    """
    config = Config(output_buffer=io.StringIO(), stdout=io.StringIO())
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    if dialect_name is not None:
        config.attributes["dialect_name"] = dialect_name
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows (what `upgrade` brings a database to)."""
    head = _scripts().get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise SchemaError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def revisions() -> tuple[Step, ...]:
    """Every known revision, oldest first."""
    steps = [
        Step(script.revision, (script.doc or "").strip().splitlines()[0] if script.doc else "")
        for script in _scripts().walk_revisions()
    ]
    return tuple(reversed(steps))


def current_revision(engine: Engine) -> str | None:
    """The revision stamped in the database, or None when it is unversioned or empty."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# --- inspecting --------------------------------------------------------------------------------


def fingerprint(conn: Connection) -> dict[str, frozenset[str]]:
    """Tables and their column names as the database has them (Alembic's table excluded)."""
    insp = inspect(conn)
    return {
        name: frozenset(col["name"] for col in insp.get_columns(name))
        for name in insp.get_table_names()
        if name != VERSION_TABLE
    }


@functools.cache
def _revision_fingerprints() -> tuple[tuple[str, Fingerprint], ...]:
    """What each revision's schema looks like, built by migrating a scratch SQLite database.

    Only names are compared, so SQLite stands in for every back-end.
    """
    engine = create_engine("sqlite://")
    prints: list[tuple[str, Fingerprint]] = []
    try:
        with engine.begin() as conn:
            for step in revisions():
                command.upgrade(alembic_config(connection=conn), step.revision)
                prints.append((step.revision, fingerprint(conn)))
    finally:
        engine.dispose()
    return tuple(prints)


def _known_tables() -> frozenset[str]:
    return frozenset(name for _, fp in _revision_fingerprints() for name in fp)


def _match_revision(found: Fingerprint) -> tuple[str | None, tuple[str, ...]]:
    """The oldest revision whose node tables equal `found`, or None and why not.

    Tables no revision ever had (an operator's own) are ignored; a node table that is
    missing, extra or has other columns than the revision's rules the revision out.
    The oldest, because a revision may change only constraints (0004): a database
    from before migrations has the older constraints, and the later steps must run.
    """
    known = _known_tables()
    ours = {name: cols for name, cols in found.items() if name in known}
    for revision, expected in _revision_fingerprints():
        if ours == dict(expected):
            return revision, ()
    # Explain the difference against the head, which is what the officer expects.
    expected = dict(_revision_fingerprints()[-1][1])
    problems = []
    for name in sorted(set(expected) - set(ours)):
        problems.append(f"table {name} is missing")
    for name in sorted(set(ours) - set(expected)):
        problems.append(f"table {name} is not in revision {head_revision()}")
    for name in sorted(set(ours) & set(expected)):
        missing, extra = expected[name] - ours[name], ours[name] - expected[name]
        if missing:
            problems.append(f"table {name} lacks column(s) {', '.join(sorted(missing))}")
        if extra:
            problems.append(f"table {name} has unexpected column(s) {', '.join(sorted(extra))}")
    return None, tuple(problems)


def _pending(current: str | None, target: str) -> tuple[Step, ...]:
    order = [step.revision for step in revisions()]
    messages = {step.revision: step.message for step in revisions()}
    start = 0 if current is None else order.index(current) + 1
    end = order.index(target) + 1
    return tuple(Step(rev, messages[rev]) for rev in order[start:end])


def _state(conn: Connection, target: str) -> SchemaState:
    head = head_revision()
    known = [step.revision for step in revisions()]
    if target == "head":
        target = head
    if target not in known:
        raise SchemaError(f"unknown revision {target!r}; this release knows {', '.join(known)}")
    current = MigrationContext.configure(conn).get_current_revision()
    if current is not None and current not in known:
        raise SchemaTooNewError(
            f"the database is at schema revision {current!r}, which this fedaudit release does "
            f"not know (it knows up to {head!r}): it was upgraded by a newer release. Run that "
            "release, or restore the backup taken before the upgrade."
        )
    empty = False
    adopt: str | None = None
    problems: tuple[str, ...] = ()
    if current is None:
        found = fingerprint(conn)
        empty = not (set(found) & _known_tables())
        if not empty:
            adopt, problems = _match_revision(found)
    base = current or adopt
    if problems:
        pending: tuple[Step, ...] = ()
    elif base is not None and known.index(target) < known.index(base):
        raise SchemaError(
            f"the database is at revision {base!r}, after {target!r}; downgrades are not "
            "supported (they would drop data): restore the backup taken before the upgrade"
        )
    else:
        pending = _pending(base, target)
    return SchemaState(
        current=current,
        head=head,
        target=target,
        empty=empty,
        adopt=adopt,
        pending=pending,
        problems=problems,
    )


def inspect_schema(engine: Engine, to: str = "head") -> SchemaState:
    """Where the database stands and what `upgrade(engine, to)` would do; writes nothing.

    Raises `SchemaTooNewError` for a database of a newer release and `SchemaError`
    for an unknown target or a downgrade.
    """
    with engine.connect() as conn:
        return _state(conn, to)


# --- changing --------------------------------------------------------------------------------


def _lock(conn: Connection) -> None:
    """Serialise schema changes between processes (SQLite: BEGIN IMMEDIATE already does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def upgrade(engine: Engine, to: str = "head") -> SchemaState:
    """Bring the database to revision `to` (default: head) in one transaction; return the result.

    Empty databases are created, unversioned ones adopted (see module docstring).
    Raises `SchemaTooNewError` when the database is newer than this code, and
    `SchemaError` when an unversioned database matches no revision or `to` lies
    before the database's revision. In every error case nothing is written.
    """
    with engine.begin() as conn:
        _lock(conn)
        state = _state(conn, to)
        if state.problems:
            raise SchemaError(
                "the database has node tables but no schema version, and they match no known "
                "revision, so it cannot be adopted safely: " + "; ".join(state.problems)
            )
        config = alembic_config(connection=conn)
        if state.adopt is not None:
            command.stamp(config, state.adopt)
            log.info("schema.adopted", revision=state.adopt)
        if state.pending:
            command.upgrade(config, state.target)
            log.info(
                "schema.upgraded",
                from_revision=state.revision,
                to_revision=state.target,
                steps=[step.revision for step in state.pending],
            )
    return SchemaState(
        current=state.target,
        head=state.head,
        target=state.target,
        empty=False,
        adopt=None,
        pending=(),
    )


def ensure_schema(engine: Engine, *, allow_upgrade: bool = False) -> SchemaState:
    """Make sure the database is at head before a node uses it; what `node serve` calls.

    An empty database is created (nothing to lose). A database at an older revision,
    or an unversioned one, is upgraded only when `allow_upgrade`: otherwise this
    raises `SchemaError` telling the officer to back up and run `fedaudit node
    migrate`, because a schema change to a database holding the ledger is an
    operator's decision, not a side effect of a restart.
    """
    state = inspect_schema(engine)
    if state.at_target:
        return state
    if state.empty or allow_upgrade:
        return upgrade(engine)
    if state.problems:
        raise SchemaError("; ".join(state.problems))
    where = f"revision {state.current}" if state.current else "an unversioned schema"
    raise SchemaError(
        f"the database is at {where} and this release needs revision {state.head}: back it up, "
        "then run `fedaudit node migrate --db ...`"
    )


def upgrade_sql(state: SchemaState, dialect_name: str) -> str:
    """The SQL `upgrade` would run for `state` on `dialect_name`, for review (offline)."""
    if not state.pending:
        return ""
    config = alembic_config(dialect_name=dialect_name)
    start = state.revision
    command.upgrade(config, f"{start}:{state.target}" if start else state.target, sql=True)
    buffer = config.output_buffer
    return buffer.getvalue() if isinstance(buffer, io.StringIO) else ""


def make_revision(engine: Engine, message: str, rev_id: str) -> Path:
    """Autogenerate a new migration from the models against a database at head (developers).

    Review the file it writes: autogenerate misses renames and server-side details.
    """
    with engine.begin() as conn:
        script = command.revision(
            alembic_config(connection=conn), message=message, autogenerate=True, rev_id=rev_id
        )
    if script is None or isinstance(script, list):  # pragma: no cover - single head
        raise SchemaError("autogenerate produced no single revision")
    return Path(script.path)
