"""`fedaudit node health`: ask a node's health port whether it is ready (for container checks).

    fedaudit node health [--address 127.0.0.1:8081] [--service NAME] [--timeout 3]

Exit 0 when the service is SERVING, 1 when it is not or nothing answers, 2 on bad
input. It is what the container image's HEALTHCHECK runs: the image then needs no
separate probe binary.
"""

from __future__ import annotations

import argparse
import sys

from fedaudit.cli.errors import EXIT_FINDINGS, EXIT_OK, CliError
from fedaudit.cli.parsers import Parsers


def register(parsers: Parsers) -> None:
    health = parsers.node.add_parser(
        "health",
        help="check a node's gRPC health port (exit 0 when SERVING)",
        description=(
            "Ask the plaintext health port of a node (`node serve --health-port`) for a service's "
            "status. Exit 0 when SERVING, 1 when NOT_SERVING or unreachable."
        ),
    )
    health.add_argument(
        "--address",
        default="127.0.0.1:8081",
        help="HOST:PORT of the health port (default: %(default)s)",
    )
    health.add_argument(
        "--service",
        default="",
        help='service to ask about: "" (the node, default), "liveness" or fedaudit.wire.v1.AuditNode',
    )
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.set_defaults(handler=_health)


def _health(args: argparse.Namespace) -> int:
    import grpc

    from fedaudit.node.ops.health_port import check_health

    if args.timeout <= 0:
        raise CliError("--timeout must be positive")
    try:
        status = check_health(args.address, service=args.service, timeout=args.timeout)
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        hint = {
            grpc.StatusCode.UNAVAILABLE: "nothing answers there; is the node running with "
            "--health-port on that address?",
            grpc.StatusCode.DEADLINE_EXCEEDED: f"no answer within {args.timeout:g} s",
            grpc.StatusCode.NOT_FOUND: f"the node knows no service named {args.service!r}",
        }.get(code)
        print(f"{args.address}: {code.name}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return EXIT_FINDINGS
    print(f"{args.address}: {status}")
    return EXIT_OK if status == "SERVING" else EXIT_FINDINGS
