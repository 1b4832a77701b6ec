"""One rule for every command: an expected failure is a short message and exit 2, never a traceback.

Expected failures are what an operator can cause and fix: a missing or unreadable file,
a database that does not exist or cannot be reached, a port already taken, a domain error
(an invalid policy, plan, bundle or certificate). `explain` turns each into one or two
lines naming the thing and what to do. Anything else is a bug: the command says so in
one line and exits `EXIT_INTERNAL`. The global `--debug` flag prints the traceback in
both cases.

The classification works on class names and modules, so this module imports neither
SQLAlchemy nor gRPC: `fedaudit --help` stays fast.
"""

from __future__ import annotations

from fedaudit.cli.errors import CliError

_DB_HINT = (
    "check --db: is the database server running, does the database exist, may the role log in?"
)


def explain(exc: BaseException) -> str | None:
    """The message for an expected failure, or None when `exc` is a bug."""
    if isinstance(exc, CliError):
        return str(exc)
    if _is_database_error(exc):
        return f"cannot use the database: {_database_reason(exc)}\n{_DB_HINT}"
    if isinstance(exc, OSError):
        return _os_error(exc)
    if _is_domain_error(exc):
        return str(exc) or type(exc).__name__
    return None


def _os_error(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    if exc.filename is not None:
        hint = {
            FileNotFoundError: "check the path (directories are not created for you here)",
            PermissionError: "check the file's owner and mode",
            IsADirectoryError: "give a file, not a directory",
            NotADirectoryError: "a part of the path is a file, not a directory",
        }.get(type(exc), "")
        return f"{exc.filename}: {what}" + (f"\n{hint}" if hint else "")
    return what


def _is_database_error(exc: BaseException) -> bool:
    """A SQLAlchemy or DB-API error: connection refused, no such database, no such file."""
    module = type(exc).__module__
    return module.startswith(("sqlalchemy.", "psycopg", "sqlite3")) and type(exc).__name__ in {
        "OperationalError",
        "InterfaceError",
        "ArgumentError",
        "NoSuchModuleError",
        "ProgrammingError",
    }


def _database_reason(exc: BaseException) -> str:
    """The driver's own first line (the useful part), without SQLAlchemy's SQL and links."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip()
    return text.splitlines()[0] if text else type(original).__name__


def _is_domain_error(exc: BaseException) -> bool:
    """An error class of fedaudit's own domain (policy, plan, bundle, schema, PKI, TLS)."""
    return any(
        cls.__module__.startswith("fedaudit.") and cls.__name__.endswith("Error")
        for cls in type(exc).__mro__
    )
