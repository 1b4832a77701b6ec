"""A plaintext gRPC port that serves only the health service, for probes that cannot do mTLS.

Kubernetes `grpc:` probes and Docker health checks cannot present a client
certificate, but the node's audit port requires one. This second server shares
the node's `HealthServicer` (so it reports exactly what the audit port reports)
and offers nothing else: no AuditNode service, no reflection. What it reveals is
SERVING or NOT_SERVING.
"""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health, health_pb2_grpc

from fedaudit.node.rpc.ports import EXCLUSIVE_PORT_OPTIONS, bind

log = structlog.get_logger(__name__)


@dataclass
class HealthPort:
    """A running health-only server; `port` is the bound port (useful with port 0)."""

    server: grpc.Server
    host: str
    port: int

    def stop(self, grace: float | None = 1.0) -> None:
        self.server.stop(grace).wait()


def start_health_port(
    health_servicer: health.HealthServicer, *, host: str = "127.0.0.1", port: int = 0
) -> HealthPort:
    """Serve `health_servicer` alone, without TLS, on `host:port`."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="fedaudit-health"),
        maximum_concurrent_rpcs=16,
        options=list(EXCLUSIVE_PORT_OPTIONS),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = bind(server, host, port, flag="--health-port")  # PortError if taken
    server.start()
    log.info("health_port_serving", address=f"{host}:{bound}")
    return HealthPort(server=server, host=host, port=bound)


def check_health(address: str, *, service: str = "", timeout: float = 3.0) -> str:
    """Ask a health port for `service`'s status; returns its name, e.g. "SERVING".

    Raises `grpc.RpcError` when nothing answers (or the service name is unknown).
    """
    from grpc_health.v1 import health_pb2

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
