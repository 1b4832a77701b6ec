"""Start the hub's gRPC server (`fedaudit hub serve`): TLS always, health, the relay."""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass

import grpc
import structlog
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedaudit.hub.admission import Admission, CrlFile
from fedaudit.hub.relay import HubServicer
from fedaudit.wire.v1 import hub_pb2 as hub_pb
from fedaudit.wire.v1 import hub_pb2_grpc as hub_grpc

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""A frame carries a node's message (up to 16 MiB) plus its signature and certificate."""

HUB_SERVICE_NAME = hub_pb.DESCRIPTOR.services_by_name["Hub"].full_name


@dataclass
class RunningHub:
    server: grpc.Server
    port: int
    servicer: HubServicer
    health: health.HealthServicer

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.servicer.close_all()
        self.server.stop(grace).wait()


def start_hub_server(
    *,
    cert_pem: bytes,
    key_pem: bytes,
    ca: tuple[x509.Certificate, ...],
    crl: CrlFile | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    max_workers: int = 64,
) -> RunningHub:
    """Serve the hub on `host:port` with TLS (the hub's certificate); returns the bound port.

    Every connected node holds one worker for its stream and every call in flight one
    more, so `max_workers` bounds nodes + concurrent calls.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fedaudit-hub"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
        maximum_concurrent_rpcs=max_workers,
    )
    servicer = HubServicer(Admission(ca, crl))
    hub_grpc.add_HubServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    credentials = grpc.ssl_server_credentials([(key_pem, cert_pem)])
    bound = server.add_secure_port(f"{host}:{port}", credentials)
    if bound == 0:
        raise RuntimeError(f"cannot listen on {host}:{port} (taken or not an address here)")
    server.start()
    for name in ("", HUB_SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("hub_serving", address=f"{host}:{bound}")
    return RunningHub(server=server, port=bound, servicer=servicer, health=health_servicer)
