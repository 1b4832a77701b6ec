"""Everything `fedaudit node serve` needs for operations, behind two calls.

`add_observability_arguments(parser)` adds the flags; `NodeObservability.from_args`
builds the metrics interceptor (to pass to `start_node_server`) and, once the node
runs, `attach` starts the metrics endpoint, the plaintext health port and the
readiness watcher. `close` stops them in reverse order. Kept here so the command
module stays a list of plain calls.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from sqlalchemy import Engine

from fedaudit.node.ops.health_port import HealthPort, start_health_port
from fedaudit.node.ops.metrics import (
    MetricsInterceptor,
    MetricsServer,
    NodeMetrics,
    start_metrics_server,
)
from fedaudit.node.ops.readiness import DEFAULT_INTERVAL, ReadinessWatcher

log = structlog.get_logger(__name__)


def add_observability_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `node serve` for metrics, the health port and readiness checks."""
    group = parser.add_argument_group("operations")
    group.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on this port (default: no metrics endpoint)",
    )
    group.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics endpoint (default: loopback; it names requesters and budgets)",
    )
    group.add_argument(
        "--health-port",
        type=int,
        help=(
            "serve gRPC health (only) without TLS on this port, for probes that cannot do mTLS "
            "(default: none)"
        ),
    )
    group.add_argument(
        "--health-host", default="127.0.0.1", help="address of the health port (default: loopback)"
    )
    group.add_argument(
        "--readiness-interval",
        type=float,
        default=DEFAULT_INTERVAL,
        help=f"seconds between readiness checks of the database and data (default {DEFAULT_INTERVAL:g})",
    )


@dataclass
class NodeObservability:
    """Metrics, health port and readiness watcher of one node process."""

    metrics: NodeMetrics
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    health_port: int | None = None
    health_host: str = "127.0.0.1"
    readiness_interval: float = DEFAULT_INTERVAL
    _running: list[Any] = field(default_factory=list, repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> NodeObservability:
        return cls(
            metrics=NodeMetrics(),
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            health_port=args.health_port,
            health_host=args.health_host,
            readiness_interval=args.readiness_interval,
        )

    @property
    def interceptors(self) -> list[grpc.ServerInterceptor]:
        """Pass these first in `start_node_server(interceptors=...)`."""
        return [MetricsInterceptor(self.metrics)]

    def attach(self, node: Any, engine: Engine) -> None:
        """Start the readiness watcher, then the endpoints; `node` is a RunningNode."""
        watcher = ReadinessWatcher(
            node.service,
            node.health,
            engine,
            interval=self.readiness_interval,
            on_change=lambda ready: self.metrics.ready.set(1 if ready else 0),
        ).start()
        self._running.append(watcher)
        self.observe_budgets(node.service)
        if self.health_port is not None:
            self._running.append(
                start_health_port(node.health, host=self.health_host, port=self.health_port)
            )
        if self.metrics_port is not None:
            self._running.append(
                start_metrics_server(
                    self.metrics_port, self.metrics_host, registry=self.metrics.registry
                )
            )

    def observe_budgets(self, service: Any) -> None:
        """Set the budget gauges from the ledger now, not at the first answer.

        Until a request reported a budget, the gauges would read 0.0, which an alert on
        `fedaudit_node_rho_remaining` takes for an exhausted node.
        """
        now = dt.datetime.now(dt.UTC)
        try:
            for requester in sorted(service.policy.requesters):
                status = service.ledger.status(requester, now)
                self.metrics.requester_rho_remaining.labels(requester=requester).set(
                    status.requester_rho_remaining
                )
                self.metrics.node_rho_remaining.labels(requester=requester).set(
                    status.node_rho_remaining
                )
        except Exception as exc:  # the database may come up later; answers set them then
            log.warning("metrics.budget_unknown", error=type(exc).__name__)

    def endpoints(self) -> list[tuple[str, str]]:
        """(what, host:port) of the running health and metrics endpoints, for the start-up line."""
        found = []
        if self.health_server is not None:
            found.append(("health", f"{self.health_server.host}:{self.health_server.port}"))
        if self.metrics_server is not None:
            found.append(
                ("metrics", f"http://{self.metrics_server.host}:{self.metrics_server.port}/metrics")
            )
        return found

    @property
    def metrics_server(self) -> MetricsServer | None:
        return next((r for r in self._running if isinstance(r, MetricsServer)), None)

    @property
    def health_server(self) -> HealthPort | None:
        return next((r for r in self._running if isinstance(r, HealthPort)), None)

    def close(self) -> None:
        while self._running:
            self._running.pop().stop()
