"""Logging for every fedaudit process: structlog, JSON in production, readable in a terminal.

Configured once per process by `configure_logging`. A redaction processor drops
any event key that names a personal field, so a careless `log.info(..., given_name=x)`
cannot put a name in a log line; the values of ordinary keys are not inspected,
which is why code must never pass personal data in them (tests check this).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

PERSONAL_FIELDS = frozenset(
    {
        "national_id",
        "given_name",
        "family_name",
        "date_of_birth",
        "dob",
        "certificate_no",
        "origin_certificate_no",
        "monthly_earnings",
        "name_of_person",
    }
)
"""Keys that never appear in a log event (class P and S of the data contract)."""

REDACTED = "[redacted]"

_state = {"json": False}
"""Whether this process logs JSON (set by `configure_logging`, read by `notice`)."""


def redact_personal_fields(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace the value of any personal-field key before the event is rendered."""
    for key in PERSONAL_FIELDS.intersection(event_dict):
        event_dict[key] = REDACTED
    return event_dict


def configure_logging(*, json: bool | None = None, level: str = "info") -> None:
    """Set up structlog for this process.

    `json=None` picks JSON when stderr is not a terminal (services, CI, containers)
    and a coloured console renderer when a person is watching.
    """
    json = wants_json(json)
    _state["json"] = json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_personal_fields,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def wants_json(json: bool | None) -> bool:
    """Resolve `--log-format auto`: JSON unless a person watches stderr."""
    return (not sys.stderr.isatty()) if json is None else json


def configure_grpc_logging(*, json: bool, environ: MutableMapping[str, str]) -> None:
    """Keep gRPC's C-core lines (`E1202 ... ssl_transport_security.cc ...`) out of JSON logs.

    The C core writes its own unstructured lines straight to file descriptor 2, which a
    log collector expecting one JSON object per line cannot parse. Under JSON logs they
    are switched off (GRPC_VERBOSITY=NONE) unless the operator set GRPC_VERBOSITY; the
    failures they describe (a port in use, a bad certificate, a refused handshake) reach
    the operator through fedaudit's own messages and gRPC status codes. The core reads
    the variable when gRPC is first imported, so this runs before that.
    """
    if json and "GRPC_VERBOSITY" not in environ:
        environ["GRPC_VERBOSITY"] = "NONE"


def notice(text: str, event: str, *, level: str = "info", **fields: Any) -> None:
    """An operator notice on stderr (start-up, shutdown), whatever the log level.

    A person at a terminal reads `text`; under JSON logs the same notice is one JSON
    object (`event`, `fields` and `text` as `message`), so a log collector parsing
    stderr line by line never meets a line of prose.
    """
    if _state["json"]:
        import datetime as dt
        import json

        stamp = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        record = {"event": event, "level": level, "timestamp": stamp, **fields, "message": text}
        print(json.dumps(record, default=str), file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)
