"""The coordinator's part in revocation reconciliation: relay signed messages, collect DP counts.

For every ordered pair (recogniser R, origin O) the coordinator asks R for its signed
batch, hands it to O, and hands O's signed answer back to R. It cannot read either
(blinded group elements, tags, sealed days), cannot forge them (each is signed with a
federation node key and checked by the receiver), and learns per pair only the padded
bucket sizes. At the end each R releases one DP count of its persons with a match,
charged to R's own ledger; the report carries those counts per municipality.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import structlog

from fedaudit.coordinator.errors import NodeCallError
from fedaudit.coordinator.running.transport import (
    call_metadata,
    open_channel,
    translate_rpc_errors,
)
from fedaudit.wire.v1 import reconcile_pb2 as pb
from fedaudit.wire.v1 import reconcile_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)


class ReconcileTransport(Protocol):
    """One node's ReconcileNode service on behalf of one requester; messages stay opaque."""

    name: str

    def ask(self, run_id: str, origin: str, *, timeout: float) -> pb.ReconcileBatch: ...
    def answer(self, batch: pb.ReconcileBatch, *, timeout: float) -> pb.ReconcileAnswer: ...
    def resolve(self, answer: pb.ReconcileAnswer, *, timeout: float) -> None: ...
    def release(
        self, run_id: str, rho: float, confidence: float, *, timeout: float
    ) -> pb.ReconcileReleaseResponse: ...


class GrpcReconcileTransport:
    """ReconcileNode over gRPC (mTLS in production, like the other services)."""

    def __init__(
        self,
        name: str,
        address: str,
        *,
        requester: str,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: list[tuple[str, object]] | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self._channel = (
            channel if channel is not None else open_channel(address, credentials, channel_options)
        )
        self._stub = pb_grpc.ReconcileNodeStub(self._channel)
        self._metadata = call_metadata(requester)

    def _call(self, method: Callable[..., Any], request: Any, timeout: float) -> Any:
        with translate_rpc_errors(self.name):
            return method(request, timeout=timeout, metadata=self._metadata)

    def ask(self, run_id: str, origin: str, *, timeout: float) -> pb.ReconcileBatch:
        request = pb.ReconcileAskRequest(run_id=run_id, origin=origin)
        return self._call(self._stub.Ask, request, timeout)

    def answer(self, batch: pb.ReconcileBatch, *, timeout: float) -> pb.ReconcileAnswer:
        return self._call(self._stub.Answer, batch, timeout)

    def resolve(self, answer: pb.ReconcileAnswer, *, timeout: float) -> None:
        self._call(self._stub.Resolve, answer, timeout)

    def release(
        self, run_id: str, rho: float, confidence: float, *, timeout: float
    ) -> pb.ReconcileReleaseResponse:
        request = pb.ReconcileReleaseRequest(run_id=run_id, rho=rho, confidence=confidence)
        return self._call(self._stub.Release, request, timeout)

    def close(self) -> None:
        self._channel.close()


@dataclass
class ReconcileOutcome:
    """What the report shows: per recogniser a DP count, and what could not be checked."""

    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped_pairs: list[dict[str, str]] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if not self.counts:
            return "failed"
        return "partial" if self.skipped_pairs or self.refused else "complete"

    def to_report(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "per_municipality": self.counts,
            "skipped_pairs": self.skipped_pairs,
            "refused": self.refused,
        }


def run_reconciliation(
    transports: Mapping[str, ReconcileTransport],
    run_id: str,
    *,
    rho: float,
    confidence: float,
    timeout: float = 60.0,
) -> ReconcileOutcome:
    """Every ordered pair of nodes, then one release per recogniser that checked anything.

    A refusal (policy opt-out, unknown peer) skips that pair with its reason; the run
    goes on with the others, and the report says which pairs were not checked.
    """
    outcome = ReconcileOutcome()
    checked: set[str] = set()
    for recogniser, r in transports.items():
        for origin, o in transports.items():
            if origin == recogniser:
                continue
            try:
                batch = r.ask(run_id, origin, timeout=timeout)
                answer = o.answer(batch, timeout=timeout)
                r.resolve(answer, timeout=timeout)
            except NodeCallError as exc:
                outcome.skipped_pairs.append(
                    {"recogniser": recogniser, "origin": origin, "reason": _why(exc)}
                )
                log.info("reconcile.pair_skipped", recogniser=recogniser, origin=origin)
                continue
            checked.add(recogniser)
    for recogniser in sorted(checked):
        try:
            released = transports[recogniser].release(run_id, rho, confidence, timeout=timeout)
        except NodeCallError as exc:
            outcome.refused[recogniser] = _why(exc)
            continue
        outcome.counts[recogniser] = {
            "estimate": released.value,
            "ci": [
                released.value - released.ci_half_width,
                released.value + released.ci_half_width,
            ],
            "mechanism": released.mechanism,
            "scale": released.scale,
            "rho": released.rho,
            "replayed": released.replayed,
        }
    return outcome


def _why(exc: NodeCallError) -> str:
    reason = getattr(exc, "reason", "")
    return f"{reason}: {exc}" if reason else str(exc)
