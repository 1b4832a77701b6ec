"""The `fedaudit` command line: the root parser, logging, and the handler call.

The commands themselves are in `fedaudit.cli.groups`, one module per group; each sets
the `handler` its sub-parser dispatches to. This module only builds the root parser,
configures logging and turns a `CliError` into a message and exit code 2 (the codes
are in `fedaudit.cli.errors`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedaudit import __version__
from fedaudit.cli.errors import EXIT_INPUT, EXIT_INTERRUPTED, CliError
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
        "--log-level", default="warning", choices=("debug", "info", "warning", "error")
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_all(Parsers(root=sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, configure logging, run the command; usage errors exit 2 without a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from fedaudit.logs import configure_logging

    configure_logging(
        json={"auto": None, "json": True, "console": False}[args.log_format], level=args.log_level
    )
    try:
        return _dispatch(args)
    except CliError as exc:
        print(f"fedaudit: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("fedaudit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace) -> int:
    """Call the handler the chosen sub-parser set (every command sets one)."""
    handler = getattr(args, "handler", None)
    if handler is None:  # pragma: no cover - argparse requires a command, each sets a handler
        raise CliError(f"unknown command {args.command}")
    return int(handler(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
