"""The `fedaudit` command line: the root parser, logging, and the handler call.

The commands themselves are in `fedaudit.cli.groups`, one module per group; each sets
the `handler` its sub-parser dispatches to. This module only builds the root parser,
configures logging and applies one rule to every command: an expected failure (see
`fedaudit.cli.failures`) is a short message and exit code 2, a bug one line and
`EXIT_INTERNAL`; `--debug` adds the traceback (the codes are in `fedaudit.cli.errors`).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from fedaudit import __version__
from fedaudit.cli.errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, CliError
from fedaudit.cli.failures import explain
from fedaudit.cli.groups import register_all
from fedaudit.cli.parsers import Parsers


def build_parser() -> argparse.ArgumentParser:
    """The root parser with every command group's sub-parsers registered."""
    parser = argparse.ArgumentParser(
        prog="fedaudit",
        description=(
            "Federated, differentially private audits of vocational certificates. "
            "Municipalities run nodes over their own registries; an oversight body runs audits "
            "that nodes answer only with noisy aggregates."
        ),
    )
    parser.add_argument("--version", action="version", version=f"fedaudit {__version__}")
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="log format on stderr (default: console in a terminal, JSON otherwise)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="least severe log events shown on stderr (default: warning)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of an error (default: a short message only)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_all(Parsers(root=sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, configure logging, run the command; usage errors exit 2 without a traceback."""
    from fedaudit.logs import configure_grpc_logging, configure_logging, wants_json

    # Before the parser: building it imports gRPC, which reads GRPC_VERBOSITY only then.
    early, _ = _log_options().parse_known_args(argv)
    configure_grpc_logging(json=wants_json(_JSON_CHOICE[early.log_format]), environ=os.environ)
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(json=_JSON_CHOICE[args.log_format], level=args.log_level)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("fedaudit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        message = explain(exc)
        if message is not None:
            print(f"fedaudit: error: {message}", file=sys.stderr)
            return EXIT_INPUT
        print(
            f"fedaudit: internal error: {type(exc).__name__}: {exc}\n"
            "this is a bug; re-run with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


_JSON_CHOICE: dict[str, bool | None] = {"auto": None, "json": True, "console": False}


def _log_options() -> argparse.ArgumentParser:
    """Just the root's `--log-format`, read before anything imports gRPC."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--log-format", choices=tuple(_JSON_CHOICE), default="auto")
    return early


def _dispatch(args: argparse.Namespace) -> int:
    """Call the handler the chosen sub-parser set (every command sets one)."""
    handler = getattr(args, "handler", None)
    if handler is None:  # pragma: no cover - argparse requires a command, each sets a handler
        raise CliError(f"unknown command {args.command}")
    return int(handler(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
