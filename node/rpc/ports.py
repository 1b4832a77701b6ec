"""Binding a node's gRPC servers to their ports: exclusively, with a precise error.

gRPC servers on Linux set SO_REUSEPORT by default, so a second `node serve` on the
same port binds successfully and the kernel splits connections between the two
processes: two nodes with different databases would silently share one address. The
node's servers therefore turn the option off (`EXCLUSIVE_PORT_OPTIONS`) and a taken
port fails at start-up. gRPC then says only "Failed to bind ... set GRPC_VERBOSITY";
`bind` names the address, the reason and the flag to change instead.
"""

from __future__ import annotations

import errno
import socket

import grpc

EXCLUSIVE_PORT_OPTIONS: tuple[tuple[str, int], ...] = (("grpc.so_reuseport", 0),)
"""Server options: no port sharing between processes."""


class PortError(RuntimeError):
    """A server could not listen on its address; the message says why and what to do."""


def bind(
    server: grpc.Server,
    host: str,
    port: int,
    *,
    credentials: grpc.ServerCredentials | None = None,
    flag: str = "--port",
) -> int:
    """Add `host:port` to `server` (TLS with `credentials`); return the bound port."""
    address = f"{host}:{port}"
    try:
        bound = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise PortError(
            f"cannot listen on {address} ({flag}): {_reason(host, port)}\n{_hint(flag)}"
        )
    return bound


def _reason(host: str, port: int) -> str:
    """Why the address cannot be bound, found by trying it with a plain socket."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"unknown host ({exc.strerror})"
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the port is already in use (is another node or service running there?)"
            if exc.errno == errno.EADDRNOTAVAIL:
                return "the address is not one of this machine's"
            if exc.errno == errno.EACCES:
                return "permission denied (ports below 1024 need privileges)"
            return exc.strerror or str(exc)
    return "gRPC refused the address"


def _hint(flag: str) -> str:
    return f"stop the process that holds it, or choose another {flag}"
